"""WHAM! data preparation (``prepare.prepare``)."""
