"""Ring kernels and secure randomness: what every engine's arithmetic costs.

Rows:
- `machine`: the CPU model, cores and vector extensions (from /proc/cpuinfo),
  library versions and thread counts: routes are measured, not assumed, so
  the numbers only mean something next to the machine they came from.
- `ring matmul MxKxN <library>/<route>`: exact int64 matmul mod 2^64 in ms,
  against the float64 GEMM of the same shape in the same library
  (`baseline`), timed in interleaved rounds in this process; `ratio` is the
  median of the per-round ratios. Every route is shown; `<library>/auto` is
  what engines get, and its `route`, `route_source`, `route_reason` and
  `route_timings_ms` say what "auto" chose on this machine and why.
  `limbs` splits both operands in every call; `limbs (weights kept)` keeps
  the right operand's split between calls, as for a model's weights (and
  "auto", called on the same operands every round, keeps it too).
- `ring conv2d <case> <library>/<route>`: NHWC convolution mod 2^64, against
  the library's float64 convolution.
- `auto decision cost`: seconds the kernels spent timing routes in this
  suite, per library (the whole cost of measured routes in a run).
- `SecureStream.<kind>`: AES-CTR stream throughput in MB of output per
  second, against numpy's (non-cryptographic) PCG64 generator.

Every library runs on one thread (torch as the mpc suite and the issue's
table do; numpy's BLAS through threadpoolctl; TensorFlow's intra-op pool
where it is not initialized yet): on a shared 2-core box a second BLAS
thread spins against other processes and turns 0.03 ms GEMMs into 40 ms
ones. `machine` records what each library got. The box may be shared with
other processes: `load_1min_before` records the load, and ratios come from
interleaved rounds in one process.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from benchmarks.rows import row

SUITE = "kernels"
MATMUL_SHAPES = ((64, 784, 128), (128, 784, 128), (64, 128, 128), (512, 512, 512))
#: (input NHWC, kernel HWIO, strides, padding): the LeNet convolutions and a 3-channel one.
CONV_CASES = (
    ((64, 28, 28, 1), (5, 5, 1, 6), 1, "VALID"),
    ((64, 12, 12, 6), (5, 5, 6, 16), 1, "VALID"),
    ((16, 28, 28, 3), (3, 3, 3, 16), 1, "SAME"),
)
#: numpy's int64 loop at 512^3 takes most of a second per call: fewer rounds there.
SLOW = {("numpy", "native", (512, 512, 512))}


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each function per round, the functions taking turns within each round."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def _time_rows(
    case_prefix: str,
    runs: dict[str, Callable],
    baseline: Callable,
    rounds: int,
    baseline_case: str,
    **extra,
) -> list[dict]:
    """One "time" row per run: median ms, the baseline's median, median per-round ratio."""
    samples = _interleaved({**runs, "__baseline__": baseline}, rounds)
    base = samples.pop("__baseline__")
    rows = []
    for name, values in samples.items():
        ratios = [v / b for v, b in zip(values, base)]
        r = row(
            SUITE,
            f"{case_prefix}/{name}",
            "time",
            1e3 * statistics.median(values),
            "ms",
            baseline=1e3 * statistics.median(base),
            baseline_case=baseline_case,
            best_ms=1e3 * min(values),
            rounds=len(values),
            **extra,
        )
        r["ratio"] = statistics.median(ratios)
        rows.append(r)
    return rows


def _route_fields(choice) -> dict:
    return {
        "route": str(choice),
        "route_source": choice.source,
        "route_reason": choice.reason,
        "route_timings_ms": choice.timings_ms,
    }


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


def _float_conv(library: str, x: np.ndarray, kernel: np.ndarray, strides: int, padding: str):
    """A zero-argument float64 convolution (NHWC, HWIO) in `library`."""
    if library == "torch":
        import torch

        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tk = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        pad = padding.lower()
        return lambda: torch.nn.functional.conv2d(tx, tk, stride=strides, padding=pad)
    if library == "tensorflow":
        import tensorflow as tf

        tx, tk = tf.constant(x), tf.constant(kernel)
        return lambda: tf.nn.conv2d(tx, tk, strides, padding)
    from privkeras.core.kernels import get_kernels

    numpy_kernels = get_kernels("numpy")

    def im2col_conv():  # what numpy users do: patches, then one BLAS GEMM
        n, c_out = x.shape[0], kernel.shape[-1]
        patches = numpy_kernels.extract_patches(x, kernel.shape[:2], (strides,) * 2, padding)
        cols = patches.reshape(-1, kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
        return (cols @ kernel.reshape(cols.shape[1], c_out)).reshape(n, *patches.shape[1:3], c_out)

    return im2col_conv


def _read_only(tensor, library: str):
    if library == "numpy":
        tensor.flags.writeable = False
    return tensor


def _matmul_rows(rounds: int) -> list[dict]:
    from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels
    from privkeras.core.random import SecureStream

    rows = []
    stream = SecureStream(seed=0)
    for m, k, n in MATMUL_SHAPES:
        shape = f"{m}x{k}x{n}"
        a, b = stream.ring((m, k)), stream.ring((k, n))
        fa, fb = stream.gaussian((m, k)), stream.gaussian((k, n))
        for library in KERNEL_LIBRARIES:
            auto = get_kernels(library)
            ta, tb = auto.from_numpy(a), auto.from_numpy(b)
            choice = auto.matmul_route(ta, tb)
            runs = {"auto": lambda auto=auto, ta=ta, tb=tb: auto.matmul(ta, tb)}
            for route in auto.matmul_candidates(ta, tb):
                kernels = get_kernels(library, matmul_method=route)

                def split_every_call(kernels=kernels, ta=ta, tb=tb):
                    kernels.prepared.clear()  # nothing kept: both operands split in the call
                    return kernels.matmul(ta, tb)

                runs[route] = split_every_call
                if route == "limbs":
                    kept = _read_only(kernels.from_numpy(b), library)
                    kernels.prepare(kept)
                    runs["limbs (weights kept)"] = lambda kernels=kernels, ta=ta, kept=kept: (
                        kernels.matmul(ta, kept)
                    )
            slow = any((library, r, (m, k, n)) in SLOW for r in runs)
            rows += _time_rows(
                f"ring matmul {shape} {library}",
                runs,
                _float_matmul(library, fa, fb),
                max(3, rounds // 3) if slow else rounds,
                f"float64 matmul {shape} {library}",
                **_route_fields(choice),
            )
    return rows


def _conv_rows(rounds: int) -> list[dict]:
    from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels
    from privkeras.core.random import SecureStream

    stream = SecureStream(seed=1)
    rows = []
    for x_shape, k_shape, strides, padding in CONV_CASES:
        x, kernel = stream.ring(x_shape), stream.ring(k_shape)
        fx, fk = stream.gaussian(x_shape), stream.gaussian(k_shape)
        case = f"{'x'.join(map(str, x_shape))} * {'x'.join(map(str, k_shape))} {padding}"
        for library in KERNEL_LIBRARIES:
            auto = get_kernels(library)
            tx, tk = auto.from_numpy(x), _read_only(auto.from_numpy(kernel), library)
            auto.prepare(tk)
            choice = auto.conv2d_route(tx, tk, strides, padding)
            runs = {"auto": partial(auto.conv2d, tx, tk, strides, padding)}
            for route in auto.conv2d_candidates(tx, tk):
                kernels = get_kernels(library, matmul_method=route)
                kept = _read_only(kernels.from_numpy(kernel), library)
                kernels.prepare(kept)
                runs[route] = partial(kernels.conv2d, tx, kept, strides, padding)
            rows += _time_rows(
                f"ring conv2d {case} {library}",
                runs,
                _float_conv(library, fx, fk, strides, padding),
                max(3, rounds // 3) if library == "numpy" else rounds,
                f"float64 conv2d {case} {library}",
                **_route_fields(choice),
            )
    return rows


def _decision_rows() -> list[dict]:
    from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels

    rows = []
    for library in KERNEL_LIBRARIES:
        table = get_kernels(library).routes
        rows.append(
            row(
                SUITE,
                f"auto decision cost {library}",
                "time",
                table.seconds_measuring,
                "s",
                decisions=len(table.decisions()),
            )
        )
    return rows


def _stream_rows(quick: bool, rounds: int) -> list[dict]:
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
        samples = _interleaved({"secure": secure, "plain": plain}, rounds)
        median, base = statistics.median(samples["secure"]), statistics.median(samples["plain"])
        rows.append(
            row(
                SUITE,
                f"SecureStream.{kind}({size}) AES-CTR",
                "throughput",
                megabytes / median,
                "MB/s",
                baseline=megabytes / base,
                baseline_case=f"numpy PCG64 {kind} (not cryptographic)",
            )
        )
    return rows


def _one_thread_each() -> dict:
    """One compute thread per library, where it can still be set; what each got."""
    import tensorflow as tf
    import torch

    torch.set_num_threads(1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialized by an earlier suite
        pass
    blas = None
    try:
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        pass
    return {
        "torch_threads": torch.get_num_threads(),
        "tensorflow_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "numpy_blas_threads": 1 if blas is not None else "default",
        "_keep": blas,
    }


def _machine_row(threads: dict) -> dict:
    import tensorflow as tf
    import torch

    from privkeras.core.kernels.routes import cpu_info

    info = cpu_info()
    return row(
        SUITE,
        "machine",
        "cores",
        info["cores"],
        "cores",
        cpu_model=info["model"],
        vector_extensions=info["vector_extensions"],
        platform=platform.platform(),
        numpy=np.__version__,
        torch=torch.__version__,
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        tensorflow=tf.__version__,
        **{k: v for k, v in threads.items() if not k.startswith("_")},
        note="box shared with other processes; ratios from interleaved rounds in one process",
    )


def run(quick: bool) -> list[dict]:
    """All kernel rows; `quick` keeps the shapes and routes but times fewer rounds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    threads = _one_thread_each()
    rounds = 3 if quick else 11
    load_before = os.getloadavg()[0]  # other processes on the box stall multi-threaded BLAS
    rows = [_machine_row(threads), *_matmul_rows(rounds), *_conv_rows(rounds)]
    rows += [*_decision_rows(), *_stream_rows(quick, rounds)]
    if threads["_keep"] is not None:
        threads["_keep"].restore_original_limits()  # later suites get numpy's default again
    for r in rows:
        r["load_1min_before"] = round(load_before, 2)
    return rows
