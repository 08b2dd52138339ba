"""The same model, now across processes: a model owner and three compute parties (ABY3).

Two hospitals' patient rows and the model owner's weights are secret-shared to
three compute parties, each a separate `privkeras party` process talking gRPC
over mutual TLS. The parties train on shares only, then serve private
predictions. Nothing here but this process (the driver: the model owner, and
the hospitals' stand-in) ever holds a plaintext value; each party's reveal
log shows it revealed outputs only to their owners.

Run on one machine (the parties start on loopback, with development
certificates, and stop at the end):

    python examples/mpc_cluster.py

Across hosts: start `privkeras party --id p0 ...` on each host (see
docs/deployment.md), put their addresses in cluster.json, and run

    python examples/mpc_cluster.py --cluster cluster.json

with the driver's certificate in PRIVKERAS_CERTS (a `privkeras certs` folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets


def train_and_predict(parties: dict[str, str]) -> None:
    data = datasets.breast_cancer()
    split = 180
    hospitals = pk.SharedData(
        [
            (data.x_train[:split], data.y_train[:split]),
            (data.x_train[split:], data.y_train[split:]),
        ],
        owners=["hospital_a", "hospital_b"],
    )
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=pk.MPC(protocol="aby3", parties=parties),  # the one changed line
    )
    start = time.perf_counter()
    model.fit(hospitals, epochs=5, batch_size=64, verbose=2)
    print(f"encrypted training across processes: {time.perf_counter() - start:.1f} s")
    report = model.engine.last_report
    print(f"training job: {report.stats.rounds} rounds, {report.stats.bytes_sent / 1e6:.1f} MB")

    predictions = model.predict(data.x_test, batch_size=64, verbose=0)
    accuracy = float(np.mean((predictions[:, 0] > 0.5) == data.y_test))
    print(f"private inference accuracy on {len(data.x_test)} held-out patients: {accuracy:.3f}")
    for role, log in sorted(model.engine.last_report.reveal_logs.items()):
        print(f"  {role:>6} revealed: {sorted({(r.what, r.to) for r in log})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", help="cluster.json of running parties (default: start them)")
    args = parser.parse_args()
    if args.cluster:
        with open(args.cluster) as file:
            train_and_predict(json.load(file))
        return
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(pk.mpc.local_cluster("aby3", tls=True))
        print(f"parties (pids {cluster.pids}): {cluster.parties}")
        train_and_predict(cluster.parties)


if __name__ == "__main__":
    main()
