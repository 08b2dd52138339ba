"""Cost of single secure operations: time, online rounds, bytes per party.

Every party runs in this process (the in-process communicator), on one torch
thread, so a time is the sum of all parties' and the dealer's computation,
with no network: the rounds and bytes columns say what a network would add. The baseline of a
time row is the same operation on plaintext float32 tensors of the same
library, measured in the same process.

Cases: elementwise product (64 x 128), matmul 64x784 @ 784x128 with fresh
operands and with the right operand reused (weights), ReLU and a comparison
on 64 x 128, max over 10 classes (64 x 10), exp and sigmoid on 64 x 128,
softmax on 64 x 10, and the forward pass of an MLP 784-128-128-10 on a batch
of 64 with shared weights (the issue's CrypTen reference: 77 ms as two
processes, 67 ms in one, 21 rounds, 10.5 MB sent per party).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.rows import row, timeit

SUITE = "mpc-ops"
BATCH = 64
CRYPTEN_MLP = {"time_ms": 77.0, "rounds": 21, "mb_per_party": 10.5}


def _plaintext(kernels: str) -> dict[str, Callable[..., Any]]:
    """Plaintext float32 versions of the operations, on the same library."""
    if kernels == "torch":
        import torch

        return {
            "tensor": lambda a: torch.from_numpy(np.asarray(a, np.float32)),
            "mul": torch.mul,
            "matmul": torch.matmul,
            "relu": torch.relu,
            "less": torch.lt,
            "max": lambda a: torch.max(a, dim=-1).values,
            "exp": torch.exp,
            "sigmoid": torch.sigmoid,
            "softmax": lambda a: torch.softmax(a, dim=-1),
        }
    import tensorflow as tf

    return {
        "tensor": lambda a: tf.constant(np.asarray(a, np.float32)),
        "mul": tf.multiply,
        "matmul": tf.matmul,
        "relu": tf.nn.relu,
        "less": tf.less,
        "max": lambda a: tf.reduce_max(a, axis=-1),
        "exp": tf.exp,
        "sigmoid": tf.sigmoid,
        "softmax": tf.nn.softmax,
    }


class _Fresh:
    """Pre-shared inputs handed out one per call, so no call reuses an opened mask."""

    def __init__(self, rt, shape, count: int, scale: float = 1.0):
        rng = np.random.default_rng(0)
        self._items = [rt.share(rng.normal(size=shape) * scale, owner="p0") for _ in range(count)]
        self._next = 0

    def __call__(self):
        item = self._items[self._next % len(self._items)]
        self._next += 1
        return item


def _cases(rt, plain, count: int) -> dict[str, tuple[Callable, Callable]]:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(BATCH, 128)), rng.normal(size=(BATCH, 128))
    x784, w = rng.normal(size=(BATCH, 784)), rng.normal(size=(784, 128)) * 0.05
    logits = rng.normal(size=(BATCH, 10)) * 3
    pa, pb, px, pw, pl = (plain["tensor"](v) for v in (a, b, x784, w, logits))
    fa, fb = _Fresh(rt, a.shape, count), _Fresh(rt, b.shape, count)
    fresh = {name: _Fresh(rt, a.shape, count) for name in ("relu", "less", "exp", "sigmoid")}
    fx, fw = _Fresh(rt, x784.shape, count), _Fresh(rt, w.shape, count, 0.05)
    fx2 = _Fresh(rt, x784.shape, count)
    fl = _Fresh(rt, logits.shape, count, 3.0)
    shared_w = rt.share(w, owner="model")
    return {
        "mul 64x128": (lambda: fa() * fb(), lambda: plain["mul"](pa, pb)),
        "matmul 64x784@784x128 fresh": (lambda: fx() @ fw(), lambda: plain["matmul"](px, pw)),
        "matmul 64x784@784x128 reused weights": (
            lambda: fx2() @ shared_w,
            lambda: plain["matmul"](px, pw),
        ),
        "relu 64x128": (lambda: fresh["relu"]().relu(), lambda: plain["relu"](pa)),
        "less-than 64x128": (lambda: fresh["less"]() < fb(), lambda: plain["less"](pa, pb)),
        "max over 10 (64x10)": (lambda: fl().max(axis=-1), lambda: plain["max"](pl)),
        "exp 64x128": (lambda: fresh["exp"]().exp(), lambda: plain["exp"](pa)),
        "sigmoid 64x128": (lambda: fresh["sigmoid"]().sigmoid(), lambda: plain["sigmoid"](pa)),
        "softmax 64x10": (lambda: fl().softmax(axis=-1), lambda: plain["softmax"](pl)),
    }


def _mlp_case(rt, plain, count: int) -> tuple[Callable, Callable]:
    rng = np.random.default_rng(2)
    sizes = [(784, 128), (128, 128), (128, 10)]
    weights = [rng.normal(size=s) * 0.05 for s in sizes]
    biases = [rng.normal(size=s[1]) * 0.05 for s in sizes]
    shared = [
        (rt.share(w, owner="model"), rt.share(b, owner="model")) for w, b in zip(weights, biases)
    ]
    inputs = _Fresh(rt, (BATCH, 784), count)
    plain_layers = [(plain["tensor"](w), plain["tensor"](b)) for w, b in zip(weights, biases)]
    x_plain = plain["tensor"](rng.normal(size=(BATCH, 784)))

    def secure():
        h = inputs()
        for i, (w, b) in enumerate(shared):
            h = h @ w + b
            if i < len(shared) - 1:
                h = h.relu()
        return h.reveal(to="p0", what="logits")

    def plaintext():
        h = x_plain
        for i, (w, b) in enumerate(plain_layers):
            h = plain["matmul"](h, w) + b
            if i < len(plain_layers) - 1:
                h = plain["relu"](h)
        return h

    return secure, plaintext


def _measure(rt, name, secure, plaintext, repeat, label) -> list[dict]:
    secure()  # warm-up; also opens reused weights once
    before = rt.communicator.snapshot()
    secure()
    cost = rt.communicator.snapshot() - before
    seconds = timeit(secure, repeat=repeat, warmup=0)
    plain_seconds = timeit(plaintext, repeat=max(repeat, 20), warmup=2)
    case = f"{label} {name}"
    extra = {"protocol": rt.protocol_name, "kernels": rt.kernels.name}
    rows = [
        row(SUITE, case, "time", seconds * 1e3, "ms", plain_seconds * 1e3, **extra),
        row(SUITE, case, "rounds", cost.rounds, "rounds", **extra),
        row(SUITE, case, "bytes_per_party", cost.max_bytes_per_party(), "B", **extra),
        row(SUITE, case, "offline_bytes", cost.offline_bytes, "B", **extra),
    ]
    if name.startswith("mlp"):
        notes = (
            "CrypTen 0.4.1 on this machine (issue 4): 77 ms (2 processes, gloo), 67 ms in one "
            "process, 21 rounds, 10.5 MB per party; baseline column: plaintext forward"
        )
        for r in rows:
            r["notes"] = notes
            r["crypten"] = CRYPTEN_MLP
    return rows


def run(quick: bool) -> list[dict]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all parties share one thread (CrypTen's runs: one per party)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from privkeras.backends.mpc.runtime import MPCRuntime

    repeat = 3 if quick else 10
    count = repeat + 3
    kernel_names = ("torch",) if quick else ("torch", "tensorflow")
    rows: list[dict] = []
    for kernels in kernel_names:
        plain = _plaintext(kernels)
        for protocol in ("pond", "aby3"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rt = MPCRuntime(protocol, kernels=kernels, seed=0)
            label = f"{protocol}/{kernels}"
            for name, (secure, plaintext) in _cases(rt, plain, count).items():
                rows += _measure(rt, name, secure, plaintext, repeat, label)
            secure, plaintext = _mlp_case(rt, plain, count)
            rows += _measure(rt, "mlp 784-128-128-10 forward b64", secure, plaintext, repeat, label)
    return rows
