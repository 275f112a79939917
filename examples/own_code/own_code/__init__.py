"""own_code: a small training package of its own, checked by lipbench (see README.md)."""
