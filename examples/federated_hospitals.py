"""Three hospitals train one model with DP-FedAvg; their patients' rows never leave them.

Each hospital runs its own `privkeras worker` (here three processes on this
machine, mutual TLS with development certificates, started and stopped by
`pk.federated.local_owners`). The coordinator compiles the model with
`privacy=pk.Federated(...)` and calls `fit` on the hospitals: each round
every hospital trains on its own rows from the global weights and sends back
only its update, clipped to `clip_norm`; the coordinator adds Gaussian noise
to the sum (DP-FedAvg) and the accountant reports the client-level epsilon
(what protects a whole hospital's contribution) after every round. Each
hospital also keeps its own privacy budget (`--max-epsilon`) and would
refuse a job that exceeds it.

With `--local-dp`, each hospital also trains with DP-SGD (record-level DP,
protecting each patient), and its own ledger reports that epsilon too.

Data: scikit-learn's breast cancer (no download), the 427 training rows
split unevenly between the hospitals (200, 150, 77).

Run:
    python examples/federated_hospitals.py              # three worker processes
    python examples/federated_hospitals.py --simulate   # the same rounds in this process
    python examples/federated_hospitals.py --local-dp   # plus record-level DP-SGD per hospital
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import warnings

import keras

import privkeras as pk
from privkeras import datasets

HOSPITALS = ["st-mary", "general", "riverside"]
ROUNDS, CLIP_NORM, NOISE, DELTA = 10, 0.5, 1.0, 1e-5
BUDGET = 30.0  # each hospital's own --max-epsilon


def hospitals_data():
    data = datasets.breast_cancer()
    bounds = [0, 200, 350, len(data.x_train)]
    parts = [
        (data.x_train[start:stop], data.y_train[start:stop])
        for start, stop in itertools.pairwise(bounds)
    ]
    return parts, data


def make_model(policy) -> pk.PrivateSequential:
    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=policy,
    )
    return model


def policy(local_dp: bool) -> pk.Federated:
    local = None
    if local_dp:
        local = pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0, delta=DELTA)
    return pk.Federated(
        rounds=ROUNDS,
        min_owners=2,  # a round goes on if one hospital drops out
        clip_norm=CLIP_NORM,
        noise_multiplier=NOISE,
        delta=DELTA,
        local_privacy=local,
    )


@contextlib.contextmanager
def hospitals(parts, simulate: bool):
    """The hospitals' `FederatedData`: worker processes (default) or simulated owners."""
    if simulate:
        yield pk.FederatedData.simulate(parts, names=HOSPITALS, max_epsilon=BUDGET, delta=DELTA)
        return
    with pk.federated.local_owners(
        parts, names=HOSPITALS, max_epsilon=BUDGET, delta=DELTA
    ) as cluster:
        print(f"hospital workers: {cluster.pids}")
        data = pk.FederatedData(cluster.owners)
        try:
            yield data
        finally:
            data.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="simulated owners, no processes")
    parser.add_argument("--local-dp", action="store_true", help="DP-SGD inside each hospital too")
    args = parser.parse_args()
    parts, data = hospitals_data()
    print("rows per hospital:", dict(zip(HOSPITALS, (len(x) for x, _ in parts))))
    model = make_model(policy(args.local_dp))
    with hospitals(parts, args.simulate) as owners, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DP-SGD's delta > 1/n advice for the smallest hospital
        history = model.fit(owners, batch_size=32, verbose=2)
        federated_logs = model.evaluate(owners, return_dict=True, verbose=0)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    report = model.privacy_report()
    print(f"\ntest accuracy after {ROUNDS} rounds: {accuracy:.3f}")
    print(f"loss on the hospitals' own rows (federated evaluation): {federated_logs['loss']:.3f}")
    print(
        f"client-level epsilon {report['epsilon']:.2f} at delta {DELTA:g} "
        f"(noise {report['noise_multiplier']:g} x clip {CLIP_NORM:g}, every hospital every "
        "round): it protects each hospital's whole contribution"
    )
    print("epsilon by round:", [round(e, 2) for e in history.history["epsilon"]])
    if report["record_epsilon"]:
        print(
            "record-level epsilon of each hospital's own DP-SGD (its ledger): "
            + ", ".join(f"{k} {v:.2f}" for k, v in report["record_epsilon"].items())
        )
    last = report["round_log"][-1]
    print(
        "bytes per hospital in the last round: "
        + ", ".join(
            f"{name} {last['bytes_down'][name]} down / {last['bytes_up'][name]} up"
            for name in last["cohort"]
        )
    )
    print(report["guarantee"])


if __name__ == "__main__":
    main()
