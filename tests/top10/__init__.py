"""Tests of the top10 service: the pure batch planner, the compare-and-set script, and the CLI against real Redis."""
