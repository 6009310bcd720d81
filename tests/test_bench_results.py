"""bench/RESULTS.md as `python -m bench` writes it, from made-up results: the terms it uses are defined."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench import cluster, scale
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


def cluster_run(target: str, number: int, factor: float) -> cluster.Run:
    """A window of made-up figures: Redis, ingest and top10's latency `factor` times one server's."""
    found = cluster.Run(target, number, entries=40_000.0, top10_us=(1_000.0 * factor, 8_000.0 * factor),
                        ingest_us=(400.0, 3_000.0))
    cluster._record(found, 10.0, {"exchange": 2.0, "ingest": 1.0 * factor, "top10": 1.5, "l2builder": 1.0,
                                  "redis:7000": 1.5 * factor, "redis:7001": 0.5 * factor},
                    {"exchange": 20_000.0, "ingest": 36_000.0, "top10": 16_000.0, "l2builder": 20_000.0},
                    {"redis:7000"})
    return found


def test_the_cluster_section_sets_the_cluster_beside_one_server(tmp_path: Path) -> None:
    single, clustered = cluster.TARGETS
    saturated = cluster_run(clustered, 3, 1.0)
    saturated.frames_per_s["l2builder"] = 1_900.0  # behind the simulator's 2,000/s: left out of the ratios
    runs = [cluster_run(single, 1, 1.0), cluster_run(clustered, 1, 2.0), cluster_run(single, 2, 1.0),
            cluster_run(clustered, 2, 3.0), saturated]
    ratios = cluster.ratios(runs)
    # Each figure averaged over the rounds first: (2 + 3) / 2 over 1.
    assert ratios["Redis CPU per entry"] == 2.5 and ratios["ingest CPU per frame"] == 2.5
    assert ratios["top10 CPU per frame"] == 1.0 and ratios["top10 receive -> key p99"] == 2.5
    path = tmp_path / "RESULTS.md"
    path.write_text("# results\n\n## Summary\n\nkept\n\n## How to run\n\nkept too\n")
    scale.write_section(path, cluster.section(runs, False, 15.0, 30.0))
    first = path.read_text()
    assert first.index("## Summary") < first.index(cluster.RESULTS_HEADING) < first.index("## How to run")
    # Redis CPU per entry: (1.5 + 0.5) s x 2 over 40,000 entries, the replica's 0.5 s x 2 of it; CPU per frame:
    # ingest 2 s over 36,000 frames.
    assert f"| {clustered} | 1 | 2,000 / 3,600 / 1,600 / 2,000 | 100.0 / 55.6 / 93.8 / 50.0 | 100.0 | 25.0 |" in first
    assert "Redis CPU per entry 2.50x" in first and "Quick run" not in first
    assert f"| {clustered} | 3 (saturated) |" in first and f"| {clustered} | 2 |" in first
    scale.write_section(path, cluster.section(runs[:2], True, 5.0, 10.0))
    second = path.read_text()
    assert second.count(cluster.RESULTS_HEADING) == 1 and "| 2 |" not in second
    assert "kept\n" in second and "kept too" in second and "Quick run" in second
