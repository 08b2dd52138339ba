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
- `sizes`: bytes of one input ciphertext as sent (seed-compressed), one
  output ciphertext, and the public context with its Galois keys; baselines:
  a TenSEAL `CKKSVector` ciphertext and TenSEAL's context with the Galois
  keys its `mm` needs (all powers of two).
- `accuracy`: argmax agreement with plaintext Keras on the test split and
  the largest logit error.

Every TenSEAL baseline uses the same CKKS modulus chain as the engine picks
(same ring, same number of primes), and TenSEAL's default thread count; the
engine runs on one thread. TenSEAL objects are sized with SEAL's own
serialization (TenSEAL's protobuf path crashes once TensorFlow is loaded).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from benchmarks.rows import row

SUITE = "he"
BATCH = 256


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
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            parameters.poly_modulus_degree,
            coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
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


def _workload(kind: str, quick: bool) -> list[dict[str, Any]]:
    import keras

    from privkeras.backends.he import HEClient, HEServer
    from privkeras.backends.he.wire import seal_to_bytes, unpack_message

    model, data = _trained(kind, epochs=4 if quick else 12)
    x_test = data.x_test.astype(np.float64)
    server = HEServer(model)
    params = server.parameters
    client = HEClient(params)
    baseline = _TenSEALBaseline(kind, model, params)
    extra = {
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "tenseal_threads": os.cpu_count(),
    }
    rows = []

    # latency: one sample, its own packing
    single = server.packing(block=1)
    public_single = client.public_context(single)
    _phases(server, client, single, public_single, x_test[:1])  # encodes the weights once
    repeats = 3 if quick else 10
    ours = np.median(
        [
            _phases(server, client, single, public_single, x_test[i : i + 1])[0]
            for i in range(repeats)
        ],
        axis=0,
    )
    theirs_runs = [baseline.vector(x_test[i]) for i in range(1 if quick else 3)]
    theirs = np.median([r[:3] for r in theirs_runs], axis=0)
    for phase, mine, base in zip(("encrypt", "evaluate", "decrypt"), ours, theirs):
        rows.append(
            row(SUITE, f"{kind} latency", f"{phase}_ms", 1e3 * mine, "ms", 1e3 * base, **extra)
        )
    rows.append(
        row(
            SUITE,
            f"{kind} latency",
            "total_ms",
            1e3 * ours.sum(),
            "ms",
            1e3 * theirs.sum(),
            block=1,
            rotation_keys=len(single.rotation_steps),
            **extra,
        )
    )

    # throughput: 256 samples, the packing the cost model picks
    batch = x_test[:BATCH]
    spec = server.packing(n_samples=BATCH)
    public = client.public_context(spec)
    _phases(server, client, spec, public, batch)
    seconds = min(
        sum(_phases(server, client, spec, public, batch)[0]) for _ in range(2 if quick else 5)
    )
    base_seconds = min(baseline.batched(batch) for _ in range(1 if quick else 2))
    rows.append(
        row(
            SUITE,
            f"{kind} throughput b{BATCH}",
            "samples_per_s",
            BATCH / seconds,
            "1/s",
            BATCH / base_seconds,
            block=spec.block,
            input_ciphertexts=spec.input_layout.n_ciphertexts,
            **extra,
        )
    )
    if not quick:
        major = server.packing(block=params.slots)
        public_major = client.public_context(major)
        major_seconds = sum(_phases(server, client, major, public_major, batch)[0])
        rows.append(
            row(
                SUITE,
                f"{kind} throughput b{BATCH} feature-major",
                "samples_per_s",
                BATCH / major_seconds,
                "1/s",
                BATCH / base_seconds,
                block=params.slots,
                input_ciphertexts=major.input_layout.n_ciphertexts,
                **extra,
            )
        )

    # sizes
    _, _, outputs = _phases(server, client, spec, public, batch)
    sent = client.encrypt_to_bytes(batch, spec)
    blob_sizes = unpack_message(sent, "ciphertexts")[0]["sizes"]
    rows.append(
        row(
            SUITE,
            f"{kind} sizes",
            "input_ciphertext_bytes",
            float(np.mean(blob_sizes)),
            "B",
            theirs_runs[0][3],
            input_ciphertexts_b256=len(blob_sizes),
            input_bytes_b256=len(sent),
            **extra,
        )
    )
    rows.append(
        row(
            SUITE,
            f"{kind} sizes",
            "output_ciphertext_bytes",
            len(seal_to_bytes(outputs.ciphertexts[0])),
            "B",
            None,
            output_ciphertexts_b256=len(outputs.ciphertexts),
            **extra,
        )
    )
    rows.append(
        row(
            SUITE,
            f"{kind} sizes",
            "public_context_bytes",
            len(public.to_bytes()),
            "B",
            baseline.context_bytes(),
            rotation_keys=len(spec.rotation_steps),
            **extra,
        )
    )
    rows.append(
        row(
            SUITE,
            f"{kind} sizes",
            "public_context_bytes_latency",
            len(public_single.to_bytes()),
            "B",
            baseline.context_bytes(),
            rotation_keys=len(single.rotation_steps),
            **extra,
        )
    )

    # accuracy on the test split (the SIMD path)
    rows_used = x_test[:BATCH] if quick else x_test
    plain = keras.ops.convert_to_numpy(model(rows_used.astype(np.float32)))
    spec_all = server.packing(n_samples=len(rows_used))
    public_all = client.public_context(spec_all)
    encrypted = np.concatenate(
        [
            _phases(server, client, spec_all, public_all, rows_used[s : s + spec_all.block])[1]
            for s in range(0, len(rows_used), spec_all.block)
        ]
    )
    agreement = float(np.mean(encrypted.argmax(1) == plain.argmax(1)))
    rows.append(
        row(
            SUITE,
            f"{kind} accuracy",
            "argmax_agreement",
            agreement,
            "fraction",
            None,
            rows=len(rows_used),
            plaintext_accuracy=float(np.mean(plain.argmax(1) == data.y_test[: len(plain)])),
        )
    )
    rows.append(
        row(
            SUITE,
            f"{kind} accuracy",
            "max_logit_error",
            float(np.abs(encrypted - plain).max()),
            "abs",
            None,
            rows=len(rows_used),
        )
    )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark rows for both workloads (see the module docstring)."""
    return _workload("mlp", quick) + _workload("cnn", quick)
