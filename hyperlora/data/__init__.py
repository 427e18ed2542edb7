"""Datasets, formats and collators; the built-in instruction suite lives in ``tasks``."""
