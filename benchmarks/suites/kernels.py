"""Ring kernels and secure randomness: what every engine's arithmetic costs.

Rows:
- `ring matmul MxKxN <library>/<route>`: exact int64 matmul mod 2^64 in ms,
  against the float64 BLAS matmul of the same shape in the same library
  (`baseline`, `ratio`) and in numpy (`numpy_float64_ms`,
  `ratio_vs_numpy_float64`). `<route>` "auto" is what engines get (`route`
  says where it went); the other routes show why auto picks what it picks.
- `ring conv2d <shape> <library>/auto`: NHWC convolution mod 2^64 in ms,
  against the library's float64 convolution.
- `SecureStream.<kind>`: AES-CTR stream throughput in MB of output per
  second, against numpy's (non-cryptographic) PCG64 generator.

Values are medians; `best_*` keys keep the fastest run, and
`load_1min_before` the machine's load, since other processes stall
multi-threaded BLAS on a 2-core box.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from benchmarks.rows import row, timeit

SUITE = "kernels"
MATMUL_SHAPES = ((128, 784, 128), (512, 512, 512))
CONV_INPUT, CONV_KERNEL, CONV_STRIDES, CONV_PADDING = (16, 28, 28, 3), (3, 3, 3, 16), 1, "SAME"
#: Matmul routes each library offers besides "auto".
ROUTES = {
    "numpy": ("native", "limbs"),
    "torch": ("native", "limbs"),
    "tensorflow": ("native", "limbs", "torch"),
}
#: numpy's int64 loop at 512^3 takes most of a second per call: once is enough.
SLOW_ROUTES = {("numpy", "native", (512, 512, 512))}


def _median_and_best(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, float]:
    """Median and fastest seconds of `fn()` over `repeat` timed runs (`rows.timeit` per run).

    The median is the row's value; the fastest run is kept too, because other
    processes on a small machine stall multi-threaded BLAS now and then.
    """
    for _ in range(warmup):
        fn()
    samples = sorted(timeit(fn, repeat=1, warmup=0) for _ in range(repeat))
    return samples[len(samples) // 2], samples[0]


def _float_matmul(library: str, a: np.ndarray, b: np.ndarray) -> Callable[[], Any]:
    """A zero-argument float64 matmul of `a @ b` in `library` (the BLAS baseline)."""
    if library == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return lambda: torch.matmul(ta, tb)
    if library == "tensorflow":
        import tensorflow as tf

        ta, tb = tf.constant(a), tf.constant(b)
        return lambda: tf.linalg.matmul(ta, tb)
    return lambda: np.matmul(a, b)


def _float_conv(library: str, x: np.ndarray, kernel: np.ndarray) -> Callable[[], Any]:
    """A zero-argument float64 convolution (NHWC, HWIO) in `library`."""
    if library == "torch":
        import torch

        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tk = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        return lambda: torch.nn.functional.conv2d(tx, tk, stride=CONV_STRIDES, padding="same")
    if library == "tensorflow":
        import tensorflow as tf

        tx, tk = tf.constant(x), tf.constant(kernel)
        return lambda: tf.nn.conv2d(tx, tk, CONV_STRIDES, CONV_PADDING)
    from privkeras.core.kernels import get_kernels

    numpy_kernels = get_kernels("numpy")

    def im2col_conv():  # what numpy users do: patches, then one BLAS GEMM
        n, c_out = x.shape[0], kernel.shape[-1]
        patches = numpy_kernels.extract_patches(x, kernel.shape[:2], (1, 1), CONV_PADDING)
        cols = patches.reshape(-1, kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
        return (cols @ kernel.reshape(cols.shape[1], c_out)).reshape(n, *patches.shape[1:3], c_out)

    return im2col_conv


def _time_row(case: str, fn, baseline_fn, baseline_case: str, repeat: int, **extra) -> dict:
    """A "time" row in ms: median as value, the baseline's median as baseline, plus best runs."""
    median, best = _median_and_best(fn, repeat, warmup=1 if repeat > 1 else 0)
    base_median, base_best = _median_and_best(baseline_fn, max(repeat, 3))
    return row(
        SUITE,
        case,
        "time",
        1e3 * median,
        "ms",
        baseline=1e3 * base_median,
        baseline_case=baseline_case,
        best_ms=1e3 * best,
        baseline_best_ms=1e3 * base_best,
        best_ratio=best / base_best,
        **extra,
    )


def _matmul_rows(quick: bool, repeat: int) -> list[dict]:
    from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels
    from privkeras.core.random import SecureStream

    rows = []
    stream = SecureStream(seed=0)
    for m, k, n in MATMUL_SHAPES:
        shape = f"{m}x{k}x{n}"
        a, b = stream.ring((m, k)), stream.ring((k, n))
        fa, fb = stream.gaussian((m, k)), stream.gaussian((k, n))
        numpy_float_ms, numpy_float_best_ms = (
            1e3 * t for t in _median_and_best(_float_matmul("numpy", fa, fb), repeat)
        )
        for library in KERNEL_LIBRARIES:
            auto = get_kernels(library)
            ta, tb = auto.from_numpy(a), auto.from_numpy(b)
            for route in ("auto", *([] if quick else ROUTES[library])):
                kernels = get_kernels(library, matmul_method=route)
                slow = (library, route, (m, k, n)) in SLOW_ROUTES
                r = _time_row(
                    f"ring matmul {shape} {library}/{route}",
                    partial(kernels.matmul, ta, tb),
                    _float_matmul(library, fa, fb),
                    f"float64 matmul {shape} {library}",
                    1 if slow else repeat,
                    route=kernels.matmul_route(ta, tb),
                    numpy_float64_ms=numpy_float_ms,
                    numpy_float64_best_ms=numpy_float_best_ms,
                )
                r["ratio_vs_numpy_float64"] = r["value"] / numpy_float_ms
                rows.append(r)
    return rows


def _conv_rows(repeat: int) -> list[dict]:
    from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels
    from privkeras.core.random import SecureStream

    stream = SecureStream(seed=1)
    x, kernel = stream.ring(CONV_INPUT), stream.ring(CONV_KERNEL)
    fx, fk = stream.gaussian(CONV_INPUT), stream.gaussian(CONV_KERNEL)
    case = f"{'x'.join(map(str, CONV_INPUT))} * {'x'.join(map(str, CONV_KERNEL))} {CONV_PADDING}"
    rows = []
    for library in KERNEL_LIBRARIES:
        kernels = get_kernels(library)
        tx, tk = kernels.from_numpy(x), kernels.from_numpy(kernel)
        rows.append(
            _time_row(
                f"ring conv2d {case} {library}/auto",
                partial(kernels.conv2d, tx, tk, CONV_STRIDES, CONV_PADDING),
                _float_conv(library, fx, fk),
                f"float64 conv2d {case} {library}",
                repeat,
            )
        )
    return rows


def _stream_rows(quick: bool, repeat: int) -> list[dict]:
    from privkeras.core.random import SecureStream

    size = 1 << (18 if quick else 21)
    megabytes = 8 * size / 1e6
    stream, generator = SecureStream(), np.random.default_rng(0)
    draws = {
        "ring": (lambda: stream.ring(size), lambda: generator.integers(-(2**63), 2**63 - 1, size)),
        "gaussian": (lambda: stream.gaussian(size), lambda: generator.standard_normal(size)),
        "uniform": (lambda: stream.uniform(size), lambda: generator.random(size)),
    }
    rows = []
    for kind, (secure, plain) in draws.items():
        median, best = _median_and_best(secure, repeat)
        base_median, base_best = _median_and_best(plain, repeat)
        rows.append(
            row(
                SUITE,
                f"SecureStream.{kind}({size}) AES-CTR",
                "throughput",
                megabytes / median,
                "MB/s",
                baseline=megabytes / base_median,
                baseline_case=f"numpy PCG64 {kind} (not cryptographic)",
                best_mb_per_s=megabytes / best,
                baseline_best_mb_per_s=megabytes / base_best,
            )
        )
    return rows


def run(quick: bool) -> list[dict]:
    """All kernel rows; `quick` keeps the shapes but times fewer repeats and routes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    repeat = 3 if quick else 15
    load_before = os.getloadavg()[0]  # other processes on the box stall multi-threaded BLAS
    rows = [*_matmul_rows(quick, repeat), *_conv_rows(repeat), *_stream_rows(quick, repeat)]
    for r in rows:
        r["load_1min_before"] = round(load_before, 2)
    return rows
