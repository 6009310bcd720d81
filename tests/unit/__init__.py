"""Unit tests of the sans-I/O core."""
