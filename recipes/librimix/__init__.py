"""Libri2Mix data preparation (``prepare.prepare``)."""
