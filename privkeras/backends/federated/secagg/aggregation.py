"""SecAgg+ in the federated engine: `Federated(secure_aggregation=True)`.

The engine's aggregation interface (`backends/federated/aggregation.py`) in
two halves registered as `"secagg"`; every round of a fit runs one SecAgg+
round (`SecAggCoordinator` / `SecAggOwner`) over the owner protocol, for
simulated owners and worker processes alike:

| stage | when | coordinator -> owner | owner -> coordinator |
|---|---|---|---|
| advertise_keys | `prepare` | `aggregation/secagg/advertise_keys`: `RoundSetup` | `AdvertiseKeys` (+ its certificate, first round of a job) |
| share_keys | `prepare` | `aggregation/secagg/share_keys`: `NeighbourKeys` (+ neighbours' certificates it lacks) | `ShareKeys` |
| masked_input | the train request | `ForwardedShares`, with the weights | `MaskedInput` in the train answer |
| unmasking | `sum` | `aggregation/secagg/unmask`: `UnmaskRequest` | `UnmaskResponse` |

What is masked. Without `dp="distributed"`, the whole contribution vector
(the update, its weight, the clipping indicator with adaptive clipping),
each coordinate clipped to `clip_range`: `max(clip_norm, 1)` with
`clip_norm` (every value of a clipped update and the weight 1 and the
indicator +-1/2 fit), otherwise `DEFAULT_CLIP_RANGE` for the example-weighted
update scaled by `n_i / max_j n_j` (`JobSpec.weight_scale`). With
`dp="distributed"`, the update alone: each owner clips it to `clip_norm` and
adds its share of distributed discrete Gaussian noise, calibrated so that
the `min_survivors` owners a round accepts together add noise of standard
deviation `noise_multiplier * clip_norm` (every weight is 1: the aggregator
fills in the survivor count). Adaptive clipping is refused with distributed DP.

A round needs `max(n - floor(n / 3), min(min_owners, n))` masked inputs from
its n sampled owners (`SecAggConfig`'s default tolerance of a third dropping
out, raised to `min_owners`); below that, or when a dropped owner's masks can
no longer be removed, it raises `SecAggRoundError` (a `PartyError`) naming
the stage and the owners, and the engine stops: never a wrong aggregate.

Keys are authenticated by certificates (`identity`): each owner signs its
round keys with its certificate's key; the coordinator forwards each owner's
certificate to each neighbour that does not hold it yet (the owner side
tells a new job by its `session`), and the neighbours check it against
their own CA before they believe a key (`AuthenticationError` otherwise). With
`dp="distributed"` each owner also refuses a round whose noise multiplier is
below its job's plan or whose clip norm is above it, so the epsilon its own
ledger counts (`planned_epsilon`) holds without trusting the coordinator.

Notes:
    Privacy holds against an honest-but-curious coordinator (Bonawitz et al.,
    CCS 2017; Bell et al., CCS 2020; see the package docstring for the
    threat model). The coordinator still learns who answered each stage and
    each owner's loss and metrics (the engine's logs), not its update.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from privkeras.backends.federated import aggregation
from privkeras.backends.federated.aggregation import Aggregator, OwnerAggregation, RoundContext
from privkeras.backends.federated.errors import UnknownJobError
from privkeras.backends.federated.secagg.coordinator import SecAggCoordinator, SecAggResult
from privkeras.backends.federated.secagg.dp import RDP_ORDERS, epsilon, round_rdp
from privkeras.backends.federated.secagg.errors import SecAggMessageError, SecAggRoundError
from privkeras.backends.federated.secagg.identity import (
    CertificateVerifier,
    OwnerIdentity,
    UncheckedCertificates,
)
from privkeras.backends.federated.secagg.messages import RoundSetup
from privkeras.backends.federated.secagg.owner import OwnerRequirements, SecAggOwner
from privkeras.backends.federated.secagg.params import RoundParameters, SecAggConfig
from privkeras.errors import AuthenticationError, CapabilityError

__all__ = [
    "DEFAULT_CLIP_RANGE",
    "SecAggPlusAggregator",
    "SecAggPlusOwner",
    "planned_epsilon",
]

NAME = aggregation.SECURE
#: Per-coordinate range of example-weighted updates (scaled by n_i / max n) without clip_norm.
DEFAULT_CLIP_RANGE = 16.0
#: The train-request field that carries an owner's `ForwardedShares`.
FORWARDED = "secagg/forwarded"
_CERTIFICATE = "certificate/"


def _as_bytes(arrays: dict[str, np.ndarray], key: str, who: str) -> bytes:
    array = arrays.get(key)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
        shown = None if array is None else f"{getattr(array, 'dtype', '?')} {np.shape(array)}"
        raise SecAggMessageError(
            f"Expected {who} to carry {key!r} as a 1-D uint8 array. Received: {shown}"
        )
    return array.tobytes()


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _clip_range(clip_norm: float | None) -> float:
    return DEFAULT_CLIP_RANGE if clip_norm is None else max(float(clip_norm), 1.0)


def _survivors_needed(n: int, min_answers: int) -> int:
    return min(n, max(n - math.floor(n / 3), min_answers, 2))


@functools.lru_cache(maxsize=256)
def _reference_params(
    noise_multiplier: float, num_owners: int, vector_length: int, min_owners: int
) -> RoundParameters:
    """A round of `num_owners` owners, as `prepare` would set it up (for accounting)."""
    # clip_norm does not change the mechanism's RDP (gamma scales with it): 1 stands for any.
    config = SecAggConfig(
        clip_norm=1.0,
        noise_multiplier=noise_multiplier,
        min_survivors=_survivors_needed(num_owners, min(min_owners, num_owners)),
    )
    return config.resolve(num_owners, vector_length)


@functools.lru_cache(maxsize=1024)
def _planned_epsilon(z, n, d, min_owners, q, rounds, delta) -> float:
    params = _reference_params(z, n, d, min_owners)
    return epsilon(params, rounds=rounds, delta=delta, sampling_rate=q)


def planned_epsilon(plan: dict[str, Any], rounds: int, delta: float) -> float:
    """What `rounds` rounds of a distributed-DP plan spend (the owner's own ledger counts it).

    The rounds are those of all the job's owners at its sampling rate, as the
    coordinator's accountant counts a round (equal to it without sampling).

    Args:
        plan: The job's `client_dp` (`noise_multiplier`, `sample_rate`,
            `vector_length`, `num_owners`, `min_owners`).
        rounds: Rounds so far.
        delta: The owner's delta.
    """
    if rounds <= 0:
        return 0.0
    return _planned_epsilon(
        float(plan["noise_multiplier"]),
        max(2, int(plan["num_owners"])),
        int(plan["vector_length"]),
        int(plan.get("min_owners", 2)),
        float(plan["sample_rate"]),
        int(rounds),
        float(delta),
    )


class _CohortVerifier:
    """The coordinator's copy of owners' certificates, each checked against its transport's CA.

    It keeps every owner's certificate (to forward to its neighbours) and
    verifies signatures with it. Owners whose transport names no CA (custom
    `OwnerProtocol`s) have their certificate kept unchecked and their
    signatures checked against it; their neighbours check the certificate in
    any case, against their own CA.
    """

    def __init__(self):
        self._checkers: dict[bytes | None, CertificateVerifier] = {}
        self._authority: dict[str, bytes | None] = {}
        self._certificates: dict[str, bytes] = {}

    def expect(self, name: str, authority: bytes | None) -> None:
        if self._authority.get(name, authority) != authority:
            self.forget(name)
        self._authority[name] = authority
        if authority not in self._checkers:
            self._checkers[authority] = (
                CertificateVerifier([authority]) if authority else UncheckedCertificates()
            )

    def knows(self, name: str) -> bool:
        return name in self._certificates

    def certificate(self, name: str) -> bytes:
        return self._certificates[name]

    def add(self, name: str, certificate: bytes) -> None:
        checker = self._checkers[self._authority.get(name)]
        checker.add(name, certificate)
        self._certificates[name] = checker.certificate(name)

    def forget(self, name: str) -> None:
        self._certificates.pop(name, None)

    def verify(self, name: str, data: bytes, signature: bytes) -> None:
        if name not in self._certificates:
            raise AuthenticationError(
                f"Expected owner {name!r}'s certificate with its first keys. Received: none"
            )
        self._checkers[self._authority.get(name)].verify(name, data, signature)


class _Round:
    """One running round: the coordinator's state machine and what is being measured."""

    def __init__(self, context: RoundContext, coordinator: SecAggCoordinator, distributed: bool):
        self.context = context
        self.coordinator = coordinator
        self.distributed = distributed
        self.stages: dict[str, dict[str, Any]] = {}

    def measure(self, stage: str, names, start: float, before: dict[str, tuple[int, int]]):
        traffic = {name: self.context.cohort[name].traffic() for name in names}
        self.stages[stage] = {
            "seconds": time.perf_counter() - start,
            "bytes_down": {n: traffic[n][0] - before[n][0] for n in names},
            "bytes_up": {n: traffic[n][1] - before[n][1] for n in names},
        }


class SecAggPlusAggregator(Aggregator):
    """The coordinator's half: runs SecAgg+ in every round and returns only the sum.

    Args:
        dp: `"central"` (the coordinator adds the noise to the unmasked sum) or
            `"distributed"` (the owners add it before masking).
    """

    name = NAME

    #: The policy's `min_owners` (the engine sets it; rounds need at least this many inputs).
    min_owners = 2

    def __init__(self, dp: str = "central"):
        super().__init__(dp)
        self.owners_add_noise = dp == "distributed"
        self._verifier = _CohortVerifier()
        self._sessions: dict[str, str] = {}
        self._holds: dict[str, set[str]] = {}  # owner -> neighbours whose certificates it has
        self._round: _Round | None = None
        self._params: dict[int, RoundParameters] = {}

    # -- settings ---------------------------------------------------------------------------
    def _config(self, context: RoundContext, n: int) -> SecAggConfig:
        survivors = _survivors_needed(n, context.min_answers)
        if self.owners_add_noise:
            return SecAggConfig(
                clip_norm=context.clip_norm,
                noise_multiplier=context.noise_multiplier,
                min_survivors=survivors,
            )
        return SecAggConfig(clip_range=_clip_range(context.clip_norm), min_survivors=survivors)

    def _vector_length(self, context: RoundContext) -> int:
        if self.owners_add_noise:
            return context.update_size or context.vector_size - 1
        return context.vector_size

    def privacy_cost(self, context, noise_multiplier, sampling_rate, num_owners, vector_size):
        """The distributed discrete Gaussian's RDP (`secagg.dp.round_rdp`), with `dp="distributed"`."""
        from privkeras.backends.federated.accounting import RdpRound

        if not self.owners_add_noise:
            return None
        params = None if context is None else self._params.get(context.round_index)
        if params is None:
            params = _reference_params(
                noise_multiplier, max(2, num_owners), vector_size, self.min_owners
            )
        values = round_rdp(params, RDP_ORDERS, sampling_rate=sampling_rate)
        return RdpRound(RDP_ORDERS, values)

    # -- prepare: keys and shares -----------------------------------------------------------
    def prepare(self, context: RoundContext) -> dict[str, dict[str, Any]]:
        names = list(context.cohort)
        if len(names) < 2:
            raise SecAggRoundError(
                "advertise_keys", names, f"round {context.round_index + 1} sampled "
                f"{len(names)} owner(s); secure aggregation needs at least 2",
            )  # fmt: skip
        for name in names:
            self._verifier.expect(name, context.cohort[name].certificate_authority())
        coordinator = SecAggCoordinator(
            self._config(context, len(names)),
            names,
            self._vector_length(context),
            verifier=self._verifier,
        )
        self._params[context.round_index] = coordinator.params
        self._round = _Round(context, coordinator, self.owners_add_noise)
        with _named(context):
            self._advertise_keys(context, coordinator)
            outgoing = self._share_keys(context, coordinator)
        return {name: {FORWARDED: message.to_bytes()} for name, message in outgoing.items()}

    def _call(
        self,
        context: RoundContext,
        stage: str,
        message: str,
        names: list[str],
        build: Callable[[str], tuple[dict, dict]],
    ) -> dict[str, tuple[dict, dict]]:
        """Sends `message` to `names`; drops those that fail; returns the answers."""
        method = f"aggregation/{self.name}/{message}"

        def request(owner):
            fields, arrays = build(owner.name)
            fields = {"job_id": context.job_id, "round": context.round_index, **fields}
            try:
                return owner.call(method, fields, arrays, context.timeout)
            except UnknownJobError:  # a restarted owner: configure it again
                if stage != "advertise_keys" or context.job is None:
                    raise
                owner.configure(context.job, context.timeout)
                return owner.call(method, fields, arrays, context.timeout)

        start = time.perf_counter()
        before = {name: context.cohort[name].traffic() for name in names}
        answers, failures = context.call_cohort(names, request)
        for name, error in failures.items():
            context.drop(name, f"dropped at {stage}: {_reason(error)}")
        self._round.measure(stage, names, start, before)
        return answers

    def _receive(self, context, coordinator, stage: str, name: str, data: bytes) -> None:
        if not coordinator.receive(name, data):
            why = coordinator.misbehaving.get(name, "a message the round no longer takes")
            if "signature" in why:
                self._verifier.forget(name)
            context.drop(name, f"dropped at {stage}: {why}")

    def _advertise_keys(self, context, coordinator: SecAggCoordinator) -> None:
        setups = coordinator.setup_messages()

        def build(name):
            fields = {"certificate": not self._verifier.knows(name)}
            return fields, {"message": _u8(setups[name].to_bytes())}

        answers = self._call(context, "advertise_keys", "advertise_keys", list(setups), build)
        for name, (fields, arrays) in answers.items():
            try:
                if "certificate" in arrays:
                    self._verifier.add(name, _as_bytes(arrays, "certificate", name))
                data = _as_bytes(arrays, "message", f"owner {name!r}'s keys")
            except (AuthenticationError, SecAggMessageError) as error:
                context.drop(name, f"dropped at advertise_keys: {_reason(error)}")
                continue
            session = str(fields.get("session", ""))
            if self._sessions.get(name) != session:  # a new owner-side job: it holds no certificate
                self._sessions[name] = session
                self._holds[name] = set()
            self._receive(context, coordinator, "advertise_keys", name, data)

    def _share_keys(self, context, coordinator: SecAggCoordinator):
        outgoing = coordinator.close_advertise_keys()
        sent: dict[str, list[str]] = {}

        def build(name):
            arrays = {"message": _u8(outgoing[name].to_bytes())}
            needed = [
                keys.name
                for keys in outgoing[name].neighbours
                if keys.name not in self._holds.get(name, set())
            ]
            for neighbour in needed:
                arrays[_CERTIFICATE + neighbour] = _u8(self._certificate(neighbour))
            sent[name] = needed
            return {}, arrays

        answers = self._call(context, "share_keys", "share_keys", list(outgoing), build)
        for name, (_, arrays) in answers.items():
            self._holds.setdefault(name, set()).update(sent.get(name, ()))
            try:
                data = _as_bytes(arrays, "message", f"owner {name!r}'s shares")
            except SecAggMessageError as error:
                context.drop(name, f"dropped at share_keys: {_reason(error)}")
                continue
            self._receive(context, coordinator, "share_keys", name, data)
        return coordinator.close_share_keys()

    def _certificate(self, name: str) -> bytes:
        return self._verifier.certificate(name)

    # -- sum: masked inputs and unmasking ---------------------------------------------------
    def sum(self, context, payloads):
        state = self._round
        if state is None or state.context is not context:
            raise CapabilityError("Expected prepare() before sum() in the same round.")
        coordinator = state.coordinator
        start = time.perf_counter()
        with _named(context):
            for name, (_, arrays) in payloads.items():
                try:
                    data = _as_bytes(arrays, "masked_input", f"owner {name!r}'s train answer")
                except SecAggMessageError as error:
                    context.drop(name, f"dropped at masked_input: {_reason(error)}")
                    continue
                self._receive(context, coordinator, "masked_input", name, data)
            requests = coordinator.close_masked_input()
            state.stages["masked_input"] = {"seconds": time.perf_counter() - start}
            answers = self._call(
                context,
                "unmasking",
                "unmask",
                list(requests),
                lambda name: ({}, {"message": _u8(requests[name].to_bytes())}),
            )
            for name, (_, arrays) in answers.items():
                try:
                    data = _as_bytes(arrays, "message", f"owner {name!r}'s unmasking")
                except SecAggMessageError as error:
                    context.drop(name, f"dropped at unmasking: {_reason(error)}")
                    continue
                self._receive(context, coordinator, "unmasking", name, data)
            start = time.perf_counter()
            result = coordinator.close_unmasking()
            state.stages["unmasking"]["seconds"] += time.perf_counter() - start
        self._report(context, state, result)
        self._round = None
        context.summed = list(result.survivors)
        if not self.owners_add_noise:
            return result.total
        tail = np.zeros(context.vector_size - result.total.size)
        tail[0] = len(result.survivors)  # every weight is 1 under client-level DP
        return np.concatenate([result.total, tail])

    def _report(self, context, state: _Round, result: SecAggResult) -> None:
        for name in state.coordinator.dropped.get("unmasking", ()):
            context.dropped[name] = context.dropped.get(name, "did not answer") + (
                " (its masked update is in the sum)"
            )
        params = result.params
        context.report.update(
            {
                "aggregation": self.name,
                "stages": state.stages,
                "neighbours": params.neighbours,
                "threshold": params.threshold,
                "min_survivors": params.min_survivors,
                "granularity": params.granularity,
                "ring_bits": params.config.ring_bits,
                "noise_variance": params.noise_t * params.noise_m,
                "dropped_at": {s: list(o) for s, o in result.dropped.items() if o},
                "misbehaving": dict(result.misbehaving),
                "complaints": {k: list(v) for k, v in result.complaints.items()},
            }
        )


class _named:
    """Adds the round number and the dropped owners' reasons to a `SecAggRoundError`."""

    def __init__(self, context: RoundContext):
        self.context = context

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if not isinstance(error, SecAggRoundError) or getattr(error, "_named", False):
            return False
        detail = str(error).split(": ", 1)[-1]
        reasons = "; ".join(f"{n}: {why}" for n, why in sorted(self.context.dropped.items()))
        named = SecAggRoundError(
            error.stage,
            error.owners,
            f"round {self.context.round_index + 1}: {detail}"
            + (f". Dropped owners: {reasons}" if reasons else ""),
        )
        named._named = True
        raise named from None


class SecAggPlusOwner(OwnerAggregation):
    """The owner's half: one `SecAggOwner` per round, keys signed with its certificate.

    Raises:
        AuthenticationError: At `configure`, for an owner without an identity
            (a worker serving plain text): it has nothing to sign its keys with.
    """

    name = NAME

    def __init__(self, owner_name: str, job, identity: OwnerIdentity | None = None):
        super().__init__(owner_name, job, identity)
        if identity is None:
            raise AuthenticationError(
                f"owner {owner_name!r} has no certificate to sign its secure-aggregation keys "
                "with: run the worker with mutual TLS (--certs) or a certificate and a token "
                "(not --insecure)."
            )
        plan = job.client_dp or {}
        self.distributed = plan.get("placement") == "distributed"
        self.session = os.urandom(8).hex()
        self._verifier = identity.verifier()
        self._requirements = OwnerRequirements(
            min_noise_multiplier=float(plan.get("noise_multiplier", 0.0))
            if self.distributed
            else 0.0,
            max_clip_norm=job.clip_norm if self.distributed else None,
        )
        self._round_index: int | None = None
        self._owner: SecAggOwner | None = None
        self._lock = threading.Lock()  # a worker serves calls in threads: one stage at a time

    def _vector_length(self) -> int:
        if self.distributed:
            return self.job.weight_count
        return self.job.weight_count + 1 + (1 if self.job.adaptive_clipping else 0)

    def _current(self, fields: dict) -> SecAggOwner:
        round_index = fields.get("round")
        if self._owner is None or round_index != self._round_index:
            raise SecAggMessageError(
                f"Expected a message for round {self._round_index} (owner {self.owner_name!r} "
                f"advertised keys for it). Received: a message for round {round_index!r}"
            )
        return self._owner

    def handle(self, message, fields, arrays):
        with self._lock:
            return self._handle(message, fields, arrays)

    def _handle(self, message, fields, arrays):
        data = _as_bytes(arrays, "message", f"the {message} request")
        if message == "advertise_keys":
            return self._advertise_keys(fields, data)
        if message == "share_keys":
            for key in arrays:
                if key.startswith(_CERTIFICATE):
                    name = key[len(_CERTIFICATE) :]
                    self._verifier.add(name, _as_bytes(arrays, key, "a certificate"))
            return {}, {"message": _u8(self._current(fields).share_keys(data).to_bytes())}
        if message == "unmask":
            return {}, {"message": _u8(self._current(fields).unmask(data).to_bytes())}
        return super().handle(message, fields, arrays)

    def _advertise_keys(self, fields: dict, data: bytes):
        round_index = fields.get("round")
        if not isinstance(round_index, int) or isinstance(round_index, bool):
            raise SecAggMessageError(f"Expected an integer round. Received: {round_index!r}")
        if self._round_index is not None and round_index <= self._round_index:
            raise SecAggMessageError(
                f"Expected a round after {self._round_index} (owner {self.owner_name!r} makes "
                f"keys once per round). Received: round {round_index}"
            )
        setup = RoundSetup.from_bytes(data)
        if setup.params.vector_length != self._vector_length():
            raise SecAggMessageError(
                f"Expected a round over {self._vector_length()} values (this job's "
                f"contribution). Received: vector_length={setup.params.vector_length}"
            )
        owner = SecAggOwner(
            self.owner_name,
            self.identity.signer,
            self._verifier,
            requirements=self._requirements,
        )
        keys = owner.advertise_keys(setup)
        self._round_index, self._owner = round_index, owner
        arrays = {"message": _u8(keys.to_bytes())}
        if fields.get("certificate"):
            arrays["certificate"] = _u8(self.identity.certificate)
        return {"session": self.session}, arrays

    def protect(self, contribution, request):
        with self._lock:
            return self._protect(contribution, request)

    def _protect(self, contribution, request):
        owner = self._current(request)
        forwarded = request.get(FORWARDED)
        if not isinstance(forwarded, bytes):
            raise SecAggMessageError(
                f"Expected the forwarded shares ({FORWARDED!r}) with the train request. "
                f"Received: {type(forwarded).__name__}"
            )
        vector = contribution[: self.job.weight_count] if self.distributed else contribution
        masked = owner.masked_input(forwarded, np.asarray(vector, dtype=np.float64))
        return {}, {"masked_input": _u8(masked.to_bytes())}


aggregation.register(NAME, SecAggPlusAggregator, SecAggPlusOwner)
