"""Serving: latency and throughput of private predictions from served bundles, under load.

The digits MLP (64-32-10; ReLU under MPC, a square activation under HE),
exported with `model.export(..., format="mpc" | "he")` and served by
`privkeras serve` processes on loopback with mutual TLS
(`pk.serving.local_servers`), queried by clients in this process:

- `<served> latency 1 row`: one client, one-row predictions back to back;
  p50 (value) and p99 in ms.
- `<served> throughput <n> clients`: n clients, each sending one-row
  predictions back to back for a fixed time; predictions per second. The
  baseline is the one-client throughput measured in the same process, in
  rounds interleaved with the others (medians over rounds): `ratio` is the
  speed-up from batching (MPC target: >= 10x at 100 clients; HE: >= 5x).
  MPC clients are separate connections (each its own shares and tickets:
  the servers batch them into shared jobs); HE "clients" are concurrent
  callers of one session (one key pair: its calls share encrypted groups;
  ciphertexts under different keys cannot share slots, so separate HE
  sessions are served one after another).
- `<served> load test 100 clients`: 100 clients for 60 s per run (3 s with
  `--quick`), three runs; errors
  in all runs (value, target 0) and the servers' resident memory after each
  run (growth from the first run to the last).

Every server runs on the same 2-core box as the clients and the box is
shared with other work: `load_1min_before` says how busy it was.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.rows import cpu, row

SUITE = "serving"
LEVELS = (1, 10, 100)


def _rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _model(kind: str, data):
    import keras

    import privkeras as pk
    from privkeras.layers import PolynomialActivation

    keras.utils.set_random_seed(0)
    hidden = (
        [keras.layers.Dense(32, activation="relu")]
        if kind != "he"
        else [keras.layers.Dense(32), PolynomialActivation("square")]
    )
    model = pk.PrivateSequential([keras.Input((64,)), *hidden, keras.layers.Dense(10)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    model.fit(data.x_train, data.y_train, epochs=2, batch_size=64, verbose=0)
    privacy = "he" if kind == "he" else pk.MPC(protocol=kind)
    model.compile(loss=loss, privacy=privacy)
    return model


def _drive(clients, x, seconds: float) -> tuple[int, list[float], list[BaseException]]:
    """Every client sends one-row predictions back to back for `seconds`."""
    latencies, errors, counts = [], [], []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def loop(k: int, client) -> None:
        done, mine = 0, []
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                client.predict(x[(k + done) % len(x)])
            except BaseException as error:  # counted: the load test's target is zero
                with lock:
                    errors.append(error)
                continue
            mine.append(time.perf_counter() - started)
            done += 1
        with lock:
            latencies.extend(mine)
            counts.append(done)

    threads = [threading.Thread(target=loop, args=(k, c)) for k, c in enumerate(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, latencies, errors


def _count_kinds(kinds: dict[str, int], errors) -> None:
    for error in errors:
        key = f"{type(error).__name__}: {str(error)[:160]}"
        kinds[key] = kinds.get(key, 0) + 1


def _clients(kind: str, servers, n: int, shared):
    """n MPC connections, or n callers of one HE session."""
    if kind == "he":
        return [shared] * n
    return [servers.connect(timeout=60) for _ in range(n)]


def _served(kind: str, data, quick: bool, common: dict) -> list[dict]:
    import privkeras as pk

    rounds, seconds = (1, 2.0) if quick else (3, 4.0)
    load_seconds, load_runs = (3.0, 2) if quick else (60.0, 3)
    latency_requests = 20 if quick else 100
    label = {"pond": "MPC pond", "aby3": "MPC aby3", "he": "HE"}[kind]
    model = _model(kind, data)
    x = data.x_test
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "digits"
        model.export(str(bundle), format=kind if kind == "he" else "mpc")
        started = time.perf_counter()
        with pk.serving.local_servers(bundle, timeout=60, max_delay=0.005) as servers:
            start_seconds = time.perf_counter() - started
            shared = servers.connect(timeout=60)
            extra = {"servers": len(servers.pids), "start_seconds": round(start_seconds, 1)}
            # -- one client's latency ---------------------------------------------------------
            for k in range(5):
                shared.predict(x[k])
            samples = []
            for k in range(latency_requests):
                t0 = time.perf_counter()
                shared.predict(x[k])
                samples.append(time.perf_counter() - t0)
            rows.append(
                row(
                    SUITE, f"{label} latency 1 row", "p50", statistics.median(samples) * 1e3,
                    "ms", p99_ms=float(np.percentile(samples, 99) * 1e3),
                    p90_ms=float(np.percentile(samples, 90) * 1e3),
                    requests=len(samples), **extra, **common,
                )
            )  # fmt: skip
            # -- throughput at 1, 10, 100 clients, interleaved rounds -------------------------
            pools = {n: _clients(kind, servers, n, shared) for n in LEVELS}
            results = {n: [] for n in LEVELS}
            latencies = {n: [] for n in LEVELS}
            errors = {n: 0 for n in LEVELS}
            kinds: dict[str, int] = {}
            before = servers.stats()
            for _ in range(rounds):
                for n in LEVELS:
                    rate, lat, errs = _drive(pools[n], x, seconds)
                    results[n].append(rate)
                    latencies[n] += lat
                    errors[n] += len(errs)
                    _count_kinds(kinds, errs)
            after = servers.stats()
            one = statistics.median(results[1])
            batches = max(
                1,
                after.get("batches", after.get("requests", 0))
                - before.get("batches", before.get("requests", 0)),
            )
            served_rows = after.get("rows", 0) - before.get("rows", 0)
            for n in LEVELS:
                rows.append(
                    row(
                        SUITE, f"{label} throughput {n} clients", "predictions/s",
                        statistics.median(results[n]), "1/s", one,
                        p50_ms=float(np.percentile(latencies[n], 50) * 1e3) if latencies[n] else None,
                        p99_ms=float(np.percentile(latencies[n], 99) * 1e3) if latencies[n] else None,
                        errors=errors[n], error_kinds=kinds if errors[n] else {},
                        rounds=rounds, seconds_per_round=seconds,
                        baseline_what="1 client, same servers, interleaved rounds",
                        clients_are="callers of one HE session" if kind == "he" else "separate connections",
                        **extra, **common,
                    )
                )  # fmt: skip
            rows[-1]["mean_rows_per_batch_all_levels"] = round(served_rows / batches, 2)
            # -- load test ------------------------------------------------------------------
            load_errors, memory, rates, load_kinds = 0, [], [], {}
            for _ in range(load_runs):
                rate, _, errs = _drive(pools[100], x, load_seconds)
                load_errors += len(errs)
                _count_kinds(load_kinds, errs)
                rates.append(rate)
                memory.append(round(_rss_mb(servers.pids.values()), 1))
            rows.append(
                row(
                    SUITE, f"{label} load test 100 clients", "errors", load_errors, "requests",
                    runs=load_runs, seconds_per_run=load_seconds, error_kinds=load_kinds,
                    predictions_per_second=[round(r, 1) for r in rates],
                    servers_rss_mb_after_each_run=memory,
                    rss_growth_mb_first_to_last=round(memory[-1] - memory[0], 1),
                    **extra, **common,
                )
            )  # fmt: skip
            for client in {id(c): c for n in LEVELS for c in pools[n]}.values():
                client.close()
    return rows


def run(quick: bool = False) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    from privkeras import datasets

    warnings.filterwarnings("ignore", category=UserWarning)  # pond's dealer warning
    data = datasets.digits()
    common = {
        "cpu": cpu(),
        "cores": os.cpu_count(),
        "box": "shared with other work while measured",
        "load_1min_before": round(os.getloadavg()[0], 2),
        "transport": "gRPC over TLS 1.3 on 127.0.0.1, mutual TLS with development certificates",
        "model": "digits MLP 64-32-10 (MPC: ReLU; HE: square activation)",
    }
    rows = []
    for kind in ("pond", "aby3", "he"):
        rows += _served(
            kind, data, quick, dict(common, load_1min_before=round(os.getloadavg()[0], 2))
        )
    return rows
