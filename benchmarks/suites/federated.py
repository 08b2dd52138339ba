"""Federated training: seconds per round and bytes per owner, on workers and simulated owners.

The task of issue 10: the Digits MLP 64-32-10 (2,410 float32 weights, 9,640
bytes), scikit-learn's digits split 80/20 (stratified, seed 0), the 1,437
training rows split evenly among the owners, FedAvg, 10 rounds of 1 local
epoch, local SGD (learning rate 0.1, batch 32). Rows:

- `loopback N owners` / `s/round`: N `privkeras worker` processes on
  127.0.0.1 (mutual TLS, `pk.federated.local_owners`), the median of rounds
  2-10 (round 1 traces the local train step) over every repetition.
  `baseline`: the same rounds with N simulated owners in this process
  (`FederatedData.simulate`), the two alternating repetition by repetition.
  Target (issue 10): <= 0.5 s for 4 and 10 owners.
- `loopback N owners` / `wire bytes down|up per owner per round`: TCP payload
  bytes (TLS records: TLS, HTTP/2, gRPC, privkeras frames and our message)
  on each worker's connections, read from the kernel (`ss -ti`:
  `bytes_received`, `bytes_sent`) at each round's start and end, median over
  owners and rounds. `baseline`: the float32 model (9,640 bytes), so `ratio`
  is the overhead (target: <= 1.2x each way). `message bytes` rows are our
  message alone, as the in-process transport counts it.
- `simulated N owners` / `s/round`: the in-process rounds; `baseline`: one
  epoch of centralised Keras `fit` on all training rows (same model and
  batch size), timed in this process. Flower 1.42's Ray simulation took
  0.21 s a round on the 4-client task (issue 10; not re-measured here).
- `... accuracy after 10 rounds`: test accuracy of the federated model;
  `baseline`: centralised Keras trained 10 epochs from the same initial
  weights.
- `simulated scaling N owners` / `s/round` for 10, 100 and 1,000 owners
  (`--quick`: 10 and 100), and `ms per owner`; `baseline`: 10 owners.

Secure aggregation (issue 11; `Federated(secure_aggregation=True)`, SecAgg+):

- `loopback N owners secure aggregation` / `s/round`: the same rounds on the
  same workers with secure aggregation, alternating fit by fit with the
  plain loopback rounds; `baseline`: those plain rounds (same run), and
  `added_s` the difference (target: <= 0.5 s for 10 owners). `wire bytes
  up|down` and `message bytes up|down` per owner per round against the plain
  rounds' (target: <= 1.3x up). `stage seconds STAGE` and `message bytes
  up|down STAGE` split a round: `advertise_keys` (key exchange),
  `share_keys` (shares), `train + masked_input` (local training, the weights
  down and the masked update up), `unmasking`. Round 1 (which also carries
  the job and each owner's and its neighbours' certificates) is not timed.
- `loopback 4 owners secure aggregation, MLP 64-64-10`: the issue's Flower
  task (4,810 weights, 19,240 bytes as float32): wire bytes up and down per
  owner per round against the float32 model (Flower's SecAgg+: 42.9 KB up,
  2.2x, measured for issue 11; not re-measured here).
- `simulated scaling N owners secure aggregation` for 10, 100 and 1,000
  owners (`--quick`: 10 and 100): seconds per round, ms per owner, and the
  message bytes each owner sends and receives (exact; they grow with the
  neighbour degree k = O(log n), not with n); `baseline`: 10 owners.

The box is shared with other engineers' processes: `load_1min_before`
records the load average when the suite started; seconds are noisy, bytes
are exact. Flower is not installed here; the comparison is with the numbers
measured for issue 10.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time

from benchmarks.rows import cpu, row

SUITE = "federated"
MODEL_BYTES = 4 * (64 * 32 + 32 + 32 * 10 + 10)
FLOWER_SIMULATION_S = 0.21
ROUNDS, LR, BATCH = 10, 0.1, 32


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def _split(x, y, owners: int):
    return [(x[i::owners], y[i::owners]) for i in range(owners)]


def _model(owners: int, init=None, rounds: int = ROUNDS, secure=False, hidden=32):
    import keras

    import privkeras as pk

    keras.utils.set_random_seed(0)
    model = pk.PrivateSequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    if init is not None:
        model.set_weights(init)
    policy = pk.Federated(
        rounds=rounds,
        local_epochs=1,
        min_owners=owners,
        timeout=600.0,
        secure_aggregation=secure,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=policy,
    )
    return model


def _socket_bytes(port: str) -> tuple[int, int]:
    """(bytes received, bytes sent) on established TCP connections whose local port is `port`."""
    out = subprocess.run(
        ["ss", "-tin", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    received = sum(int(v) for v in re.findall(r"bytes_received:(\d+)", out))
    sent = sum(int(v) for v in re.findall(r"bytes_sent:(\d+)", out))
    return received, sent


def _wire_meter(cluster):
    """A Keras callback recording each worker's socket bytes per round."""
    import keras

    ports = {name: address.rsplit(":", 1)[1] for name, address in cluster.addresses.items()}

    class WireMeter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.down, self.up, self._start = [], [], {}

        def on_epoch_begin(self, epoch, logs=None):
            self._start = {name: _socket_bytes(port) for name, port in ports.items()}

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                return  # round 1 also carries the job (model config) and warm-up
            for name, port in ports.items():
                received, sent = _socket_bytes(port)
                self.down.append(received - self._start[name][0])
                self.up.append(sent - self._start[name][1])

    return WireMeter()


def _fit(model, data, callbacks=()):
    model.fit(data, batch_size=BATCH, verbose=0, callbacks=list(callbacks))
    log = model.privacy_report()["round_log"][1:]
    seconds = [r["seconds"] for r in log]
    down = [v for r in log for v in r["bytes_down"].values()]
    up = [v for r in log for v in r["bytes_up"].values()]
    return seconds, down, up


def _accuracy(model, x, y) -> float:
    return float(model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"])


def _centralised(x, y, x_test, y_test, init) -> tuple[float, float]:
    """(seconds per epoch, test accuracy after ROUNDS epochs) of plain Keras."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.set_weights(init)
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # warm-up (traces the step)
    model.set_weights(init)
    model.optimizer.iterations.assign(0)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=BATCH, epochs=ROUNDS, verbose=0, callbacks=[Timer()])
    return statistics.median(times), _accuracy(model, x_test, y_test)


def _round_rows(owners: int, repeats: int, data, notes: dict) -> list[dict]:
    import privkeras as pk

    x, x_test, y, y_test = data
    parts = _split(x, y, owners)
    init = _model(owners).get_weights()
    samples = {"loopback": [], "simulated": []}
    wire = {"down": [], "up": []}
    message = {"down": [], "up": []}
    accuracy = {}
    secure = _SecureSamples()
    with pk.federated.local_owners(parts) as cluster:
        remote = pk.FederatedData(cluster.owners)
        for _ in range(repeats):
            simulated_model = _model(owners, init)
            seconds, _, _ = _fit(simulated_model, pk.FederatedData.simulate(parts))
            samples["simulated"].extend(seconds)
            accuracy["simulated"] = _accuracy(simulated_model, x_test, y_test)
            meter = _wire_meter(cluster)
            loopback_model = _model(owners, init)
            seconds, down, up = _fit(loopback_model, remote, [meter])
            samples["loopback"].extend(seconds)
            wire["down"].extend(meter.down)
            wire["up"].extend(meter.up)
            message["down"].extend(down)
            message["up"].extend(up)
            accuracy["loopback"] = _accuracy(loopback_model, x_test, y_test)
            secure.measure(_model(owners, init, secure=True), remote, cluster, (x_test, y_test))
        if owners == 4:
            flower = _flower_task_rows(remote, cluster, notes)
        remote.close()
    central_epoch, central_accuracy = _centralised(x, y, x_test, y_test, init)
    simulated = statistics.median(samples["simulated"])
    extra = {"owners": owners, "rounds_timed": len(samples["loopback"]), **notes}
    rows = [
        row(SUITE, f"loopback {owners} owners", "s/round",
            statistics.median(samples["loopback"]), "s", simulated, target=0.5, **extra),
        row(SUITE, f"simulated {owners} owners", "s/round", simulated, "s", central_epoch,
            baseline_is="centralised Keras epoch", flower_simulation_s=FLOWER_SIMULATION_S,
            **extra),
    ]  # fmt: skip
    for direction in ("down", "up"):
        rows.append(
            row(SUITE, f"loopback {owners} owners", f"wire bytes {direction}/owner/round",
                statistics.median(wire[direction]), "B", MODEL_BYTES, target_ratio=1.2, **extra)
        )  # fmt: skip
        rows.append(
            row(SUITE, f"loopback {owners} owners", f"message bytes {direction}/owner/round",
                statistics.median(message[direction]), "B", MODEL_BYTES, **extra)
        )  # fmt: skip
    for mode in ("loopback", "simulated"):
        rows.append(
            row(SUITE, f"{mode} {owners} owners", f"test accuracy after {ROUNDS} rounds",
                accuracy[mode], "", central_accuracy,
                baseline_is=f"centralised Keras, {ROUNDS} epochs", **extra)
        )  # fmt: skip
    plain = {
        "s/round": statistics.median(samples["loopback"]),
        "wire": {d: statistics.median(wire[d]) for d in wire},
        "message": {d: statistics.median(message[d]) for d in message},
        "accuracy": accuracy["loopback"],
    }
    rows.extend(secure.rows(owners, plain, extra))
    if owners == 4:
        rows.extend(flower)
    return rows


class _SecureSamples:
    """Secure-aggregation fits on the same workers, alternating with the plain ones."""

    def __init__(self):
        self.seconds, self.stages = [], []
        self.wire = {"down": [], "up": []}
        self.message = {"down": [], "up": []}
        self.accuracy = None

    def measure(self, model, remote, cluster, test) -> None:
        meter = _wire_meter(cluster)
        seconds, down, up = _fit(model, remote, [meter])
        self.seconds.extend(seconds)
        self.wire["down"].extend(meter.down)
        self.wire["up"].extend(meter.up)
        self.message["down"].extend(down)
        self.message["up"].extend(up)
        self.stages.extend(model.privacy_report()["round_log"][1:])
        self.accuracy = _accuracy(model, *test)

    def _split(self) -> dict[str, dict[str, float]]:
        """Median seconds and per-owner message bytes of each stage over the timed rounds."""
        split: dict[str, dict[str, list[float]]] = {}
        for log in self.stages:
            stages = log["aggregation"]["stages"]
            spent = {"seconds": 0.0, "up": {}, "down": {}}
            for stage in ("advertise_keys", "share_keys", "unmasking"):
                entry = split.setdefault(stage, {"seconds": [], "up": [], "down": []})
                entry["seconds"].append(stages[stage]["seconds"])
                spent["seconds"] += stages[stage]["seconds"]
                for direction in ("up", "down"):
                    values = stages[stage][f"bytes_{direction}"]
                    entry[direction].extend(values.values())
                    for name, value in values.items():
                        spent[direction][name] = spent[direction].get(name, 0) + value
            entry = split.setdefault("train + masked_input", {"seconds": [], "up": [], "down": []})
            entry["seconds"].append(log["seconds"] - spent["seconds"])
            for direction in ("up", "down"):
                for name, value in log[f"bytes_{direction}"].items():
                    entry[direction].append(value - spent[direction].get(name, 0))
        return {s: {k: statistics.median(v) for k, v in e.items()} for s, e in split.items()}

    def rows(self, owners: int, plain: dict, extra: dict) -> list[dict]:
        case = f"loopback {owners} owners secure aggregation"
        seconds = statistics.median(self.seconds)
        rows = [
            row(SUITE, case, "s/round", seconds, "s", plain["s/round"],
                added_s=seconds - plain["s/round"], target_added_s=0.5,
                baseline_is="plain loopback rounds, same run, alternating fits", **extra),
        ]  # fmt: skip
        for direction in ("up", "down"):
            rows.append(
                row(SUITE, case, f"wire bytes {direction}/owner/round",
                    statistics.median(self.wire[direction]), "B", plain["wire"][direction],
                    baseline_is="plain loopback rounds, same run",
                    target_ratio=1.3 if direction == "up" else None,
                    float32_model_bytes=MODEL_BYTES, **extra)
            )  # fmt: skip
            rows.append(
                row(SUITE, case, f"message bytes {direction}/owner/round",
                    statistics.median(self.message[direction]), "B",
                    plain["message"][direction], baseline_is="plain loopback rounds, same run",
                    **extra)
            )  # fmt: skip
        for stage, values in self._split().items():
            rows.append(
                row(SUITE, case, f"stage seconds {stage}", values["seconds"], "s",
                    seconds, baseline_is="the whole secure round", stage=stage, **extra)
            )  # fmt: skip
            for direction in ("up", "down"):
                rows.append(
                    row(SUITE, case, f"message bytes {direction} {stage}", values[direction],
                        "B", None, stage=stage, **extra)
                )  # fmt: skip
        rows.append(
            row(SUITE, case, f"test accuracy after {ROUNDS} rounds", self.accuracy, "",
                plain["accuracy"], baseline_is="plain loopback rounds", **extra)
        )  # fmt: skip
        return rows


FLOWER_MODEL_BYTES = 4 * (64 * 64 + 64 + 64 * 10 + 10)
FLOWER_SECAGG_UP = 42_900


def _flower_task_rows(remote, cluster, notes: dict) -> list[dict]:
    """The issue's Flower comparison task: MLP 64-64-10 (4,810 weights), 4 owners."""
    wire = {}
    for secure in (False, True):
        meter = _wire_meter(cluster)
        _fit(_model(4, secure=secure, hidden=64), remote, [meter])
        wire[secure] = {"up": statistics.median(meter.up), "down": statistics.median(meter.down)}
    case = "loopback 4 owners secure aggregation, MLP 64-64-10"
    return [
        row(SUITE, case, f"wire bytes {direction}/owner/round", wire[True][direction], "B",
            FLOWER_MODEL_BYTES, baseline_is="the float32 model (19,240 B)",
            plain_wire_bytes=wire[False][direction],
            flower_secagg_bytes_up=FLOWER_SECAGG_UP if direction == "up" else None,
            target_ratio=1.3 if direction == "up" else None, owners=4, **notes)
        for direction in ("up", "down")
    ]  # fmt: skip


def _secure_scaling_rows(counts, data, notes: dict) -> list[dict]:
    """Simulated secure rounds: per-owner seconds and bytes as the number of owners grows."""
    import privkeras as pk

    x, _, y, _ = data
    results = {}
    for owners in counts:
        rounds = 2 if owners >= 1000 else 4  # round 1 (certificates, tracing) is not timed
        model = _model(owners, rounds=rounds, secure=True)
        model.fit(pk.FederatedData.simulate(_split(x, y, owners)), batch_size=BATCH, verbose=0)
        logs = model.privacy_report()["round_log"][1:]
        results[owners] = {
            "seconds": statistics.median(log["seconds"] for log in logs),
            "up": statistics.median(logs[-1]["bytes_up"].values()),
            "down": statistics.median(logs[-1]["bytes_down"].values()),
            "k": logs[-1]["aggregation"]["neighbours"],
            "rounds_timed": len(logs),
        }
    base = results[counts[0]]
    rows = []
    for owners, result in results.items():
        case = f"simulated scaling {owners} owners secure aggregation"
        extra = {
            "owners": owners,
            "neighbours": result["k"],
            "rounds_timed": result["rounds_timed"],
        }
        extra.update(notes)
        rows += [
            row(SUITE, case, "s/round", result["seconds"], "s", base["seconds"], **extra),
            row(SUITE, case, "ms per owner", 1e3 * result["seconds"] / owners, "ms",
                1e3 * base["seconds"] / counts[0], **extra),
            row(SUITE, case, "message bytes up/owner/round", result["up"], "B", base["up"],
                float32_model_bytes=MODEL_BYTES, **extra),
            row(SUITE, case, "message bytes down/owner/round", result["down"], "B",
                base["down"], **extra),
        ]  # fmt: skip
    return rows


def _scaling_rows(counts, rounds: int, data, notes: dict) -> list[dict]:
    import privkeras as pk

    x, _, y, _ = data
    results = {}
    for owners in counts:
        model = _model(owners, rounds=rounds + 1)  # round 1 (tracing) is not timed
        seconds, _, _ = _fit(model, pk.FederatedData.simulate(_split(x, y, owners)))
        results[owners] = statistics.median(seconds)
    base = results[counts[0]]
    rows = []
    for owners, seconds in results.items():
        extra = {"owners": owners, "rows_per_owner": len(x) / owners, **notes}
        rows.append(row(SUITE, f"simulated scaling {owners} owners", "s/round", seconds, "s",
                        base, **extra))  # fmt: skip
        rows.append(row(SUITE, f"simulated scaling {owners} owners", "ms per owner",
                        1e3 * seconds / owners, "ms", 1e3 * base / counts[0], **extra))  # fmt: skip
    return rows


def run(quick: bool = False) -> list[dict]:
    notes = {
        "cpu": cpu(),
        "load_1min_before": round(os.getloadavg()[0], 2),
        "shared_box": True,
    }
    data = _digits()
    rows = []
    for owners in (4, 10):
        rows.extend(_round_rows(owners, 1 if quick else 3, data, notes))
    rows.extend(_scaling_rows((10, 100) if quick else (10, 100, 1000), 2 if quick else 3,
                              data, notes))  # fmt: skip
    rows.extend(_secure_scaling_rows((10, 100) if quick else (10, 100, 1000), data, notes))
    return rows
