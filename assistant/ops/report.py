"""``assistant report``: the service's figures over the hours, drawn with matplotlib (no
display needed: the Agg backend writes the PNG)."""

from __future__ import annotations

import datetime
from pathlib import Path

from assistant.ops.figures import Point

WIDTH, HEIGHT, DPI = 12.0, 9.0, 100
"""The PNG's size: 1200 x 900 pixels."""


def draw(points: list[Point], output: Path, *, hours: float) -> None:
    """Hit ratio per tier, tier read latency and time per stage, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [datetime.datetime.fromtimestamp(p.time) for p in points]
    figure, (ratios, tiers, stages) = plt.subplots(3, 1, figsize=(WIDTH, HEIGHT), dpi=DPI,
                                                   sharex=True)
    figure.suptitle(f"assistant: the last {hours:g} hours")
    for tier in ("l1", "l2", "l3"):
        ratios.plot(times, [p.hit_ratio.get(tier) for p in points], label=tier)
        tiers.plot(times, [p.tier_p50_ms.get(tier) for p in points], label=tier)
    ratios.set_ylabel("hit ratio")
    ratios.set_ylim(0, 1.05)
    tiers.set_ylabel("read, median (ms)")
    for stage in sorted({s for p in points for s in p.stage_p50_ms}):
        line = stages.plot(times, [p.stage_p50_ms.get(stage) for p in points], label=stage)
        stages.plot(times, [p.stage_p95_ms.get(stage) for p in points], linestyle="--",
                    color=line[0].get_color())
    stages.set_ylabel("per stage (ms): median, 95th dashed")
    for axes in (tiers, stages):  # latencies span decades: log, when there is any
        if any(y > 0 for line in axes.get_lines() for y in line.get_ydata()
               if y is not None and y == y):
            axes.set_yscale("log")
    for axes in (ratios, tiers, stages):
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=DPI)
    plt.close(figure)
