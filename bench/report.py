"""What the benchmarks share at the end of a run: the goals, then one JSON line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def finish(results: dict[str, Any], goals: Sequence[tuple[str, bool]], *, quick: bool,
           omit: Sequence[str] = ()) -> None:
    """Print each goal as met or not (never asserted), then every number as one JSON object
    on the last line (``omit``: entries that are not numbers)."""
    width = max(len(name) for name, _ in goals) + 2
    print("\ngoals:")
    for name, met in goals:
        print(f"  {name:{width}} {'met' if met else 'NOT MET'}")
    results["goals_met"] = sum(met for _, met in goals)
    results["quick"] = quick
    print()
    print(json.dumps({k: v for k, v in results.items() if k not in omit}))
