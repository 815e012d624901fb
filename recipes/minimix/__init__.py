"""minimix data preparation (``prepare.prepare``)."""
