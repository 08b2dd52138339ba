"""privkeras against CrypTen and SecretFlow-SPU, side by side in one run.

Workload (issue 13): private inference of the MLP 784-128-128-10 (ReLU) on a
batch of 64, weights and inputs secret, every party in one process, with the
same weights and inputs in every framework. Each framework also runs the same
MLP without ReLU, so that the share of the comparisons (ReLU) shows:
`relu_ms` is the difference, `relu_share` its part of the whole. Ratios
(`vs_pond_torch`, `vs_crypten`, `vs_spu`) are medians of per-round ratios.

- privkeras: pond/torch, aby3/torch and pond/tfe through `compile(privacy=MPC(...))`
  and `predict`, model shared once (as a server holds it), torch and
  TensorFlow on one thread each (TensorFlow's where not yet initialized).
- CrypTen 0.4.1: `crypten.cryptensor` matmuls and `relu`, one process
  (world size 1), weights encrypted once, torch on one thread.
- SPU: SEMI2K (2 parties, against pond) and ABY3 (3 parties, against aby3),
  ring FM64, in SPU's in-process simulator (parties on threads, one compute
  thread each); the executable is compiled once, each call shares inputs and
  weights.

CrypTen and SPU pull their own torch / jax versions, so they run in their own
interpreters: `PRIVKERAS_CRYPTEN_PYTHON` and `PRIVKERAS_SPU_PYTHON` name
them (default `/tmp/cmpvenv/bin/python` and `/tmp/spuvenv/bin/python`, made by

    python -m venv /tmp/spuvenv && /tmp/spuvenv/bin/pip install spu
    python -m venv /tmp/cmpvenv && /tmp/cmpvenv/bin/pip install --no-deps crypten \
        && /tmp/cmpvenv/bin/pip install omegaconf pandas pyyaml scikit-learn onnx "numpy<2"

plus a torch for CrypTen: `pip install crypten` fails on its dependency
`sklearn`, the deprecated name that refuses to build, and CrypTen 0.4.1
imports `torch.onnx._internal.registration`, gone from torch 2.13: see
`crypten_note` in the rows). Each worker starts once and answers "run N" on
stdin; rounds interleave the frameworks (privkeras, CrypTen, SPU, ...), each
round timing N calls of each, and the rows give medians over all rounds plus
the median of per-round ratios. A framework that cannot run gives a row
saying why.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.rows import row

SUITE = "mpc-compare"
BATCH = 64
HERE = Path(__file__).parent
WORKERS = {
    "crypten": ("PRIVKERAS_CRYPTEN_PYTHON", "/tmp/cmpvenv/bin/python", "_compare_crypten.py"),
    "spu": ("PRIVKERAS_SPU_PYTHON", "/tmp/spuvenv/bin/python", "_compare_spu.py"),
}
#: privkeras configurations, and the SPU protocol each is compared with.
PRIVKERAS = (("pond", "torch", "semi2k"), ("aby3", "torch", "aby3"), ("pond", "tfe", "semi2k"))
READY_DEADLINE_S = 900.0


def _layers(relu: bool):
    import keras

    activation = "relu" if relu else None
    return [
        keras.Input((784,)),
        keras.layers.Dense(128, activation=activation),
        keras.layers.Dense(128, activation=activation),
        keras.layers.Dense(10),
    ]


def _plaintext(x, weights, relu: bool) -> np.ndarray:
    h = x.astype(np.float64)
    for i in range(3):
        h = h @ weights[2 * i] + weights[2 * i + 1]
        if relu and i < 2:
            h = np.maximum(h, 0)
    return h


def _privkeras_models(weights):
    import privkeras as pk

    models = {}
    for protocol, engine, _ in PRIVKERAS:
        for relu in (True, False):
            model = pk.PrivateSequential(_layers(relu))
            model.set_weights(weights)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.compile(privacy=pk.MPC(protocol=protocol, engine=engine, seed=0))
            models[(protocol, engine, relu)] = model
    return models


class _Worker:
    """A framework's own interpreter, answering "run N" with one JSON line."""

    def __init__(self, name: str, data_path: str):
        variable, default, script = WORKERS[name]
        self.name = name
        self.python = os.environ.get(variable, default)
        self.error: str | None = None
        self.process = None
        if not Path(self.python).exists():
            self.error = f"no interpreter at {self.python} (set {variable})"
            return
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.pop("PYTHONPATH", None)
        self.process = subprocess.Popen(
            [self.python, str(HERE / script), data_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )

    def wait_ready(self, deadline: float) -> None:
        if self.process is None:
            return
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                self.error = f"exited: {self.process.stderr.read()[-600:]}"
                return
            if line.strip() == "ready":
                return
        self.error = "not ready before the deadline"

    def run(self, count: int) -> dict | None:
        if self.error is not None:
            return None
        self.process.stdin.write(f"run {count}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.error = f"exited: {self.process.stderr.read()[-600:]}"
            return None
        return json.loads(line)

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _time_privkeras(models, x, count: int) -> dict[str, list[float]]:
    out = {}
    for (protocol, engine, relu), model in models.items():
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            model.predict(x, batch_size=BATCH, verbose=0)
            samples.append(time.perf_counter() - start)
        out[f"privkeras {protocol}/{engine}/{'relu' if relu else 'linear'}"] = samples
    return out


def _collect(rounds: int, count: int, models, x, workers) -> list[dict[str, list[float]]]:
    """Per round: every framework's samples (seconds) under one key per configuration."""
    per_round = []
    for _ in range(rounds):
        samples = _time_privkeras(models, x, count)
        for worker in workers:
            answer = worker.run(count)
            if answer is None:
                continue
            for key, values in answer.items():
                if isinstance(values, list):  # "relu" or "semi2k/relu"
                    samples[_label(worker.name, key)] = values
            worker.last = answer
        per_round.append(samples)
    return per_round


def _label(framework: str, key: str) -> str:
    """The row label of a worker's key: crypten + relu -> "crypten/relu", spu + semi2k/relu ->
    "spu semi2k/relu"."""
    return f"{framework}/{key}" if "/" not in key else f"{framework} {key}"


def _median_ms(per_round, key) -> float | None:
    values = [v for r in per_round for v in r.get(key, [])]
    return 1e3 * statistics.median(values) if values else None


def _ratio(per_round, key, other) -> float | None:
    ratios = [
        statistics.median(r[key]) / statistics.median(r[other])
        for r in per_round
        if key in r and other in r
    ]
    return statistics.median(ratios) if ratios else None


def _rows(per_round, workers, errors) -> list[dict]:
    rows = []
    frameworks = [(f"privkeras {p}/{e}", spu) for p, e, spu in PRIVKERAS]
    frameworks += [("crypten", None), ("spu semi2k", None), ("spu aby3", None)]
    for label, spu_protocol in frameworks:
        relu_key, linear_key = f"{label}/relu", f"{label}/linear"
        relu_ms, linear_ms = _median_ms(per_round, relu_key), _median_ms(per_round, linear_key)
        if relu_ms is None:
            continue
        extra = {
            "linear_ms": linear_ms,
            "relu_ms": relu_ms - linear_ms,
            "relu_share": (relu_ms - linear_ms) / relu_ms,
            "max_abs_error": errors.get(label),
        }
        if label.startswith("privkeras"):
            extra["vs_pond_torch"] = _ratio(per_round, relu_key, "privkeras pond/torch/relu")
            extra["vs_crypten"] = _ratio(per_round, relu_key, "crypten/relu")
            extra["vs_spu"] = _ratio(per_round, relu_key, f"spu {spu_protocol}/relu")
            extra["vs_spu_protocol"] = spu_protocol
        rows.append(row(SUITE, f"mlp inference b64 {label}", "time", relu_ms, "ms", **extra))
    for worker in workers:
        if worker.error is not None:
            rows.append(
                row(
                    SUITE,
                    f"mlp inference b64 {worker.name}",
                    "unavailable",
                    0,
                    "-",
                    reason=worker.error,
                )
            )
    return rows


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import torch

    torch.set_num_threads(1)
    try:  # one compute thread per framework, as CrypTen and SPU get
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialized by an earlier suite
        pass
    import keras

    keras.utils.set_random_seed(0)
    reference = keras.Sequential(_layers(True))
    weights = [w.astype(np.float32) for w in reference.get_weights()]
    x = np.random.default_rng(0).uniform(0, 1, (BATCH, 784)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "mlp.npz")
        np.savez(
            data_path,
            x=x,
            **{f"w{i}": weights[2 * i] for i in range(3)},
            **{f"b{i}": weights[2 * i + 1] for i in range(3)},
            expected_relu=_plaintext(x, weights, True),
            expected_linear=_plaintext(x, weights, False),
        )
        workers = [_Worker(name, data_path) for name in WORKERS]
        try:
            models = _privkeras_models(weights)
            errors = {}
            for (protocol, engine, relu), model in models.items():
                out = model.predict(x, batch_size=BATCH, verbose=0)  # shares the weights once
                if relu:
                    error = np.max(np.abs(out - _plaintext(x, weights, True)))
                    errors[f"privkeras {protocol}/{engine}"] = float(error)
            deadline = time.monotonic() + READY_DEADLINE_S
            for worker in workers:
                worker.wait_ready(deadline)
            per_round = _collect(2 if quick else 5, 3, models, x, workers)
            for worker in workers:
                last = getattr(worker, "last", None) or {}
                for key, value in (last.get("errors") or {}).items():
                    if key.endswith("relu") and not key.endswith("linear"):
                        errors[_label(worker.name, key).removesuffix("/relu")] = value
        finally:
            for worker in workers:
                worker.close()
    rows = _rows(per_round, workers, errors)
    note = (
        "one process per framework, all parties in it; rounds interleaved; box shared with "
        "other processes; CrypTen installed with --no-deps (its 'sklearn' dependency does not "
        "build) and one import patched for torch 2.13 (torch.onnx._internal.registration)"
    )
    for r in rows:
        r["note"] = note
        r["python"] = sys.version.split()[0]
        r["tensorflow_intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    return rows
