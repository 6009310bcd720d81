"""Tests of `bookstream dev`: its state file, its view and the whole stack started and stopped."""
