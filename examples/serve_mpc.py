"""Serve an encrypted model with MPC: export once, answer many clients' private predictions.

A model owner trains a digits classifier in plaintext, then exports it with
`format="mpc"`: the weights are secret-shared among the compute parties of
the policy's protocol (ABY3: p0, p1, p2), one folder each, and a public
manifest. Each party serves its folder (`privkeras serve`, a separate
process: here on loopback with mutual TLS, started and stopped by
`pk.serving.local_servers`). Clients secret-share their rows to the
parties and add up the output shares the parties send back: no server ever
sees a row, an output, or the weights.

    python examples/serve_mpc.py

Across hosts, copy each party's folder (and only it) to its host and run

    privkeras certs certs --parties p0,p1,p2,client
    privkeras serve digits_mpc/p0 --listen 10.0.0.1:7100 --cluster cluster.json --certs certs
    privkeras serve digits_mpc/p1 --listen 10.0.0.2:7100 --cluster cluster.json --certs certs
    privkeras serve digits_mpc/p2 --listen 10.0.0.3:7100 --cluster cluster.json --certs certs

then, on a client: `PRIVKERAS_CERTS=certs` and
`pk.serving.connect("10.0.0.1:7100").predict(x)` (see docs/serving.md).
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

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def main() -> None:
    data = datasets.digits()
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=10, batch_size=32, verbose=0)
    plain = model.predict(data.x_test, verbose=0)
    print(f"plaintext test accuracy: {np.mean(plain.argmax(1) == data.y_test):.3f}")

    model.compile(loss=LOSS, privacy=pk.MPC(protocol="aby3"))
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "digits_mpc"
        manifest = model.export(str(bundle), format="mpc")  # one folder per compute party
        print(f"exported {sorted(manifest.data['files'])} (+ manifest.json in each folder)")

        with pk.serving.local_servers(bundle, tls=True) as servers:
            print(f"servers (pids {servers.pids}) at {servers.addresses}")
            with pk.serving.connect(servers.address) as client:
                start = time.perf_counter()
                served = client.predict(data.x_test)
                print(
                    f"{len(data.x_test)} private predictions in {time.perf_counter() - start:.2f} s: "
                    f"accuracy {np.mean(served.argmax(1) == data.y_test):.3f}, "
                    f"max difference to plaintext {np.abs(served - plain).max():.1e}"
                )
                one = client.predict(data.x_test[0])
                print(f"one row: class {one.argmax()} (label {data.y_test[0]})")

            # Many clients at once: the front party batches their requests into shared jobs.
            def one_client(k: int) -> None:
                with servers.connect() as other:
                    for r in range(5):
                        other.predict(data.x_test[10 * k + r])

            before = servers.stats()
            threads = [threading.Thread(target=one_client, args=(k,)) for k in range(20)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            after = servers.stats()
            requests, batches = (after[k] - before[k] for k in ("requests", "batches"))
            print(
                f"20 clients x 5 one-row requests in {time.perf_counter() - start:.2f} s: "
                f"{requests} requests in {batches} jobs (largest {after['largest']})"
            )
            for role in servers.manifest.roles:
                reveals = servers.stats(role)["reveals"]
                print(
                    f"  {role} revealed only {sorted({(w, t.split('/')[0]) for w, t, _ in reveals})}"
                )


if __name__ == "__main__":
    main()
