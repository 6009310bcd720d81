"""bench/RESULTS.md as `python -m bench` writes it, from made-up results: the terms it uses are defined."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench.__main__ import ServiceBench, write_results
from tests.test_bench_plots import results

FIGURES = {name: f"{name}.png" for name in ("book", "throughput", "latency_percentiles", "latency_cdf", "resources")}


def test_original_design_is_defined_once_before_its_first_use(tmp_path: Path) -> None:
    book = ServiceBench("book", {"frames_per_s": 2e5, "list_frames_per_s": 300.0, "top10_frames_per_s": 1e5},
                        "frames_per_s=200000", 1.0, 0)
    path = tmp_path / "RESULTS.md"
    write_results(path, time.time(), False, [("python", "3.11")], {"book": book}, results(), FIGURES, [], {})
    text = path.read_text()
    definitions = [match.start() for match in re.finditer(
        r"Original design\*\*, wherever tables and figures below name it: the threaded and async prototype", text)]
    uses = [match.start() for match in re.finditer("original design", text, re.IGNORECASE)]
    assert len(definitions) == 1 and len(uses) > 2  # the summary's column and the book section use it too
    assert uses[0] == definitions[0]  # the first mention is the definition
    assert "about 1,300 frames/s" in text and "20-100 ms from receipt to Redis" in text
