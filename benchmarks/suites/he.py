"""Encrypted (CKKS) inference through privkeras's HE engine, against TenSEAL in the same run.

Workloads (issue 5), trained in plaintext on scikit-learn digits:

- `mlp`: Dense 64-32, square, Dense 10;
- `cnn`: Conv2D(8, 3x3), square, AveragePooling2D(2), Flatten, Dense(10).

Rows per workload:

- `latency`: one sample on the single-sample path (`block=1`), milliseconds to
  encrypt, evaluate and decrypt; baseline: straightforward TenSEAL, one
  `CKKSVector` per sample, `mm` per layer (`conv2d_im2col` per filter for the
  CNN, after `im2col_encoding`), `square`. Target: total at most 1/4.
- `throughput b256`: samples per second for 256 samples, encrypt + evaluate
  + decrypt, with the packing the engine's cost model picks; baseline:
  TenSEAL's batched `CKKSTensor` path (`ckks_tensor(..., batch=True)`, `mm`,
  `square`; the CNN's patches made in plaintext by the client). Target: at
  least 2x. A feature-major row (one ciphertext per feature, no rotation)
  shows what the block packing adds.
- `throughput b4096` (MLP): a full batch, 4,096 rows in N/2 = 4,096 slots,
  encrypt + evaluate + decrypt, against TenSEAL's batched `CKKSTensor` path
  on the same rows, in interleaved rounds: `value` and `baseline` from the
  median times, `paired_ratio` the median of the per-round speed-ups (the
  robust one on a shared machine), every round's times kept. privkeras runs the way the engine does: the
  server's `plan` picks packing and workers, an `EvaluationPool` (started
  before timing; its executor chosen by measuring thread scaling) evaluates
  the groups while the client encrypts the next, ciphertexts crossing as
  bytes. Rows for each executor forced (`threads`, `processes`) and for one
  process show what the measurement chose between. Target: at least 2x.
- `sizes`: bytes of one input ciphertext as sent (seed-compressed), one
  output ciphertext, and the public context with its Galois keys; baselines:
  a TenSEAL `CKKSVector` ciphertext and TenSEAL's context with the Galois
  keys its `mm` needs (all powers of two).
- `accuracy`: argmax agreement with plaintext Keras on the test split and
  the largest logit error.

Every TenSEAL baseline uses the same CKKS modulus chain as the engine picks
(same ring, same number of primes) and TenSEAL's default thread count (one
per core, recorded as `tenseal_threads`); privkeras's latency and b256 rows
run in one process, its b4096 rows on the workers recorded as
`privkeras_workers` (plus the client in the main process). TenSEAL objects
are sized with SEAL's own serialization (TenSEAL's protobuf path crashes once
TensorFlow is loaded). Rows name the CPU (`cpu`); the project machine is
shared by the team, so only same-run ratios mean much.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.rows import cpu, row

SUITE = "he"
BATCH = 256
FULL_BATCH = 4096


def _seal_bytes(obj: Any) -> int:
    from privkeras.backends.he.wire import seal_to_bytes

    return len(seal_to_bytes(obj))


# -- models ------------------------------------------------------------------------------------
def _trained(kind: str, epochs: int):
    import keras

    from privkeras import datasets
    from privkeras.layers import PolynomialActivation

    keras.utils.set_random_seed(0)
    if kind == "mlp":
        data = datasets.digits()
        layers = [
            keras.Input((64,)),
            keras.layers.Dense(32),
            PolynomialActivation("square"),
            keras.layers.Dense(10),
        ]
    else:
        data = datasets.digits(images=True)
        layers = [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3),
            PolynomialActivation("square"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model, data


# -- TenSEAL baselines ---------------------------------------------------------------------------
class _TenSEALBaseline:
    """Straightforward TenSEAL code for the same model, on the engine's modulus chain."""

    def __init__(self, kind: str, model: Any, parameters: Any):
        import tenseal as ts

        self.kind = kind
        self.threads = os.cpu_count()  # TenSEAL's default (multiprocessing.cpu_count())
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            parameters.poly_modulus_degree,
            coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
            n_threads=self.threads,
        )
        self.context.global_scale = parameters.scale
        self.context.generate_galois_keys()
        weights = [w.astype(np.float64) for w in model.get_weights()]
        if kind == "mlp":
            self.w1, self.b1, self.w2, self.b2 = weights
        else:
            import keras

            from privkeras.backends.he.layers.linear import linear_map

            kernel, self.conv_bias = weights[0], weights[1]
            self.kernel = kernel[:, :, 0, :].reshape(9, -1)  # (3*3, filters)
            head = keras.Sequential([keras.Input((6, 6, 8)), *model.layers[2:]])
            matrix, self.head_bias, _ = linear_map(head, (6, 6, 8))
            self.head = matrix  # (10, 288) over features p * 8 + f

    def context_bytes(self) -> int:
        data = self.context.data
        return sum(
            _seal_bytes(k) for k in (data.public_key(), data.relin_keys(), data.galois_keys())
        )

    # one CKKSVector per sample
    def vector(self, x: np.ndarray) -> tuple[float, float, float, int]:
        import tenseal as ts

        t0 = time.perf_counter()
        if self.kind == "mlp":
            enc = ts.ckks_vector(self.context, x.reshape(-1).tolist())
            t1 = time.perf_counter()
            out = enc.mm(self.w1) + self.b1
            out.square_()
            out = out.mm(self.w2) + self.b2
        else:
            enc, windows = ts.im2col_encoding(self.context, x[:, :, 0].tolist(), 3, 3, 1)
            t1 = time.perf_counter()
            out = None
            for f in range(self.kernel.shape[1]):
                channel = enc.conv2d_im2col(self.kernel[:, f].reshape(3, 3).tolist(), windows)
                channel = channel + float(self.conv_bias[f])
                channel.square_()
                part = channel.mm(self.head[:, np.arange(36) * 8 + f].T)
                out = part if out is None else out + part
            out = out + self.head_bias
        t2 = time.perf_counter()
        out.decrypt()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, _seal_bytes(enc.ciphertext()[0])

    # CKKSTensor over a batch (one ciphertext per feature, the batch in the slots)
    def batched(self, x: np.ndarray) -> float:
        import tenseal as ts

        t0 = time.perf_counter()
        if self.kind == "mlp":
            enc = ts.ckks_tensor(self.context, x, batch=True).reshape([1, 64])
            out = enc.mm(self.w1) + self.b1.reshape(1, -1)
            out.square_()
            out = out.mm(self.w2) + self.b2.reshape(1, -1)
        else:
            patches = np.stack(
                [
                    x[:, i : i + 6, j : j + 6, 0].reshape(len(x), 36)
                    for i in range(3)
                    for j in range(3)
                ],
                axis=2,
            )
            enc = ts.ckks_tensor(self.context, patches, batch=True)  # (36, 9) per sample
            out = enc.mm(self.kernel) + np.tile(self.conv_bias, (36, 1))
            out.square_()
            out = out.reshape([1, 288]).mm(self.head.T) + self.head_bias.reshape(1, -1)
        out.decrypt()
        return time.perf_counter() - t0


# -- the engine ------------------------------------------------------------------------------------
def _phases(server: Any, client: Any, spec: Any, public: Any, x: np.ndarray):
    t0 = time.perf_counter()
    encrypted = client.encrypt(x, spec)
    t1 = time.perf_counter()
    outputs = server.evaluate(encrypted, public)
    t2 = time.perf_counter()
    y = client.decrypt(outputs, spec)
    t3 = time.perf_counter()
    return (t1 - t0, t2 - t1, t3 - t2), y, outputs


class _Workload:
    """One trained model, its server and client, and the TenSEAL baselines on the same chain."""

    def __init__(self, kind: str, quick: bool):
        from privkeras.backends.he import HEClient, HEServer

        self.kind, self.quick = kind, quick
        self.model, self.data = _trained(kind, epochs=4 if quick else 12)
        self.x = self.data.x_test.astype(np.float64)
        self.server = HEServer(self.model)
        self.params = self.server.parameters
        self.client = HEClient(self.params)
        self.baseline = _TenSEALBaseline(kind, self.model, self.params)
        self.extra = {
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.params.coeff_mod_bit_sizes),
            "tenseal_threads": self.baseline.threads,
            "cpu": cpu(),
        }

    def _row(
        self, case: str, metric: str, value: float, unit: str, baseline: float | None, **fields: Any
    ) -> dict[str, Any]:
        return row(
            SUITE, f"{self.kind} {case}", metric, value, unit, baseline, **fields, **self.extra
        )

    def _packed(self, **packing: Any):
        spec = self.server.packing(**packing)
        return spec, self.client.public_context(spec)

    def latency(self) -> list[dict[str, Any]]:
        """One sample on its own packing (block 1) vs one TenSEAL CKKSVector per sample."""
        spec, public = self._packed(block=1)
        _phases(self.server, self.client, spec, public, self.x[:1])  # encodes the weights once
        ours = np.median(
            [
                _phases(self.server, self.client, spec, public, self.x[i : i + 1])[0]
                for i in range(3 if self.quick else 10)
            ],
            axis=0,
        )
        self.vector_runs = [self.baseline.vector(self.x[i]) for i in range(1 if self.quick else 3)]
        theirs = np.median([r[:3] for r in self.vector_runs], axis=0)
        rows = [
            self._row("latency", f"{phase}_ms", 1e3 * mine, "ms", 1e3 * base)
            for phase, mine, base in zip(("encrypt", "evaluate", "decrypt"), ours, theirs)
        ]
        rows.append(
            self._row(
                "latency",
                "total_ms",
                1e3 * ours.sum(),
                "ms",
                1e3 * theirs.sum(),
                block=1,
                rotation_keys=len(spec.rotation_steps),
            )
        )
        self.latency_context = public
        return rows

    def throughput(self) -> list[dict[str, Any]]:
        """256 samples on the cost model's packing (and feature-major) vs TenSEAL batched."""
        batch = self.x[:BATCH]
        spec, public = self._packed(n_samples=BATCH)
        _phases(self.server, self.client, spec, public, batch)
        seconds = min(
            sum(_phases(self.server, self.client, spec, public, batch)[0])
            for _ in range(2 if self.quick else 5)
        )
        base = BATCH / min(self.baseline.batched(batch) for _ in range(1 if self.quick else 2))
        rows = [
            self._row(
                f"throughput b{BATCH}",
                "samples_per_s",
                BATCH / seconds,
                "1/s",
                base,
                block=spec.block,
                input_ciphertexts=spec.input_layout.n_ciphertexts,
            )
        ]
        if not self.quick:
            major, public_major = self._packed(block=self.params.slots)
            seconds = sum(_phases(self.server, self.client, major, public_major, batch)[0])
            rows.append(
                self._row(
                    f"throughput b{BATCH} feature-major",
                    "samples_per_s",
                    BATCH / seconds,
                    "1/s",
                    base,
                    block=self.params.slots,
                    input_ciphertexts=major.input_layout.n_ciphertexts,
                )
            )
        return rows

    def full_batch(self) -> list[dict[str, Any]]:
        """4,096 rows: the engine's route on an EvaluationPool vs TenSEAL batched, interleaved.

        The `auto` server plans every round as the engine does (cost model
        corrected by the times it measured, `HEServer.record`); the other
        rows force a route: each executor on the pool, or one process.
        """
        from privkeras.backends.he import HEServer
        from privkeras.backends.he.parallel import EvaluationPool

        rows_x = np.concatenate([self.data.x_train, self.data.x_test]).astype(np.float64)
        x = np.tile(rows_x, (FULL_BATCH // len(rows_x) + 1, 1))[:FULL_BATCH]
        pools = {name: EvaluationPool(executor=name) for name in ("auto", "threads", "processes")}
        try:
            for pool in pools.values():
                pool.start()
            runs = {
                "auto": self._full_batch_run(HEServer(self.model, pool=pools["auto"]), x, None),
                "threads": self._full_batch_run(
                    HEServer(self.model, pool=pools["threads"]), x, pools["threads"].workers
                ),
                "processes": self._full_batch_run(
                    HEServer(self.model, pool=pools["processes"]), x, pools["processes"].workers
                ),
                "one process": self._full_batch_run(HEServer(self.model), x, 1),
                "tenseal": lambda: _with_cpu(None, lambda: (self.baseline.batched(x), None)),
            }
            seconds = _interleaved(runs, rounds=2 if self.quick else 7)
            chosen = pools["auto"].describe()
        finally:
            for pool in pools.values():
                pool.close()
        base, _, base_cpu = seconds.pop("tenseal")
        return [
            self._full_batch_row(name, *seconds[name], base, base_cpu, chosen) for name in seconds
        ]

    def _full_batch_row(
        self,
        name: str,
        times: list[float],
        plans: list[Any],
        cpu: list[float],
        base: list[float],
        base_cpu: list[float],
        chosen: dict,
    ) -> dict[str, Any]:
        plan = collections.Counter(plans).most_common(1)[0][0]
        ran = (chosen["executor"] if name == "auto" else name) if plan.parallel else None
        return self._row(
            f"throughput b{FULL_BATCH}" + ("" if name == "auto" else f" {name}"),
            "samples_per_s",
            FULL_BATCH / statistics.median(times),
            "1/s",
            FULL_BATCH / statistics.median(base),
            paired_ratio=statistics.median(b / t for b, t in zip(base, times)),
            rounds=len(times),
            seconds=times,
            baseline_seconds=base,
            cpu_seconds=statistics.median(cpu),  # every process and thread it ran on
            baseline_cpu_seconds=statistics.median(base_cpu),
            routes=[f"block {p.block} x{p.groups} on {p.workers}" for p in plans],
            block=plan.block,
            groups=plan.groups,
            privkeras_workers=plan.workers,  # concurrent evaluations, main process included
            privkeras_processes=1 + (plan.workers - 1 if ran == "processes" else 0),
            privkeras_threads=plan.workers if ran == "threads" else 1,
            executor=ran or "in-process",
            thread_speedup_measured=chosen["thread_speedup"],
        )

    def _full_batch_run(self, server: Any, x: np.ndarray, workers: int | None):
        """A timed callable running `x` the engine's way: plan, run, record the time.

        `workers` forces a route; None lets the server choose, as the engine does.
        """
        from privkeras.backends.he import EncryptedBatch

        client = self.client

        def run(route: int | None = workers):
            return _with_cpu(server.pool, lambda: timed(route))

        def timed(route: int | None):
            plan = server.plan(len(x), workers=route)
            spec = server.packing(block=plan.block)
            public = client.public_context(spec)
            starts = range(0, len(x), spec.block)
            begin = time.perf_counter()
            if plan.parallel:
                groups = (
                    EncryptedBatch.from_bytes(
                        client.encrypt_to_bytes(x[s : s + spec.block], spec), public, load=False
                    )
                    for s in starts
                )
                outputs = server.evaluate_many(groups, public)
            else:
                outputs = (
                    server.evaluate(client.encrypt(x[s : s + spec.block], spec), public)
                    for s in starts
                )
            for out in outputs:
                client.decrypt(out, spec)
            seconds = time.perf_counter() - begin
            server.record(plan, seconds)
            return seconds, plan

        # Warm-up: encodes the weights, starts the workers, and measures each route once.
        for route in [workers] if workers is not None else [1, server.pool.workers]:
            timed(route)
        return run

    def sizes(self) -> list[dict[str, Any]]:
        """Bytes on the wire: one input and output ciphertext, the public contexts."""
        from privkeras.backends.he import EncryptedBatch
        from privkeras.backends.he.wire import seal_to_bytes

        batch = self.x[:BATCH]
        spec, public = self._packed(n_samples=BATCH)
        _, _, outputs = _phases(self.server, self.client, spec, public, batch)
        sent = self.client.encrypt_to_bytes(batch, spec)
        blob_sizes = [
            len(b) for b in EncryptedBatch.from_bytes(sent, public, load=False).serialized
        ]
        tenseal_context = self.baseline.context_bytes()
        return [
            self._row(
                "sizes",
                "input_ciphertext_bytes",
                float(np.mean(blob_sizes)),
                "B",
                self.vector_runs[0][3],
                input_ciphertexts_b256=len(blob_sizes),
                input_bytes_b256=len(sent),
            ),
            self._row(
                "sizes",
                "output_ciphertext_bytes",
                len(seal_to_bytes(outputs.ciphertexts[0])),
                "B",
                None,
                output_ciphertexts_b256=len(outputs.ciphertexts),
            ),
            self._row(
                "sizes",
                "public_context_bytes",
                len(public.to_bytes()),
                "B",
                tenseal_context,
                rotation_keys=len(spec.rotation_steps),
            ),
            self._row(
                "sizes",
                "public_context_bytes_latency",
                len(self.latency_context.to_bytes()),
                "B",
                tenseal_context,
                rotation_keys=len(self.latency_context.rotation_steps),
            ),
        ]

    def accuracy(self) -> list[dict[str, Any]]:
        """Argmax agreement and max logit error against plaintext Keras (the SIMD path)."""
        import keras

        x = self.x[:BATCH] if self.quick else self.x
        plain = keras.ops.convert_to_numpy(self.model(x.astype(np.float32)))
        spec, public = self._packed(n_samples=len(x))
        encrypted = np.concatenate(
            [
                _phases(self.server, self.client, spec, public, x[s : s + spec.block])[1]
                for s in range(0, len(x), spec.block)
            ]
        )
        labels = self.data.y_test[: len(x)]
        return [
            row(
                SUITE,
                f"{self.kind} accuracy",
                "argmax_agreement",
                float(np.mean(encrypted.argmax(1) == plain.argmax(1))),
                "fraction",
                None,
                rows=len(x),
                plaintext_accuracy=float(np.mean(plain.argmax(1) == labels)),
            ),
            row(
                SUITE,
                f"{self.kind} accuracy",
                "max_logit_error",
                float(np.abs(encrypted - plain).max()),
                "abs",
                None,
                rows=len(x),
            ),
        ]


def _worker_cpu_seconds(pool: Any) -> float:
    """CPU seconds used so far by a pool's worker processes (Linux /proc; 0 elsewhere)."""
    backend = getattr(pool, "_backend", None)
    total = 0.0
    for worker in getattr(backend, "workers", []) if hasattr(backend, "broken") else []:
        try:
            fields = Path(f"/proc/{worker.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _with_cpu(pool: Any, run: Any) -> tuple[float, Any, float]:
    """`run()`'s `(seconds, plan)` and the CPU seconds of this process and the pool's workers."""
    cpu = time.process_time() + _worker_cpu_seconds(pool)
    seconds, plan = run()
    return seconds, plan, time.process_time() + _worker_cpu_seconds(pool) - cpu


def _interleaved(runs: dict[str, Any], rounds: int) -> dict[str, tuple[list, list, list]]:
    """Each callable once per round, the order rotating every round.

    Returns `(seconds, plans, cpu seconds)` per name, one entry per round.
    """
    names = list(runs)
    results: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for store, value in zip(results[name], runs[name]()):
                store.append(value)
    return results


def _workload(kind: str, quick: bool) -> list[dict[str, Any]]:
    work = _Workload(kind, quick)
    full = work.full_batch() if kind == "mlp" else []
    return work.latency() + work.throughput() + full + work.sizes() + work.accuracy()


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark rows for both workloads (see the module docstring)."""
    return _workload("mlp", quick) + _workload("cnn", quick)
