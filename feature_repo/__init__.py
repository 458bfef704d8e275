"""Feast definitions of DERM embeddings for `feast apply` (see embeddings.py)."""
