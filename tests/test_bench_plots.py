"""bench/plots.py on made-up results: what each figure shows where (legends, the original design's band)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.patches
import pytest
from matplotlib import pyplot
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from bench import plots
from bench.pipeline import STAGES, Distribution, PipelineResults, RateRun
from bench.scale import Run

PROCESSES = ("exchange", "l2builder", "top10", "ingest", "redis-server", "nx-27017", "bench")


def results() -> PipelineResults:
    generator = random.Random(3)
    runs = [RateRun(rate=rate, seconds=10, throughput={},
                    stages={stage: Distribution(samples=[generator.lognormvariate(8, 0.5) for _ in range(200)])
                            for stage in STAGES},
                    cpu_percent={name: generator.uniform(1, 60) for name in PROCESSES},
                    peak_mb={name: generator.uniform(30, 60) for name in PROCESSES if name != "bench"}, backlog=0)
            for rate in (500, 2000, 0)]
    return PipelineResults(symbols=5, rates=runs)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """Every figure `_save` is given, kept open for inspection after it is written."""
    saved: list[Figure] = []
    original, close = plots._save, pyplot.close

    def keep(figure: Figure, path: Path, **options: Any) -> str:
        saved.append(figure)
        return original(figure, path, **options)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(pyplot, "close", lambda _figure: None)
    yield saved
    for figure in saved:
        close(figure)


def legend_texts(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def band_axes(figure: Figure) -> list[str]:
    return [axes.get_title() for axes in figure.axes
            if any(isinstance(patch, matplotlib.patches.Rectangle | matplotlib.patches.Polygon)
                   and str(patch.get_label()).startswith("original design") for patch in axes.patches)]


def test_the_receipt_to_redis_band_is_drawn_only_beside_the_redis_stages(figures: list[Figure],
                                                                        tmp_path: Path) -> None:
    plots.latency_percentiles(results(), tmp_path / "percentiles.png")
    plots.latency_cdf(results(), tmp_path / "cdf.png")
    for figure in figures:
        titled = band_axes(figure)
        assert titled and all(title.endswith("to Redis") for title in titled), titled
        assert not any("MongoDB" in str(line.get_label()) for axes in figure.axes if axes.get_title() in titled
                       for line in axes.get_lines())
        legend = legend_texts(figure)
        assert set(STAGES) <= set(legend), "every series in the one legend, the MongoDB ones included"
        assert legend[-1].startswith("original design") and len(legend) == len(set(legend))
        assert any(text.get_text() == plots.ORIGINAL_DESIGN for text in figure.texts)
    assert (tmp_path / "percentiles.png").stat().st_size > 0


def test_resources_has_one_legend_below_with_the_servers_in_both_panels(figures: list[Figure],
                                                                       tmp_path: Path) -> None:
    plots.resources(results(), tmp_path / "resources.png")
    (figure,) = figures
    assert all(axes.get_legend() is None for axes in figure.axes), "no legend over the bars"
    assert set(legend_texts(figure)) == set(PROCESSES)
    memory = figure.axes[1]
    assert {"redis-server", "nx-27017"} <= {container.get_label() for container in memory.containers}
    colors = [{container.get_label(): container[0].get_facecolor() for container in axes.containers
               if isinstance(container, BarContainer)} for axes in figure.axes]
    assert all(colors[0][name] == colors[1][name] for name in colors[1]), "one color per process"


def test_throughput_legend_says_target(figures: list[Figure], tmp_path: Path) -> None:
    plots.throughput([("ingest", 30_000.0, 20_000.0), ("l2builder", 60_000.0, 5_000.0)], tmp_path / "t.png")
    (figure,) = figures
    assert legend_texts(figure)[0] == "target"


def scale_runs() -> list[Run]:
    runs = []
    for scenario, symbols in (("10 symbols", 10), ("500 symbols", 500)):
        for variant, factor in (("this tree", 1.0), ("cb97c34", 3.0)):
            runs.append(Run(scenario, variant, symbols, seconds=10, frames=10_000, rows=16_000,
                            mongo_bytes=1e6 * factor * symbols / 10, cycle_mean=0.25 * factor,
                            cycle_p50=0.25 if factor == 1 else None, cycle_p99=0.3 if factor == 1 else None,
                            cpu_us={"redis-server": 150 * factor}, warmup_s=2 * factor, takeover_s=7 * factor))
    return runs


def test_scale_sets_every_scenario_beside_the_baseline_with_one_legend(figures: list[Figure], tmp_path: Path) -> None:
    plots.scale(scale_runs(), tmp_path / "scale.png")
    (figure,) = figures
    assert legend_texts(figure) == ["this tree", "cb97c34"]
    assert all(axes.get_legend() is None for axes in figure.axes)
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["10 symbols", "500 symbols"]
    assert figure.axes[0].get_yscale() == "log"
