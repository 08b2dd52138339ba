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


def rows_per_keras_backend(module: str, backends: tuple[str, ...], quick: bool) -> list[dict]:
    """Runs `python -m MODULE --backend B [--quick]` once per Keras backend.

    Keras fixes its backend at import, so each backend gets its own
    interpreter; the module prints its rows as JSON on its last line.
    """
    import json
    import os
    import subprocess
    import sys

    rows = []
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, "-m", module, "--backend", backend]
        if quick:
            command.append("--quick")
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{module} under {backend} failed:\n{result.stderr[-4000:]}")
        rows.extend(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def print_backend_rows(backends: tuple[str, ...], measure: Callable[[bool], list[dict]]) -> None:
    """The other half of `rows_per_keras_backend`: `--backend B [--quick]`, rows as JSON."""
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=backends, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if os.environ.get("KERAS_BACKEND") != args.backend:
        raise SystemExit(f"Run with KERAS_BACKEND={args.backend}.")
    print(json.dumps(measure(args.quick)))


def cpu() -> str:
    """The CPU every row names: model, cores and widest vector extension, read where it runs.

    The project's machines vary (AVX2 boxes, AVX-512 boxes), so no suite
    writes the machine down by hand.
    """
    from privkeras.core.kernels.routes import cpu_info

    info = cpu_info()
    flags = set(info["vector_extensions"])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{info['model']}, {info['cores']} cores, {vector}"
