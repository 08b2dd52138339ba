"""Aggregation: how the owners' contributions become their sum.

Each sampled owner turns its update into a contribution vector (float32):
the update (times its example count for FedAvg's weighting, or clipped to
`clip_norm` for client-level DP), then its weight (the count, or 1), then,
with adaptive clipping, its centred clipping indicator. The coordinator
needs only the sum of these vectors over the owners that answered.

An aggregation comes in two halves registered under one name:

- `Aggregator` (coordinator side): `prepare` may exchange setup messages
  with the cohort before training (keys, shares) and returns extra fields
  for each owner's train request; `sum` turns the surviving owners'
  payloads into the float64 sum of their contribution vectors (running
  unmasking messages if it needs them), dropping owners it cannot use.
- `OwnerAggregation` (owner side): `protect` turns the contribution into
  the payload that leaves the owner; `handle` answers the aggregator's own
  messages (`"aggregation/<name>/<message>"`).

`"plain"` sends the vector as it is and sums it. Secure aggregation
(SecAgg+, `backends/federated/secagg/aggregation.py`) registers `"secagg"`:
it encodes the vector in the ring Z_2^32 and masks it so that `sum` learns
only the total. With `Federated(dp="distributed")` the owner-side half adds
each owner's share of the noise before masking and the aggregator sets
`owners_add_noise = True`, so that the coordinator adds none; its
`privacy_cost` then gives the accountant the RDP of the mechanism the owners
ran (the distributed discrete Gaussian) instead of the coordinator's
Gaussian.

Example (how secure aggregation plugs in):

```python
from privkeras.backends.federated import aggregation
from privkeras.backends.federated.secagg.aggregation import (
    SecAggPlusAggregator, SecAggPlusOwner)

aggregation.register("secagg", SecAggPlusAggregator, SecAggPlusOwner)   # done on import
```
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from privkeras.core.registry import Registry
from privkeras.errors import CapabilityError, PartyError

if TYPE_CHECKING:
    from privkeras.backends.federated.accounting import RdpRound
    from privkeras.backends.federated.protocol import JobSpec, OwnerProtocol

__all__ = [
    "AGGREGATORS",
    "OWNER_AGGREGATIONS",
    "Aggregator",
    "OwnerAggregation",
    "PlainAggregator",
    "PlainOwnerAggregation",
    "RoundContext",
    "get_aggregator",
    "register",
]

AGGREGATORS: Registry[str, type[Aggregator]] = Registry(
    "aggregation", unknown_error=CapabilityError
)
OWNER_AGGREGATIONS: Registry[str, type[OwnerAggregation]] = Registry(
    "aggregation", unknown_error=CapabilityError
)

#: `Federated(secure_aggregation=True)` uses the aggregation registered under this name.
SECURE = "secagg"
PLAIN = "plain"

#: `call_cohort(names, request)`: runs `request(owner)` for each named owner within the
#: round's deadline; returns the answers by name and the failures by name.
CohortCall = Callable[
    [list[str], Callable[["OwnerProtocol"], Any]], tuple[dict[str, Any], dict[str, str]]
]


@dataclasses.dataclass
class RoundContext:
    """What an aggregator knows of the round it aggregates.

    Attributes:
        job_id: The job.
        round_index: The round (0-based, counted over the engine's life).
        cohort: The sampled owners, by name.
        vector_size: Length of each contribution vector.
        min_answers: The round fails below this many surviving owners.
        timeout: Seconds an owner has to answer each message.
        dp: `"central"` or `"distributed"`.
        noise_std: Std of the client-level noise on the sum (0 without DP).
        call_cohort: Sends a message to several owners at once (see `CohortCall`).
        dropped: Owners dropped so far this round, with the reason.
        job: The job the owners were configured with (to configure a restarted owner again).
        update_size: Length of the update part of each contribution vector (the
            model's weights); the rest is the weight and, with adaptive
            clipping, the clipping indicator.
        clip_norm: The round's client-level clip norm, or None without client DP.
        noise_multiplier: The accounted noise multiplier z of the round (0 without DP).
        sampling_rate: Poisson rate at which owners were sampled.
        summed: Set by an aggregator whose sum includes owners it also dropped
            (secure aggregation: an owner that dropped while unmasking still
            has its update in the sum): the owners whose contributions are in it.
        report: What the aggregator wants in the round's log (stages, bytes, seconds).
    """

    job_id: str
    round_index: int
    cohort: dict[str, OwnerProtocol]
    vector_size: int
    min_answers: int
    timeout: float
    dp: str
    noise_std: float
    call_cohort: CohortCall
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    job: JobSpec | None = None
    update_size: int | None = None
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    sampling_rate: float = 1.0
    summed: list[str] | None = None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def drop(self, name: str, reason: str) -> None:
        """Drops `name` from the round (it stays dropped for the rest of it)."""
        self.dropped.setdefault(name, reason)

    def require(self, survivors: int, stage: str) -> None:
        """Raises `PartyError` naming the dropped owners when fewer than `min_answers` survive."""
        if survivors < self.min_answers:
            missing = "; ".join(f"{name}: {why}" for name, why in sorted(self.dropped.items()))
            raise PartyError(
                f"Round {self.round_index + 1} failed at {stage}: expected at least "
                f"{self.min_answers} owners to answer, {survivors} did. Missing owners: {missing}"
            )


class Aggregator(abc.ABC):
    """Coordinator side of an aggregation. One instance per `fit`.

    Args:
        dp: Where the client-level noise is added: `"central"` or `"distributed"`.
    """

    name: ClassVar[str]
    #: True when the owner-side half adds the client-level noise (`dp="distributed"`).
    owners_add_noise: bool = False

    def __init__(self, dp: str = "central"):
        self.dp = dp

    def privacy_cost(
        self,
        context: RoundContext | None,
        noise_multiplier: float,
        sampling_rate: float,
        num_owners: int,
        vector_size: int,
    ) -> RdpRound | None:
        """The RDP of one round (`accounting.RdpRound`) when the owners add the noise.

        None (the default): the round is the coordinator's sampled Gaussian
        mechanism of multiplier `noise_multiplier`, accounted as such.

        Args:
            context: The round that ran, or None for a round not run (an empty
                cohort, or calibration before round 1).
            noise_multiplier: z.
            sampling_rate: The Poisson rate.
            num_owners: Owners the round would have had (for a round not run).
            vector_size: The update's length.
        """
        return None

    def prepare(self, context: RoundContext) -> dict[str, dict[str, Any]]:
        """Setup before the cohort trains; returns extra train-request fields per owner.

        Values that are `bytes` travel as uint8 arrays (not in the JSON header)
        and reach the owner's `protect` as bytes.
        """
        return {}

    @abc.abstractmethod
    def sum(
        self, context: RoundContext, payloads: dict[str, tuple[dict[str, Any], dict[str, Any]]]
    ) -> np.ndarray:
        """The float64 sum of the contribution vectors of the owners whose payloads came back.

        May drop owners (`context.drop`); raises `PartyError` when the sum cannot be had.
        """


class OwnerAggregation(abc.ABC):
    """Owner side of an aggregation. One instance per owner and job.

    Args:
        owner_name: The owner's name.
        job: The job.
        identity: The owner's long-term identity (what secure aggregation signs
            its keys with, `secagg.identity.OwnerIdentity`), or None.
    """

    name: ClassVar[str]

    def __init__(self, owner_name: str, job: JobSpec, identity: Any = None):
        self.owner_name = owner_name
        self.job = job
        self.identity = identity

    @abc.abstractmethod
    def protect(
        self, contribution: np.ndarray, request: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The payload that leaves the owner for this contribution (fields, arrays).

        `request` is the train request's fields; values the aggregator's
        `prepare` gave as bytes arrive as bytes.
        """

    def handle(
        self, message: str, fields: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Answers the aggregator's message `"aggregation/<name>/<message>"`."""
        raise CapabilityError(
            f"Aggregation {self.name!r} has no message {message!r}. Received: {message!r}"
        )


class PlainAggregator(Aggregator):
    """Sums the contribution vectors as they come: the coordinator sees each one."""

    name = PLAIN

    def sum(self, context, payloads):
        total = np.zeros(context.vector_size, np.float64)
        for name, (_, arrays) in payloads.items():
            vector = arrays.get("contribution")
            if vector is None or vector.shape != (context.vector_size,):
                shape = None if vector is None else vector.shape
                context.drop(
                    name, f"sent a contribution of shape {shape}, expected ({context.vector_size},)"
                )
                continue
            if not np.isfinite(vector).all():
                context.drop(name, "sent a contribution with NaN or infinite values")
                continue
            total += vector
        return total


class PlainOwnerAggregation(OwnerAggregation):
    """Sends the contribution vector unprotected."""

    name = PLAIN

    def protect(self, contribution, request):
        return {}, {"contribution": contribution.astype(np.float32, copy=False)}


def register(
    name: str,
    aggregator: type[Aggregator],
    owner_aggregation: type[OwnerAggregation],
    *,
    replace: bool = False,
) -> None:
    """Registers both halves of an aggregation under `name`."""
    AGGREGATORS.register(name, aggregator, replace=replace)
    OWNER_AGGREGATIONS.register(name, owner_aggregation, replace=replace)


def get_aggregator(name: str, dp: str = "central") -> Aggregator:
    """A new coordinator-side aggregator registered under `name`, for noise placement `dp`.

    Raises:
        CapabilityError: For a name that is not registered (listing those that are).
    """
    return AGGREGATORS.get(name)(dp=dp)


register(PLAIN, PlainAggregator, PlainOwnerAggregation)
