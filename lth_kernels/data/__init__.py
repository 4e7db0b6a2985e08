"""Data set registry."""
