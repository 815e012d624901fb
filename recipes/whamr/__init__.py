"""WHAMR! data preparation (``prepare.prepare``)."""
