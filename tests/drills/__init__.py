"""Fault drills: the pipeline under chaos ends with every book equal to the truth."""
