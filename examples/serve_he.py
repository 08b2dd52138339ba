"""Serve an encrypted model with HE (CKKS): the server computes on ciphertexts it cannot read.

A model owner trains an HE-friendly digits CNN in plaintext (a square where
a ReLU would be, average pooling), then exports it with `format="he"`: the
server bundle (weights, CKKS parameters, packings; no key) and the client
spec. The server is a separate process (`privkeras serve`, here on
loopback with mutual TLS, started and stopped by `pk.serving.local_servers`).
A client makes its own keys when it connects, registers its public context
once, encrypts its rows and decrypts the outputs: the secret key never
leaves it. Its concurrent calls share encrypted groups (SIMD slots).

    python examples/serve_he.py

On a server host: `privkeras serve digits_he --listen 10.0.0.4:7200 --certs certs`;
on a client: `pk.serving.connect("10.0.0.4:7200").predict(x)` (docs/serving.md).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets
from privkeras.layers import PolynomialActivation

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def main() -> None:
    data = datasets.digits(images=True)
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3),
            PolynomialActivation("square"),  # CKKS only adds and multiplies
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=15, batch_size=32, verbose=0)
    plain = model.predict(data.x_test, verbose=0)
    print(f"plaintext test accuracy: {np.mean(plain.argmax(1) == data.y_test):.3f}")

    model.compile(loss=LOSS, privacy="he")
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "digits_he"
        manifest = model.export(str(bundle), format="he")  # no key of any kind in it
        he = manifest.data["he"]
        print(
            f"exported {sorted(manifest.data['files'])}: N={he['parameters']['poly_modulus_degree']}, "
            f"depth {he['depth']}, packings of {[p['block'] for p in he['packings']]} rows"
        )
        with pk.serving.local_servers(bundle, tls=True) as servers:
            print(f"server (pid {servers.pids['server']}) at {servers.address}")
            start = time.perf_counter()
            client = pk.serving.connect(servers.address)  # makes the keys, registers once
            print(
                f"connected in {time.perf_counter() - start:.1f} s (keys made here, public part sent)"
            )
            x = data.x_test[:256]
            start = time.perf_counter()
            served = client.predict(x)
            print(
                f"{len(x)} encrypted predictions in {time.perf_counter() - start:.2f} s: argmax "
                f"agreement with plaintext {np.mean(served.argmax(1) == plain[:256].argmax(1)):.3f}"
            )
            answers = {}

            def caller(k: int) -> None:
                answers[k] = client.predict(x[k])  # one row each, at the same time

            before = servers.stats()
            threads = [threading.Thread(target=caller, args=(k,)) for k in range(32)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            after = servers.stats()
            print(
                f"32 concurrent one-row calls in {time.perf_counter() - start:.2f} s, sent as "
                f"{after['requests'] - before['requests']} encrypted groups; the server holds a "
                f"secret key: {after['holds_secret_key']}"
            )
            client.close()


if __name__ == "__main__":
    main()
