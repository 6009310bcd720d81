"""Test suite: unit tests of the core, and the services run for real against real servers."""
