"""Feast definitions for DERM embeddings: declarative, one file per concern (like `feast init`)."""
