"""
The chart of a benchmark run (C{run.py --plot FILE.png}): what it measured,
each figure beside direct UDP and, when measured, Debian's udptunnel 1.1,
so a comparison is one look rather than three tables.

matplotlib is an optional extra (C{pip install '.[bench]'}); run.py checks
for it before measuring, so a missing one costs no run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The panels: (mode, figure, title, what more means, whether direct UDP has it).
PANELS = [
    ("blast", "pps", "One way, datagrams/s", "more is better", True),
    ("window", "rtps", "Pipelined echo (32 in flight), round trips/s", "more is better", True),
    ("ping", "rtt_p50_us", "Ping-pong RTT p50, us", "less is better", True),
    ("blast", "tunnel_cpu_us_per_op", "CPU per datagram one way, both ends, us",
     "less is better", False),
]

#: Colours per configuration: the same in every panel.
COLOURS = {"direct": "#9e9e9e", "udptunnel": "#1f77b4", "1.1": "#ff7f0e"}
LABELS = {"direct": "direct UDP", "udptunnel": "udptunnel", "1.1": "Debian udptunnel 1.1"}


def missing() -> str | None:
    """
    Why C{--plot} cannot work here, or C{None}.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install '.[bench]' (or pip install matplotlib)"
    return None


def plotSummary(summary: dict[str, Any], sizes: list[int], modes: list[str],
                configs: list[str], path: Path, title: str) -> list[str]:
    """
    Draw the panels of C{summary} (run.py's medians by size, mode and
    configuration) that were measured into the PNG file C{path}.

    @return: the titles of the panels drawn.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    panels = [panel for panel in PANELS if panel[0] in modes]
    if not panels:
        raise ValueError("nothing to plot: --plot draws the blast, window and ping modes")
    columns = 2 if len(panels) > 1 else 1
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 4.2 * rows),
                                squeeze=False)
    drawn = []
    for ax, (mode, key, heading, better, withDirect) in zip(axes.flat, panels):
        shown = [c for c in configs if withDirect or c != "direct"]
        width = 0.8 / len(shown)
        for index, config in enumerate(shown):
            values = [summary.get(str(size), {}).get(mode, {}).get(config, {}).get(key)
                      for size in sizes]
            positions = [i + (index - (len(shown) - 1) / 2) * width for i in range(len(sizes))]
            bars = ax.bar(positions, [v or 0 for v in values], width,
                          label=LABELS.get(config, config), color=COLOURS.get(config))
            for bar, value in zip(bars, values):
                if value:
                    ax.annotate(_short(value), (bar.get_x() + bar.get_width() / 2,
                                                bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{heading} ({better})", fontsize=10)
        ax.set_xticks(range(len(sizes)), [f"{size} B" for size in sizes])
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)  # room for the figures over the bars
        drawn.append(heading)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    # One legend for all panels, under the title, where it hides no bar.
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat),
                          key=lambda pair: len(pair[1]))
    figure.suptitle(title, fontsize=11)
    figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9,
                  bbox_to_anchor=(0.5, 0.955), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return drawn


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"
