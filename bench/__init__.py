"""Benchmarks: `python -m bench.<name>`, each measured side by side with its baseline."""
