"""LRS2-2Mix data preparation (``prepare.prepare``)."""
