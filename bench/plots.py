"""The figures of bench/RESULTS.md, drawn with matplotlib's Agg backend (no display needed).

Every figure puts a measurement beside its baseline: the list-based book beside the engine, the original
design's published numbers beside the services' throughput and latency, one l2builder beside two and
three, each speed idea beside the same service without it, and every scale scenario beside the baseline
revision's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.pipeline import STAGES, PipelineResults
from bench.scale import Run

ORIGINAL_REBUILD_FRAMES_PER_S = 1_300
"""The original design's book rebuild: about 176 messages in 140 ms."""
ORIGINAL_RECEIPT_TO_REDIS_MS = (20, 100)
ORIGINAL_DESIGN = ("original design = the threaded and async prototype this project replaces; its figures are "
                   "the ones it reported, not measured here")
"""The one definition of "original design", printed under every figure that shows one of its figures."""
REDIS_STAGES = tuple(stage for stage in STAGES if "MongoDB" not in stage)
MONGO_STAGES = tuple(stage for stage in STAGES if "MongoDB" in stage)
"""The receipt -> Redis band of the original design compares with the first, never with the second."""
STAGE_COLORS = {stage: f"C{index}" for index, stage in enumerate(STAGES)}
DPI = 110


def _save(figure: Figure, path: Path, legend_below: bool = False, original_design: bool = False) -> str:
    """Write the figure; `legend_below` gathers the legends of all the panels, each label once, under them;
    `original_design` adds the definition of the original design as a caption."""
    bottom = 0.0
    if original_design:
        figure.text(0.5, 0.005, ORIGINAL_DESIGN, ha="center", va="bottom", fontsize=7, color="dimgray")
        bottom = 0.04
    if legend_below:
        entries: dict[str, Any] = {}
        for axes in figure.axes:
            for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
                entries.setdefault(label, handle)
        # The measured series first, the original design's reference last.
        order = sorted(entries, key=lambda label: label.startswith("original design"))
        rows = -(-len(entries) // 4)
        figure.legend([entries[label] for label in order], order, loc="lower center", ncol=4, fontsize=8,
                      frameon=False, bbox_to_anchor=(0.5, bottom))
        bottom += 0.035 * rows + 0.02
    figure.tight_layout(rect=(0, bottom, 1, 1))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path.name


def _rate_label(rate: int) -> str:
    return "max" if rate == 0 else f"{rate:,}/s"


def book(rows: Sequence[tuple[str, float]], path: Path) -> str:
    """Frames/s of the book engine runs and the list baselines, on a log scale."""
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    names = [name for name, _ in rows]
    values = [value for _, value in rows]
    colors = ["tab:gray" if "list" in name else "tab:blue" for name in names]
    axes.barh(names, values, color=colors)
    axes.axvline(ORIGINAL_REBUILD_FRAMES_PER_S, color="tab:red", linestyle="--",
                 label=f"original design's rebuild, ~{ORIGINAL_REBUILD_FRAMES_PER_S:,} frames/s")
    for position, value in enumerate(values):
        axes.text(value, position, f" {value:,.0f}", va="center", fontsize=8)
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("frames per second (CPU time of one process, log scale)")
    axes.set_title("Book engine (parse + apply) vs the list-based baseline")
    return _save(figure, path, legend_below=True, original_design=True)


def throughput(values: Sequence[tuple[str, float, float]], path: Path) -> str:
    """Per-process throughput of each service from its own benchmark, beside its issue's target."""
    figure, axes = plt.subplots(figsize=(8, 3.5))
    names = [name for name, _, _ in values]
    axes.bar(names, [value for _, value, _ in values], color="tab:blue")
    axes.hlines([target for _, _, target in values], [position - 0.3 for position in range(len(values))],
                [position + 0.3 for position in range(len(values))], color="black", linewidth=2, zorder=3,
                label="target")
    axes.axhline(ORIGINAL_REBUILD_FRAMES_PER_S, color="tab:red", linestyle="--",
                 label=f"original design's book rebuild, ~{ORIGINAL_REBUILD_FRAMES_PER_S:,} frames/s")
    for position, (_, value, _) in enumerate(values):
        axes.text(position, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=8)
    axes.set_ylabel("per second, one process")
    axes.set_title("Service throughput (python -m bench.<service>)")
    return _save(figure, path, legend_below=True, original_design=True)


def _band(panel: Axes, vertical: bool) -> None:
    """The original design's receipt -> Redis latency, for the panels of Redis stages only."""
    span = panel.axvspan if vertical else panel.axhspan
    span(*ORIGINAL_RECEIPT_TO_REDIS_MS, color="tab:red", alpha=0.12,
         label="original design: 20-100 ms receipt -> Redis")


def latency_percentiles(results: PipelineResults, path: Path) -> str:
    """p50 and p99 of every stage against the offered rate: the Redis stages (beside the original design's
    receipt -> Redis band) above the MongoDB stages."""
    runs = results.rates
    labels = [_rate_label(run.rate) for run in runs]
    figure, panels = plt.subplots(2, 2, figsize=(11, 8), sharey=True, sharex=True)
    for row, stages in enumerate((REDIS_STAGES, MONGO_STAGES)):
        for column, q in enumerate((0.5, 0.99)):
            panel = panels[row][column]
            for stage in stages:
                panel.plot(labels, [run.stages[stage].quantile(q) / 1000 for run in runs], marker="o", label=stage,
                           color=STAGE_COLORS[stage])
            if stages is REDIS_STAGES:
                _band(panel, vertical=False)
            panel.set_yscale("log")
            panel.set_title(f"p{q * 100:g}, to {'Redis' if stages is REDIS_STAGES else 'MongoDB'}")
            panel.grid(True, which="both", alpha=0.3)
        panels[row][0].set_ylabel("latency, ms (log scale)")
    for panel in panels[1]:
        panel.set_xlabel(f"simulator rate (orderBookL2 frames/s, {results.symbols} symbols)")
    figure.suptitle("End-to-end latency by stage")
    return _save(figure, path, legend_below=True, original_design=True)


def latency_cdf(results: PipelineResults, path: Path) -> str:
    """The latency distribution of every stage, one column per rate: Redis stages above MongoDB stages."""
    runs = results.rates
    figure, panels = plt.subplots(2, len(runs), figsize=(3.6 * len(runs), 7.6), sharey=True, sharex=True,
                                  squeeze=False)
    for row, stages in enumerate((REDIS_STAGES, MONGO_STAGES)):
        for panel, run in zip(panels[row], runs, strict=True):
            for stage in stages:
                xs, ys = run.stages[stage].cdf()
                if xs:
                    panel.step([x / 1000 for x in xs], ys, where="post", label=stage, color=STAGE_COLORS[stage])
            if stages is REDIS_STAGES:
                _band(panel, vertical=True)
            panel.set_xscale("log")
            panel.set_title(f"{_rate_label(run.rate)}, to {'Redis' if stages is REDIS_STAGES else 'MongoDB'}")
            panel.grid(True, which="both", alpha=0.3)
        panels[row][0].set_ylabel("fraction at or below")
    for panel in panels[1]:
        panel.set_xlabel("ms (log scale)")
    figure.suptitle("Latency CDF by stage and simulator rate")
    return _save(figure, path, legend_below=True, original_design=True)


def _grouped_bars(axes: Axes, labels: Sequence[str], series: dict[str, list[float]], colors: dict[str, str],
                  ylabel: str, title: str) -> None:
    """One group of bars per label, one bar per series in each group, each series in its own color."""
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        axes.bar([position + index * width for position in range(len(labels))], values, width, label=name,
                 color=colors[name])
    axes.set_xticks([position + 0.4 - width / 2 for position in range(len(labels))], labels)
    axes.set_ylabel(ylabel)
    axes.set_title(title)


def resources(results: PipelineResults, path: Path) -> str:
    """CPU and peak memory of every process measured, at each rate; one legend for both panels, below them,
    so it hides no bar, and one color per process in both."""
    runs = results.rates
    labels = [_rate_label(run.rate) for run in runs]
    processes = list(runs[0].cpu_percent)
    measured = list(runs[0].peak_mb)
    colors = {name: f"C{index}" for index, name in enumerate(dict.fromkeys([*processes, *measured]))}
    figure, (cpu, memory) = plt.subplots(1, 2, figsize=(11, 4.6))
    _grouped_bars(cpu, labels, {name: [run.cpu_percent[name] for run in runs] for name in processes}, colors,
                  "% of one core", "CPU by process")
    _grouped_bars(memory, labels, {name: [run.peak_mb[name] for run in runs] for name in measured}, colors,
                  "MiB", "Peak resident memory (VmHWM)")
    figure.suptitle(f"Cost of each process at each simulator rate ({results.symbols} symbols)")
    return _save(figure, path, legend_below=True)


def scaling(results: PipelineResults, path: Path) -> str:
    """l2builder drain rate with 1, 2 and 3 instances, beside linear scaling from one."""
    drains = results.scaling
    counts = [drain.instances for drain in drains]
    figure, axes = plt.subplots(figsize=(6, 3.8))
    axes.plot(counts, [drain.frames_per_s for drain in drains], marker="o", label="measured")
    axes.plot(counts, [drains[0].frames_per_s * count for count in counts], linestyle=":", color="gray",
              label="linear from one instance")
    for drain in drains:
        axes.annotate(f"{drain.frames_per_s:,.0f}", (drain.instances, drain.frames_per_s), fontsize=8,
                      textcoords="offset points", xytext=(5, -10))
    axes.set_ylim(bottom=0)
    axes.set_xticks(counts)
    axes.set_xlabel("l2builder instances (2 cores, shared with Redis and MongoDB)")
    axes.set_ylabel("frames/s stored and acknowledged")
    axes.set_title("l2builder scaling")
    axes.legend(fontsize=8)
    return _save(figure, path)


def speed_ideas(results: PipelineResults, path: Path) -> str:
    """CPU per frame of ingest and l2builder with each idea switched off, and JSON encode/decode costs."""
    figure, (ingest, builder, codec) = plt.subplots(1, 3, figsize=(13, 3.8))
    for panel, runs, title in ((ingest, [(run.variant, run.cpu_us_per_frame) for run in results.ingest_variants],
                                "ingest (simulator at 6,000 frames/s)"),
                               (builder, [(drain.variant, drain.cpu_us_per_frame) for drain in
                                          [results.scaling[0], *results.l2builder_variants]],
                                "l2builder (drain, one instance)")):
        names = [name.replace(" (as shipped)", "\n(as shipped)") for name, _ in runs]
        panel.bar(names, [value for _, value in runs], color=["tab:blue", "tab:gray", "tab:gray"][:len(runs)])
        for position, (_, value) in enumerate(runs):
            panel.text(position, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
        panel.set_ylabel("CPU µs per frame")
        panel.set_title(title)
        panel.tick_params(axis="x", labelsize=7)
    measured = {name: pair for name, pair in results.json_us.items() if pair[1] == pair[1]}  # NaN: no json twin
    positions = range(len(measured))
    codec.bar([position - 0.2 for position in positions], [pair[0] for pair in measured.values()], 0.4,
              label="orjson")
    codec.bar([position + 0.2 for position in positions], [pair[1] for pair in measured.values()], 0.4,
              label="json (standard library)", color="tab:gray")
    codec.set_xticks(list(positions), [name.split(" (")[0] for name in measured], fontsize=7)
    codec.set_ylabel("µs per frame")
    codec.set_title("JSON on the hot paths")
    codec.legend(fontsize=8)
    figure.suptitle("Speed ideas of the original design: each service with and without it")
    return _save(figure, path, original_design=True)


def scale(runs: Sequence[Run], path: Path) -> str:
    """Per scenario, this tree beside the baseline revision: MongoDB bytes per changed row, redis-server CPU
    per L2 frame, flush cycle, and the times to every book live (warm-up, after kill -9)."""
    scenarios = list(dict.fromkeys(run.scenario for run in runs))
    variants = list(dict.fromkeys(run.variant for run in runs))
    found = {(run.scenario, run.variant): run for run in runs}
    nan = float("nan")

    def series(value: Any) -> dict[str, list[float]]:
        return {variant: [value(found[scenario, variant]) if (scenario, variant) in found else nan
                          for scenario in scenarios] for variant in variants}

    def cycle(run: Run) -> float:
        return run.cycle_p99 if run.cycle_p99 is not None else run.cycle_mean or nan

    panels = (("bytes to MongoDB per changed row (log)", series(lambda run: run.bytes_per_row)),
              ("redis-server CPU µs per L2 frame", series(lambda run: run.redis_us_per_frame)),
              ("flush cycle p99 s (baseline: mean)", series(cycle)),
              ("warm-up to all live, s", series(lambda run: run.warmup_s if run.warmup_s is not None else nan)),
              ("kill -9 to all live, s", series(lambda run: run.takeover_s if run.takeover_s is not None else nan)))
    figure, axes = plt.subplots(1, len(panels), figsize=(17, 4.2))
    colors = {variant: ("tab:blue" if index == 0 else "tab:gray") for index, variant in enumerate(variants)}
    for panel, (title, values) in zip(axes, panels, strict=True):
        _grouped_bars(panel, scenarios, values, colors, "", title)
        panel.title.set_fontsize(9)
        panel.tick_params(axis="x", labelsize=7, rotation=45)
        if "log" in title:
            panel.set_yscale("log")
    figure.suptitle("bench.scale: this tree beside the baseline revision, two l2builders")
    return _save(figure, path, legend_below=True)
