"""Shared pieces of the engine-level secure-aggregation tests (simulated owners).

`Spy` records what each owner contributed and what the secure aggregator
returned, so that a test can check the sum against the plain sum of the
contributions of the owners the aggregator says are in it (the oracle).
`StageOwner` wraps a simulated owner to fail at one stage of a round, or to
rewrite what it sends and receives (a misbehaving owner or coordinator).
"""

from __future__ import annotations

import keras
import numpy as np

import privkeras as pk
from privkeras.backends.federated.owner import OwnerService
from privkeras.backends.federated.protocol import OwnerProtocol
from privkeras.backends.federated.secagg.aggregation import SecAggPlusAggregator
from privkeras.errors import PartyError

from .conftest import CLASSES, FEATURES

#: The aggregation message each stage sends (the masked input travels with `train`).
MESSAGE_OF = {"advertise_keys": "advertise_keys", "share_keys": "share_keys", "unmasking": "unmask"}


class Spy:
    """Records owners' contribution vectors and the secure aggregator's sums."""

    def __init__(self, monkeypatch):
        self.contributions: dict[tuple[int, str], np.ndarray] = {}
        self.sums: list[dict] = []
        self.payloads: list[dict] = []
        spy = self
        contribution = OwnerService._contribution
        total = SecAggPlusAggregator.sum

        def recording_contribution(service, job, update, fields):
            vector = contribution(service, job, update, fields)
            spy.contributions[(int(fields["round"]), service.name)] = vector.copy()
            return vector

        def recording_sum(aggregator, context, payloads):
            spy.payloads.append({n: (f, dict(a)) for n, (f, a) in payloads.items()})
            result = total(aggregator, context, payloads)
            spy.sums.append(
                {
                    "round": context.round_index,
                    "total": result.copy(),
                    "summed": list(context.summed),
                    "report": dict(context.report),
                    "update_size": context.update_size,
                    "distributed": aggregator.owners_add_noise,
                }
            )
            return result

        monkeypatch.setattr(OwnerService, "_contribution", recording_contribution)
        monkeypatch.setattr(SecAggPlusAggregator, "sum", recording_sum)

    def residual(self, index: int = -1) -> tuple[np.ndarray, dict]:
        """(what the aggregator returned - the plain sum of the summed contributions, the sum)."""
        record = self.sums[index]
        expected = sum(
            self.contributions[(record["round"], name)].astype(np.float64)
            for name in record["summed"]
        )
        if record["distributed"]:
            expected = expected[: record["update_size"]]
            return record["total"][: record["update_size"]] - expected, record
        return record["total"] - expected, record

    def assert_exact(self, index: int = -1) -> None:
        """The sum equals the plain sum to the codec's precision (n * gamma per value)."""
        residual, record = self.residual(index)
        gamma = record["report"]["granularity"]
        bound = len(record["summed"]) * gamma + 1e-6 * np.abs(residual).max(initial=0)
        assert np.abs(residual).max() <= bound, (np.abs(residual).max(), bound)


class StageOwner(OwnerProtocol):
    """A simulated owner that fails at `fail_at` (a stage), or rewrites its messages.

    `rewrite(direction, message, fields, arrays)` may return new (fields,
    arrays) for a message sent ("up") or received ("down"); `message` is an
    aggregation message name or `"train"` (whose payload carries the masked input).
    """

    def __init__(self, inner, fail_at=None, rewrite=None):
        self.inner, self.name = inner, inner.name
        self.fail_at, self.rewrite = fail_at, rewrite
        self.concurrent = inner.concurrent
        self.rounds = 0

    def _fail(self, stage: str) -> None:
        if stage == self.fail_at:
            raise PartyError(f"Owner {self.name!r} went away at {stage}")

    def describe(self, timeout):
        return self.inner.describe(timeout)

    def configure(self, job, timeout):
        return self.inner.configure(job, timeout)

    def evaluate(self, job_id, weights, batch_size, timeout):
        return self.inner.evaluate(job_id, weights, batch_size, timeout)

    def train(self, job_id, round_index, weights, fields, timeout):
        self._fail("masked_input")
        if self.rewrite is not None:
            fields = self.rewrite("down", "train", fields, {})[0]
        result = self.inner.train(job_id, round_index, weights, fields, timeout)
        if self.rewrite is not None:
            result.payload = self.rewrite("up", "train", *result.payload)
        return result

    def call(self, method, fields, arrays, timeout):
        message = method.rsplit("/", 1)[-1]
        stage = next(s for s, m in MESSAGE_OF.items() if m == message)
        self._fail(stage)
        if self.rewrite is not None:
            fields, arrays = self.rewrite("down", message, fields, arrays)
        answer = self.inner.call(method, fields, arrays, timeout)
        if self.rewrite is not None:
            answer = self.rewrite("up", message, *answer)
        return answer

    def traffic(self):
        return self.inner.traffic()

    def certificate_authority(self):
        return self.inner.certificate_authority()


def wide_model(policy, learning_rate=0.1, hidden=400, seed=1):
    """A model with `8 * hidden + hidden + hidden * 3 + 3` weights (4,803 for 400)."""
    keras.utils.set_random_seed(seed)
    model = pk.PrivateSequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=policy,
    )
    return model
