"""Tests of l2builder: the sans-I/O core, the Redis and MongoDB pieces, and the service through its CLI."""
