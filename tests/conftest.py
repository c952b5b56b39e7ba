"""Shared fixtures. Tiny models and tokenizers are built locally (no network, no hub)."""
