"""WSJ0-2mix data preparation (``prepare.prepare``)."""
