"""Blob stores: where the Part-10 bytes of every instance live (the archive's source of truth)."""
