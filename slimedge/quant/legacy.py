"""Legacy 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (NumPy reference)."""
