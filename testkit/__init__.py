"""What the tests and the benchmarks share: real servers on free ports, services run through their entry
points, the L2 feeds and the fault drills. Not part of the installed package."""
