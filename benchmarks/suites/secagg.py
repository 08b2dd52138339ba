"""Secure aggregation (SecAgg+): bytes and seconds per owner as the number of owners grows.

Simulated rounds (`secagg.simulate_round`: every owner and the coordinator in
this process, every message encoded to bytes and decoded) of a 4,810-value
update -- the size of the issue's Digits MLP 64-64-10 -- with 4, 10, 100 and
1,000 owners (`--quick`: up to 100), clip range 1, the default Z_2^32 ring and
graph settings. Rows:

- `bytes up` / `bytes down` per owner per round, in total and per stage, the
  median over owners. The `baseline` of the total upload is the float32
  update (4 bytes a value) an owner sends without secure aggregation, so
  `ratio` is the upload overhead (the issue's target: <= 1.3x; Flower's
  SecAgg+ measured 2.2x). `model` carries `owner_cost`'s prediction, which
  equals the measurement.
- `neighbours`: the graph degree k. Key-exchange, share and unmasking bytes
  grow with k = O(log n); nothing an owner sends grows with n.
- `owner seconds`: one owner's computation per stage and in total (median
  over owners), and `coordinator seconds` per stage: single-threaded Python
  on this CPU, no network.
- `round seconds`: 10 owners, the whole in-process round with and without
  distributed DP, against the plain float64 sum of the same updates
  (`baseline`), interleaved rounds, medians.

The box is shared with other engineers' processes: `load_1min_before` records
the load average when the suite started; absolute seconds are noisy, bytes are
exact.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from benchmarks.rows import cpu, row
from privkeras.backends.federated.secagg import STAGES, SecAggConfig, owner_cost, simulate_round

SUITE = "secagg"
VECTOR = 4810  # Digits MLP 64-64-10: 64*64 + 64 + 64*10 + 10
CONFIG = SecAggConfig(clip_range=1.0)


def _updates(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = len(str(n - 1))
    return {f"o{i:0{width}d}": rng.uniform(-0.1, 0.1, VECTOR) for i in range(n)}


def _median_over_owners(per_stage: dict[str, dict[str, float]], stage: str) -> float:
    return statistics.median(per_stage[stage].values())


def _scaling_rows(n: int, notes: dict) -> list[dict]:
    updates = _updates(n)
    start = time.perf_counter()
    report = simulate_round(updates, CONFIG)
    wall = time.perf_counter() - start
    cost = owner_cost(n, VECTOR, CONFIG, name_bytes=len(next(iter(updates))))
    case = f"{n} owners, {VECTOR} values"
    k = report.result.params.neighbours
    rows = [
        row(
            SUITE,
            case,
            "neighbours",
            k,
            "owners",
            None,
            threshold=report.result.params.threshold,
            **notes,
        )
    ]
    owners = list(updates)
    totals = {
        d: [sum(report.owner_bytes(o)[s][i] for s in STAGES) for o in owners]
        for i, d in enumerate(("up", "down"))
    }
    float32 = 4 * VECTOR
    rows.append(
        row(
            SUITE,
            case,
            "bytes up",
            statistics.median(totals["up"]),
            "B",
            float32,
            model=cost["total"]["up"],
            stage="total",
            **notes,
        )
    )
    rows.append(
        row(
            SUITE,
            case,
            "bytes down",
            statistics.median(totals["down"]),
            "B",
            float32,
            model=cost["total"]["down"],
            stage="total",
            **notes,
        )
    )
    for stage in STAGES:
        for i, direction in enumerate(("up", "down")):
            measured = statistics.median(report.owner_bytes(o)[stage][i] for o in owners)
            rows.append(
                row(
                    SUITE,
                    case,
                    f"bytes {direction} {stage}",
                    measured,
                    "B",
                    None,
                    model=cost[stage][direction],
                    stage=stage,
                    **notes,
                )
            )
        rows.append(
            row(
                SUITE,
                case,
                f"owner seconds {stage}",
                _median_over_owners(report.owner_seconds, stage),
                "s",
                None,
                stage=stage,
                **notes,
            )
        )
        rows.append(
            row(
                SUITE,
                case,
                f"coordinator seconds {stage}",
                report.coordinator_seconds[stage],
                "s",
                None,
                stage=stage,
                **notes,
            )
        )
    per_owner_total = statistics.median(
        sum(report.owner_seconds[s][o] for s in STAGES) for o in owners
    )
    rows.append(
        row(SUITE, case, "owner seconds", per_owner_total, "s", None, stage="total", **notes)
    )
    rows.append(row(SUITE, case, "simulated round seconds", wall, "s", None, **notes))
    return rows


def _round_time_rows(rounds: int, notes: dict) -> list[dict]:
    updates = _updates(10, seed=1)
    dp = SecAggConfig(clip_norm=1.0, noise_multiplier=1.0)
    samples = {"plain": [], "secagg": [], "secagg+dp": []}
    simulate_round(updates, CONFIG)  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        np.sum(list(updates.values()), axis=0)
        samples["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        simulate_round(updates, CONFIG)
        samples["secagg"].append(time.perf_counter() - start)
        start = time.perf_counter()
        simulate_round(updates, dp)
        samples["secagg+dp"].append(time.perf_counter() - start)
    plain = statistics.median(samples["plain"])
    return [
        row(
            SUITE,
            f"10 owners, {VECTOR} values, {name}",
            "round seconds",
            statistics.median(samples[name]),
            "s",
            plain,
            rounds=rounds,
            **notes,
        )
        for name in ("secagg", "secagg+dp")
    ]


def run(quick: bool = False) -> list[dict]:
    notes = {
        "cpu": cpu(),
        "load_1min_before": round(os.getloadavg()[0], 2),
        "shared_box": True,
    }
    rows = []
    for n in (4, 10, 100) if quick else (4, 10, 100, 1000):
        rows.extend(_scaling_rows(n, notes))
    rows.extend(_round_time_rows(3 if quick else 7, notes))
    return rows
