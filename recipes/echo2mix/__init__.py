"""Echo2Mix data preparation (``prepare.prepare``)."""
