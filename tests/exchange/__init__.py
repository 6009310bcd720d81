"""Tests of the BitMEX-protocol exchange server."""
