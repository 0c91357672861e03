"""scope's version: a leaf, so the writer, the diff file and the pages can stamp it without importing the package root."""

__version__ = "0.2.0"
