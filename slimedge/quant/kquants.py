"""K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K in 256-weight super-blocks (NumPy reference)."""
