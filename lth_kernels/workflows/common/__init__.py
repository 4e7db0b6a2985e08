"""Pieces the workflows share: the CLI frame, structured-pruning helpers, plots."""
