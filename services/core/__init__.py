"""The pure core: protocol, book, stream codec, keys and decisions; no I/O (tests/unit/test_layers.py)."""
