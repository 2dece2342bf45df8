"""Validation of features: explanations, detection scores, Tables 6 and 7."""
