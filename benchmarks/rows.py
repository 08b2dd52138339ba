"""Rows and timing shared by every suite.

A row is `{suite, case, metric, value, unit, baseline, ratio}`: `baseline` is
the value of the reference measured in the same process (or None), `ratio`
is `value / baseline`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def row(
    suite: str,
    case: str,
    metric: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result row; `extra` keys (bytes, rounds, notes...) are kept as they are."""
    ratio = None if baseline in (None, 0) else value / baseline
    return {
        "suite": suite,
        "case": case,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        **extra,
    }


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
