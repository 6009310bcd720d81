"""bench/RESULTS.md as `python -m bench` writes it, from made-up results: the terms it uses are defined."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench import scale
from bench.__main__ import ServiceBench, write_results
from tests.test_bench_plots import results, scale_runs

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


def test_the_scale_section_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# results\n\n## Summary\n\nkept\n\n## How to run\n\nkept too\n")
    scale.write_section(path, scale.section(scale_runs(), "scale.png", False, "cb97c34"))
    first = path.read_text()
    assert first.index("## Summary") < first.index(scale.RESULTS_HEADING) < first.index("## How to run")
    assert "| 500 symbols | cb97c34 | 9,375 | mean 0.75 s |" in first
    assert "| 10 symbols | this tree | 62 | 0.25 / 0.30 s |" in first
    scale.write_section(path, scale.section(scale_runs()[:2], None, True, "cb97c34"))
    second = path.read_text()
    assert second.count(scale.RESULTS_HEADING) == 1 and "500 symbols" not in second
    assert "kept\n" in second and "kept too" in second and "Quick run" in second
