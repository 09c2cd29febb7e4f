"""The report's two PNG charts (matplotlib, imported only here): speed-ups per comparison group
and time per sample against batch and image size. Each returns the written path, or None when
the run has nothing to draw.
"""

from __future__ import annotations

from pathlib import Path

from xpnet.bench.analysis import per_sample, scaling_series
from xpnet.bench.results import Case, baseline_of, speedups

__all__ = ["draw_scaling", "draw_speedups"]


def _comparison_groups(groups: dict[str, list[Case]]) -> dict[str, list[Case]]:
    """Groups that compare implementations (not the scaling series)."""
    return {g: cs for g, cs in groups.items()
            if not str(cs[0].get("kind", "")).startswith("scaling") and len(cs) > 1}


def draw_speedups(groups: dict[str, list[Case]], path) -> Path | None:
    """Horizontal bars of each group's speed-ups over its baseline, drawn from 1 on one shared
    log axis (bars to the left: slower than the baseline)."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    from xpnet.plot import new_figure, save_figure

    groups = _comparison_groups(groups)
    if not groups:
        return None
    all_ups = [v for cs in groups.values() for v in speedups(cs).values()]
    lo, hi = min(min(all_ups), 1.0) / 1.6, max(max(all_ups), 1.0) * 1.8
    ticks = [t * 10.0**e for e in range(-3, 5) for t in (1, 2, 5) if lo <= t * 10.0**e <= hi]
    heights = [0.35 + 0.22 * len(cs) for cs in groups.values()]
    total = sum(heights) + 0.45 * len(groups) + 0.3
    fig = new_figure(figsize=(9, total))
    grid = fig.add_gridspec(len(groups), 1, height_ratios=heights, hspace=0.45 * len(groups)
                            / sum(heights) * 2.2, left=0.24, right=0.97,
                            top=1 - 0.35 / total, bottom=0.25 / total)
    for i, (name, cs) in enumerate(groups.items()):
        ax = fig.add_subplot(grid[i])
        ups = speedups(cs)
        labels = [c.label for c in cs][::-1]  # fastest on top
        values = [ups[label] for label in labels]
        colors = ["tab:gray" if v < 1.0 else "tab:blue" for v in values]
        ax.barh(range(len(values)), [v - 1.0 for v in values], left=1.0, color=colors,
                height=0.7)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}×")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, v in enumerate(values):
            ax.text(v * (1.04 if v >= 1 else 0.96), y, f"{v:.3g}×", va="center",
                    ha="left" if v >= 1 else "right", fontsize=6.5)
        ax.set_title(f"{name}  (vs {baseline_of(cs).label})", fontsize=7.5, loc="left")
        ax.tick_params(axis="x", labelsize=6.5)
        ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path, dpi=100)


def draw_scaling(cases: list[Case], path) -> Path | None:
    """Time per sample against batch size and against image size (log-log)."""
    from xpnet.plot import new_figure, save_figure

    panels = [(k, scaling_series(cases, k)) for k in ("batch", "image")]
    panels = [(k, s) for k, s in panels if s]
    if not panels:
        return None
    from matplotlib.ticker import NullFormatter

    fig = new_figure(figsize=(5 * len(panels), 4), layout="constrained")
    for i, (kind, series) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for name, points in series.items():
            xs = [x for x, _ in points]
            ax.plot(xs, [per_sample(c) * 1e3 for _, c in points], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size" if kind == "batch" else "image size (pixels per side)")
        ax.set_ylabel("time per sample (ms)")
        ax.set_xticks(xs, [str(x) for x in xs], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        group = next(c.group for s in series.values() for _, c in s)
        ax.set_title(group.split(":", 1)[-1].strip(), fontsize=8)
    return save_figure(fig, path, dpi=100)
