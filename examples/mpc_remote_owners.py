"""The seed scenario, for real: a model owner, Alice and Bob, three kinds of process.

Alice and Bob each run a `privkeras worker` that holds their own patient rows
(here: two halves of scikit-learn's breast-cancer data). The compute parties
(Pond: p0, p1 and a dealer) are `privkeras party` processes. This script is
the model owner: it compiles the model with `pk.MPC(parties=...)` and calls
`fit` on `pk.SharedData` of the two workers. Each worker secret-shares its
rows straight to the parties; the model owner never receives a row, and
receives only the combined update of the weights at the end.

Run: python examples/mpc_remote_owners.py
(the parties and workers start on loopback with development certificates and
stop at the end; across hosts, start them as docs/deployment.md shows)
"""

from __future__ import annotations

import time

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets


def main() -> None:
    data = datasets.breast_cancer()
    half = len(data.x_train) // 2
    owners = {
        "alice": (data.x_train[:half], data.y_train[:half]),
        "bob": (data.x_train[half:], data.y_train[half:]),
    }
    with pk.mpc.local_cluster("pond", owners=owners) as cluster:
        print(f"parties {cluster.parties}\nworkers {cluster.owners}")
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
            privacy=pk.MPC(protocol="pond", parties=cluster.parties),
        )
        start = time.perf_counter()
        model.fit(pk.SharedData(cluster.owners), epochs=5, batch_size=64, verbose=2)
        print(f"trained on Alice's and Bob's shares in {time.perf_counter() - start:.1f} s")
        for role, log in sorted(model.engine.last_report.reveal_logs.items()):
            print(f"  {role:>6} revealed: {sorted({(r.what.split()[0], r.to) for r in log})}")
    # The model owner checks its own model on its own held-out data, in plaintext.
    accuracy = float(np.mean((model(data.x_test).numpy()[:, 0] > 0.5) == data.y_test))
    print(f"model owner's test accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    main()
