"""Sans-I/O core shared by every service: protocol, book, stream codec, configuration and plumbing."""
