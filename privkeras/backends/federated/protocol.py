"""The owner protocol: what the coordinator asks a data owner, and how it travels.

Four requests, each one `wire` message each way:

- `describe`: the owner's data in summary (count, feature shape, label
  range, whether every value is finite) and its rules (what it allows, its
  privacy budget). Never a row.
- `configure`: a job (the model's Keras configs, local training settings,
  the privacy plan); the owner checks it against its rules and budget and
  builds its local model, or refuses.
- `train`: global weights in, a protected contribution out (the clipped,
  weighted update as the job's aggregation protects it), with the example
  count and the local training metrics.
- `evaluate`: global weights in, loss and metrics on the owner's rows out.

Aggregators may add messages of their own (`call`, methods named
`"aggregation/<name>/<message>"`), answered by their owner-side half.

`OwnerProtocol` is the interface; `OwnerClient` implements it over a
`Transport`, of which there are two: `InProcessTransport` (a simulated
owner's `OwnerService` in this process) and the gRPC transport to a
`privkeras worker`. An owner's error travels back typed (`PartyError`,
`PrivacyBudgetExceededError`, `OwnerRefusedError`, ...) and is raised by the
client with the owner's name.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Any, ClassVar

import numpy as np

from privkeras.backends.federated import wire
from privkeras.backends.federated.errors import (
    OwnerDataError,
    OwnerRefusedError,
    UnknownJobError,
    WireFormatError,
)
from privkeras.errors import (
    AuthenticationError,
    CapabilityError,
    PartyError,
    PrivacyBudgetExceededError,
    PrivacyPolicyError,
    PrivkerasError,
)

__all__ = [
    "BYTES_PREFIX",
    "DataDescription",
    "EvaluateResult",
    "InProcessTransport",
    "JobSpec",
    "OwnerClient",
    "OwnerProtocol",
    "TrainResult",
    "Transport",
    "error_message",
]

#: Errors that travel by name from an owner to the coordinator; anything else becomes PartyError.
_ERRORS: dict[str, type[PrivkerasError]] = {
    cls.__name__: cls
    for cls in (
        AuthenticationError,
        CapabilityError,
        OwnerDataError,
        OwnerRefusedError,
        PartyError,
        PrivacyBudgetExceededError,
        PrivacyPolicyError,
        UnknownJobError,
        WireFormatError,
    )
}


@dataclasses.dataclass(frozen=True)
class DataDescription:
    """What an owner says about its data and rules (no rows).

    Attributes:
        name: The owner's name.
        n_examples: Number of rows.
        feature_shape: Shape of one row of `x`.
        label_shape: Shape of one row of `y`.
        label_min, label_max: Range of the labels.
        labels_integral: Whether every label is a whole number.
        nonfinite: Which of `"x"`, `"y"` hold NaN or infinities (empty if none).
        allow: What the owner allows (`"federated"`, `"mpc"`).
        max_epsilon: The owner's privacy budget, or None.
        delta: The delta of that budget.
        spent_epsilon: What the owner's ledger has spent so far.
    """

    name: str
    n_examples: int
    feature_shape: tuple[int, ...]
    label_shape: tuple[int, ...]
    label_min: float
    label_max: float
    labels_integral: bool
    nonfinite: tuple[str, ...] = ()
    allow: tuple[str, ...] = ("federated",)
    max_epsilon: float | None = None
    delta: float | None = None
    spent_epsilon: float = 0.0

    def to_fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> DataDescription:
        fields = dict(fields)
        for name in ("feature_shape", "label_shape", "nonfinite", "allow"):
            fields[name] = tuple(fields.get(name, ()))
        return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One training job as an owner receives it.

    Attributes:
        job_id: Random id the coordinator chose.
        model: `keras.saving.serialize_keras_object(model)`.
        compile: `keras.Model.get_compile_config(model)`.
        weight_count: Length of the flat weight vector.
        rounds: Rounds planned in this fit (0 for an evaluation-only job).
        batch_size: Local batch size.
        local_epochs: Local epochs per round.
        shuffle: Whether owners shuffle their rows each local epoch.
        proximal_mu: FedProx's mu.
        weighting: `"examples"` (update times row count) or `"uniform"` (DP).
        clip_norm: The initial client-level clip norm, or None.
        adaptive_clipping: Whether owners report their clipping indicator.
        client_dp: The client-level plan the owner accounts (sample_rate,
            noise_multiplier, rounds, delta, placement), or None without noise.
        local_privacy: A DPSGD policy config, or None.
        aggregation: Name of the aggregator protecting contributions.
        kind: What the job is, checked against the owner's `--allow`.
        weight_scale: Example-weighted contributions are divided by it (the
            largest owner's row count under secure aggregation, so that each
            value stays within the ring's range; 1 otherwise). The average is
            unchanged: the weights are divided too.
    """

    job_id: str
    model: dict[str, Any]
    compile: dict[str, Any]
    weight_count: int
    rounds: int = 1
    batch_size: int = 32
    local_epochs: int = 1
    shuffle: bool = True
    proximal_mu: float = 0.0
    weighting: str = "examples"
    clip_norm: float | None = None
    adaptive_clipping: bool = False
    client_dp: dict[str, Any] | None = None
    local_privacy: dict[str, Any] | None = None
    aggregation: str = "plain"
    kind: str = "federated"
    weight_scale: float = 1.0

    def to_fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> JobSpec:
        try:
            return cls(
                **{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
            )
        except TypeError as error:
            raise WireFormatError(f"Expected a job spec. Received: {error}") from None


@dataclasses.dataclass
class TrainResult:
    """An owner's answer to `train`.

    Attributes:
        n_examples: Rows the owner trained on.
        metrics: The owner's last local epoch's logs (loss and metrics).
        payload: The contribution as the aggregation protected it: `(fields, arrays)`.
        record_epsilon: Record-level epsilon of the owner's own DP-SGD ledger, or None.
    """

    n_examples: int
    metrics: dict[str, float]
    payload: tuple[dict[str, Any], dict[str, np.ndarray]]
    record_epsilon: float | None = None


@dataclasses.dataclass
class EvaluateResult:
    """An owner's answer to `evaluate`: its row count and metrics."""

    n_examples: int
    metrics: dict[str, float]


class OwnerProtocol(abc.ABC):
    """What the coordinator can ask a data owner. Implementations name the owner in errors.

    `concurrent` says whether calls may run in parallel threads (remote
    owners) or must run one at a time in the caller's thread (in-process).
    Each call takes a `timeout` in seconds; past it the call raises
    `PartyError` (or its answer is discarded).
    """

    name: str
    concurrent: ClassVar[bool] = True

    @abc.abstractmethod
    def describe(self, timeout: float) -> DataDescription: ...

    @abc.abstractmethod
    def configure(self, job: JobSpec, timeout: float) -> None: ...

    @abc.abstractmethod
    def train(
        self, job_id: str, round_index: int, weights: np.ndarray, fields: dict, timeout: float
    ) -> TrainResult: ...

    @abc.abstractmethod
    def evaluate(
        self, job_id: str, weights: np.ndarray, batch_size: int, timeout: float
    ) -> EvaluateResult: ...

    def call(self, method: str, fields: dict, arrays: dict, timeout: float) -> tuple[dict, dict]:
        """An aggregator's own message (`method` starts with `"aggregation/"`)."""
        raise CapabilityError(f"Owner {self.name!r} does not answer {method!r}.")

    def traffic(self) -> tuple[int, int]:
        """Bytes sent to and received from the owner so far (0, 0 if not counted)."""
        return 0, 0

    def certificate_authority(self) -> bytes | None:
        """PEM of the CA this coordinator trusts for the owner's certificate, or None.

        Secure aggregation checks owners' certificates against it as they
        arrive (the owners check each other's in any case).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional
        """Releases connections."""


#: Train-request values that are bytes travel as uint8 arrays named with this prefix.
BYTES_PREFIX = "bytes/"


class Transport(abc.ABC):
    """Carries one request's bytes to an owner and its answer's bytes back."""

    concurrent: ClassVar[bool] = True

    def __init__(self):
        self.bytes_sent = 0
        self.bytes_received = 0

    @abc.abstractmethod
    def _exchange(self, method: str, data: bytes, timeout: float) -> bytes:
        """The answer to `data`; raises `PartyError` if none comes within `timeout`."""

    def request(self, method: str, data: bytes, timeout: float) -> bytes:
        self.bytes_sent += len(data)
        answer = self._exchange(method, data, timeout)
        self.bytes_received += len(answer)
        return answer

    def certificate_authority(self) -> bytes | None:
        """PEM of the CA the owner's certificate should come from, or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional
        """Releases connections."""


class InProcessTransport(Transport):
    """Hands the bytes to an `OwnerService` in this process (simulated owners).

    Calls run in the caller's thread, one at a time; an answer that comes
    after `timeout` is discarded as a dropped owner's would be.
    """

    concurrent = False

    def __init__(self, service: Any):
        super().__init__()
        self.service = service

    def _exchange(self, method: str, data: bytes, timeout: float) -> bytes:
        start = time.monotonic()
        answer = self.service.handle(method, data)
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise PartyError(
                f"Owner {self.service.name!r} answered {method} after {elapsed:.2f} s, "
                f"past the timeout of {timeout:g} s."
            )
        return answer

    def certificate_authority(self) -> bytes | None:
        identity = getattr(self.service, "identity", None)
        return None if identity is None else identity.authority


def error_message(error: BaseException) -> bytes:
    """The message an owner sends back for `error` (its type by name, its text)."""
    kind = type(error).__name__
    if kind not in _ERRORS:
        kind, text = "PartyError", f"{type(error).__name__}: {error}"
    else:
        text = str(error)
    return wire.encode({"error": {"type": kind, "message": text}})


class OwnerClient(OwnerProtocol):
    """`OwnerProtocol` over a `Transport`: the coordinator's side, for every transport.

    Args:
        name: The owner's name, used in errors.
        transport: Where the bytes go.
    """

    def __init__(self, name: str, transport: Transport):
        self.name = name
        self.transport = transport
        self.concurrent = transport.concurrent

    def _request(
        self, method: str, fields: dict, arrays: dict | None, timeout: float
    ) -> tuple[dict, dict]:
        try:
            answer = self.transport.request(method, wire.encode(fields, arrays), timeout)
            fields, arrays = wire.decode(answer)
        except PartyError as error:
            if self.name in str(error):
                raise
            raise type(error)(f"Owner {self.name!r}: {error}") from error
        except WireFormatError as error:
            raise PartyError(f"Owner {self.name!r} sent a malformed answer: {error}") from None
        if "error" in fields:
            raise self._remote_error(fields["error"])
        return fields, arrays

    def _remote_error(self, error: Any) -> PrivkerasError:
        kind = error.get("type") if isinstance(error, dict) else None
        text = error.get("message", "") if isinstance(error, dict) else repr(error)
        cls = _ERRORS.get(kind, PartyError)
        return cls(f"Owner {self.name!r}: {text}")

    def describe(self, timeout: float) -> DataDescription:
        fields, _ = self._request("describe", {}, None, timeout)
        return DataDescription.from_fields(fields)

    def configure(self, job: JobSpec, timeout: float) -> None:
        self._request("configure", job.to_fields(), None, timeout)

    def train(
        self, job_id: str, round_index: int, weights: np.ndarray, fields: dict, timeout: float
    ) -> TrainResult:
        request = {"job_id": job_id, "round": round_index}
        sent = {"weights": weights}
        for key, value in fields.items():
            if isinstance(value, (bytes, bytearray)):
                sent[BYTES_PREFIX + key] = np.frombuffer(bytes(value), dtype=np.uint8)
            else:
                request[key] = value
        answer, arrays = self._request("train", request, sent, timeout)
        try:
            return TrainResult(
                n_examples=int(answer["n_examples"]),
                metrics={k: float(v) for k, v in answer["metrics"].items()},
                payload=(answer.get("payload", {}), arrays),
                record_epsilon=answer.get("record_epsilon"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PartyError(
                f"Owner {self.name!r} sent a malformed train answer: {error}"
            ) from None

    def evaluate(
        self, job_id: str, weights: np.ndarray, batch_size: int, timeout: float
    ) -> EvaluateResult:
        request = {"job_id": job_id, "batch_size": batch_size}
        answer, _ = self._request("evaluate", request, {"weights": weights}, timeout)
        try:
            return EvaluateResult(
                int(answer["n_examples"]), {k: float(v) for k, v in answer["metrics"].items()}
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PartyError(
                f"Owner {self.name!r} sent a malformed evaluate answer: {error}"
            ) from None

    def call(self, method: str, fields: dict, arrays: dict, timeout: float) -> tuple[dict, dict]:
        if not method.startswith("aggregation/"):
            raise CapabilityError(
                f"Expected an aggregation message (aggregation/...). Received: method={method!r}"
            )
        return self._request(method, fields, arrays, timeout)

    def traffic(self) -> tuple[int, int]:
        return self.transport.bytes_sent, self.transport.bytes_received

    def certificate_authority(self) -> bytes | None:
        return self.transport.certificate_authority()

    def close(self) -> None:
        self.transport.close()

    def __repr__(self) -> str:
        return f"OwnerClient({self.name!r}, {type(self.transport).__name__})"
