"""The data owner's side: its rows, its rules, its privacy ledger, its answers.

An `OwnerService` is what a `privkeras worker` process runs, and what each
simulated owner of `FederatedData.simulate` is: it holds `(x, y)`, answers
the owner protocol's requests (bytes in, bytes out, see `protocol`), and
never puts a row in an answer: `describe` sends a summary, `train` the
protected contribution of its update, `evaluate` loss and metrics.

The owner's own rules (`OwnerRules`, a worker's `--allow`, `--max-epsilon`
and `--delta`) are enforced here, by the owner, not by the coordinator:

- a job whose kind is not allowed is refused (`OwnerRefusedError`);
- the owner's `OwnerLedger` keeps the epsilon each job has spent on its
  data, and a job (at `configure`) or a round (at `train`) that would take
  the total past `max_epsilon` is refused (`PrivacyBudgetExceededError`).

Notes:
    What a job spends, as the owner counts it at its own delta: with
    `local_privacy`, the record-level epsilon of the DP-SGD steps it ran
    itself (the owner need not trust anyone); otherwise, with client-level
    DP, the epsilon of the job's declared plan (sampling rate, noise
    multiplier) over the rounds run so far: with `dp="central"` this trusts
    the coordinator to add the noise it declares; with `dp="distributed"`
    (secure aggregation) the owner adds its share of the noise itself,
    refuses a round whose noise is below the plan, and counts the
    distributed discrete Gaussian's epsilon (Kairouz, Liu and Steinke, ICML
    2021; `secagg.dp`); otherwise infinity.
    Jobs compose by basic composition (epsilons add up; so do deltas, one
    per job). Accounting follows McMahan et al. (ICLR 2018) for client-level
    DP and Abadi et al. (CCS 2016) for DP-SGD, on dp-accounting's PLD.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import threading
from typing import Any

import numpy as np

from privkeras.backends.federated import accounting, aggregation, wire
from privkeras.backends.federated.errors import OwnerRefusedError, UnknownJobError
from privkeras.backends.federated.local_training import LocalTrainer, trainer_for
from privkeras.backends.federated.protocol import (
    BYTES_PREFIX,
    DataDescription,
    JobSpec,
    error_message,
)
from privkeras.errors import CapabilityError, PrivacyBudgetExceededError, PrivacyPolicyError

__all__ = ["OwnerLedger", "OwnerRules", "OwnerService", "as_rows"]

KINDS = ("federated", "mpc")
_MAX_JOBS = 4


@dataclasses.dataclass(frozen=True)
class OwnerRules:
    """A data owner's own rules.

    Args:
        allow: What the owner takes part in: `"federated"`, `"mpc"`.
        max_epsilon: Privacy budget for all jobs on its data, or None (no limit).
        delta: The delta at which the owner counts epsilon (needed with `max_epsilon`).
        ledger_path: A JSON file that keeps the ledger across restarts, or None.
    """

    allow: tuple[str, ...] = ("federated",)
    max_epsilon: float | None = None
    delta: float | None = None
    ledger_path: str | None = None

    def __post_init__(self):
        allow = tuple(self.allow)
        object.__setattr__(self, "allow", allow)
        unknown = [kind for kind in allow if kind not in KINDS]
        if unknown or not allow:
            raise PrivacyPolicyError(
                f"Expected allow to be a non-empty list of {list(KINDS)}. Received: allow={allow!r}"
            )
        if self.max_epsilon is not None:
            if not (isinstance(self.max_epsilon, (int, float)) and self.max_epsilon > 0):
                raise PrivacyPolicyError(
                    f"Expected max_epsilon > 0. Received: max_epsilon={self.max_epsilon!r}"
                )
            if self.delta is None:
                raise PrivacyPolicyError(
                    "Expected a delta with max_epsilon (the budget is (epsilon, delta)). "
                    "Received: delta=None"
                )
        if self.delta is not None and not (
            isinstance(self.delta, (int, float)) and 0 < self.delta < 1
        ):
            raise PrivacyPolicyError(f"Expected delta in (0, 1). Received: delta={self.delta!r}")


class OwnerLedger:
    """The epsilon each job has spent on one owner's data, enforced against its budget.

    Args:
        rules: The owner's rules (budget, delta, where to keep the ledger).
        owner_name: For messages.
    """

    def __init__(self, rules: OwnerRules, owner_name: str):
        self.rules = rules
        self.owner_name = owner_name
        self.jobs: dict[str, float] = {}
        self._lock = threading.Lock()
        if rules.ledger_path and os.path.exists(rules.ledger_path):
            with open(rules.ledger_path, encoding="utf-8") as file:
                self.jobs = {k: float(v) for k, v in json.load(file).get("jobs", {}).items()}

    @property
    def spent(self) -> float:
        return float(sum(self.jobs.values()))

    def check(self, job_id: str, job_epsilon: float, what: str) -> None:
        """Raises `PrivacyBudgetExceededError` if `job_epsilon` for `job_id` would exceed the budget."""
        budget = self.rules.max_epsilon
        if budget is None:
            return
        others = sum(eps for job, eps in self.jobs.items() if job != job_id)
        if others + job_epsilon > budget:
            raise PrivacyBudgetExceededError(
                f"owner {self.owner_name!r} refuses {what}: it would bring the epsilon spent on "
                f"its data to {others + job_epsilon:.4g} (delta={self.rules.delta:g}), over its "
                f"budget max_epsilon={budget:g}; already spent: {others:.4g}."
            )

    def commit(self, job_id: str, job_epsilon: float) -> None:
        """Records `job_epsilon` as what `job_id` has spent (and saves the ledger)."""
        with self._lock:
            self.jobs[job_id] = float(job_epsilon)
            if self.rules.ledger_path:
                tmp = self.rules.ledger_path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as file:
                    json.dump({"delta": self.rules.delta, "jobs": self.jobs}, file)
                os.replace(tmp, self.rules.ledger_path)


def _plan_epsilon(plan: dict[str, Any], rounds: int, delta: float) -> float:
    """Client-level epsilon of `rounds` rounds of a job's plan, at the owner's delta."""
    if plan.get("placement") == "distributed" and "vector_length" in plan:
        from privkeras.backends.federated.secagg.aggregation import planned_epsilon

        return planned_epsilon(plan, rounds, delta)
    return accounting.epsilon(plan["sample_rate"], plan["noise_multiplier"], rounds, delta)


def _with_bytes(fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The train request's fields with the aggregator's byte values (sent as uint8 arrays)."""
    extra = {
        name[len(BYTES_PREFIX) :]: array.tobytes()
        for name, array in arrays.items()
        if name.startswith(BYTES_PREFIX) and array.dtype == np.uint8 and array.ndim == 1
    }
    return {**fields, **extra} if extra else fields


def as_rows(x: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An owner's data as numpy: x float32, y int64 for whole-number labels else float32."""
    from privkeras.backends.federated.errors import OwnerDataError

    try:
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        y = y.astype(np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32)
    except (TypeError, ValueError) as error:
        raise OwnerDataError(
            f"Expected owner {name!r} to hold numeric arrays x and y. Received: {error}"
        ) from None
    if x.ndim < 1 or len(x) != len(y) or not len(x):
        raise OwnerDataError(
            f"Expected owner {name!r} to hold x and y with the same number of rows (>= 1). "
            f"Received: x.shape={x.shape}, y.shape={y.shape}"
        )
    return x, y


@dataclasses.dataclass
class _Job:
    spec: JobSpec
    trainer: LocalTrainer
    protection: aggregation.OwnerAggregation
    batch_size: int
    local: tuple[float, float, int] | None  # (sample rate, noise, mechanisms per round)
    local_ledger: accounting.RoundLedger | None


class OwnerService:
    """One data owner answering the owner protocol on its own rows.

    Args:
        name: The owner's name.
        x: Its features.
        y: Its labels.
        rules: Its rules (`OwnerRules`).
        identity: What it signs its secure-aggregation keys with (a
            `secagg.identity.OwnerIdentity`: a worker's TLS certificate and key,
            or a simulated owner's), a function making one on first use, or
            None (it then refuses secure aggregation).
    """

    def __init__(
        self, name: str, x: Any, y: Any, rules: OwnerRules | None = None, identity: Any = None
    ):
        self.name = name
        self._identity = identity
        self._identity_lock = threading.Lock()
        self.x, self.y = as_rows(x, y, name)
        self.rules = rules or OwnerRules()
        self.ledger = OwnerLedger(self.rules, name)
        self._jobs: collections.OrderedDict[str, _Job] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._summary = self._summarize()

    @property
    def identity(self) -> Any:
        """The owner's `OwnerIdentity`, or None."""
        if callable(self._identity):  # made on first use (simulated owners)
            with self._identity_lock:
                if callable(self._identity):
                    self._identity = self._identity()
        return self._identity

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, method: str, data: bytes) -> bytes:
        """The answer (bytes) to one request (bytes); errors travel back typed."""
        try:
            fields, arrays = wire.decode(data)
            if method == "describe":
                return wire.encode(self.describe().to_fields())
            if method == "configure":
                self.configure(JobSpec.from_fields(fields))
                return wire.encode({"ok": True})
            if method == "train":
                return wire.encode(*self.train(fields, arrays))
            if method == "evaluate":
                return wire.encode(*self.evaluate(fields, arrays))
            if method.startswith("aggregation/"):
                return wire.encode(*self._aggregation_message(method, fields, arrays))
            raise CapabilityError(
                "Expected a request in ['describe', 'configure', 'train', 'evaluate', "
                f"'aggregation/...']. Received: method={method!r}"
            )
        except Exception as error:  # the owner's boundary: errors travel back
            return error_message(error)

    # -- requests -----------------------------------------------------------------------------
    def _summarize(self) -> dict[str, Any]:
        y = self.y.astype(np.float64)
        finite_y = np.isfinite(y)
        return {
            "n_examples": len(self.x),
            "feature_shape": tuple(self.x.shape[1:]),
            "label_shape": tuple(self.y.shape[1:]),
            "label_min": float(y[finite_y].min()) if finite_y.any() else math.nan,
            "label_max": float(y[finite_y].max()) if finite_y.any() else math.nan,
            "labels_integral": bool(np.all(np.mod(y[finite_y], 1) == 0)),
            "nonfinite": tuple(
                part for part, values in (("x", self.x), ("y", y)) if not np.isfinite(values).all()
            ),
        }

    def describe(self) -> DataDescription:
        return DataDescription(
            name=self.name,
            allow=self.rules.allow,
            max_epsilon=self.rules.max_epsilon,
            delta=self.rules.delta,
            spent_epsilon=self.ledger.spent,
            **self._summary,
        )

    def configure(self, spec: JobSpec) -> None:
        """Checks a job against the owner's rules and budget and builds its local model."""
        if spec.kind not in self.rules.allow:
            raise OwnerRefusedError(
                f"owner {self.name!r} allows only {list(self.rules.allow)}; refused a "
                f"{spec.kind!r} job (its --allow does not list it)."
            )
        with self._lock:
            if spec.job_id not in self._jobs:
                self._configure(spec)

    def _configure(self, spec: JobSpec) -> None:
        batch_size = max(1, min(int(spec.batch_size), len(self.x)))
        local, policy = self._local_plan(spec, batch_size)
        local_ledger = None
        if local is not None:
            local_ledger = accounting.RoundLedger(self._delta(spec))
        planned = self._planned_epsilon(spec, local, local_ledger)
        self.ledger.check(spec.job_id, planned, f"job {spec.job_id} ({spec.kind})")
        key = f"{spec.job_id}/{policy.noise_multiplier if policy else None}/{batch_size}"
        trainer = trainer_for(
            key, lambda: LocalTrainer(spec.model, spec.compile, spec.proximal_mu, policy)
        )
        if trainer.layout.size != spec.weight_count:
            raise CapabilityError(
                f"Expected the job's model to have {spec.weight_count} weights. "
                f"Received: a model of {trainer.layout.size} weights"
            )
        protection = aggregation.OWNER_AGGREGATIONS.get(spec.aggregation)(
            self.name, spec, identity=self.identity
        )
        self._jobs[spec.job_id] = _Job(spec, trainer, protection, batch_size, local, local_ledger)
        while len(self._jobs) > _MAX_JOBS:
            self._jobs.popitem(last=False)

    def _delta(self, spec: JobSpec) -> float:
        if self.rules.delta is not None:
            return self.rules.delta
        if spec.local_privacy is not None:
            return float(spec.local_privacy["config"]["delta"])
        return float((spec.client_dp or {}).get("delta", 1e-5))

    def _local_plan(self, spec: JobSpec, batch_size: int):
        """(sample rate, noise, mechanisms per round) of local DP-SGD, and the DPSGD policy."""
        if spec.local_privacy is None:
            return None, None
        from privkeras import policies

        policy = policies.deserialize(spec.local_privacy)
        n, epochs = len(self.x), spec.local_epochs
        steps = epochs * math.ceil(n / batch_size)
        if policy.sampling == "poisson":
            rate, count = batch_size / n, steps
        else:  # shuffle: one unamplified Gaussian mechanism per epoch, as the DP-SGD engine counts
            rate, count = 1.0, epochs
        noise = policy.noise_multiplier
        if noise is None:  # target_epsilon over every round of the job, as if asked each time
            noise = accounting.calibrate_noise(
                policy.target_epsilon, rate, count * max(spec.rounds, 1), policy.delta
            )
            policy = dataclasses.replace(policy, noise_multiplier=noise, target_epsilon=None)
        return (rate, noise, count), policy

    def _planned_epsilon(self, spec, local, local_ledger) -> float:
        """What the whole job would spend on this owner's data if it were asked every round."""
        if spec.rounds == 0:  # evaluation only: spends nothing the ledger counts
            return 0.0
        if local is not None:
            rate, noise, count = local
            return local_ledger.projected([accounting.Mechanism(rate, noise, count * spec.rounds)])
        if spec.client_dp is not None:
            return _plan_epsilon(spec.client_dp, int(spec.client_dp["rounds"]), self._delta(spec))
        return math.inf

    def _job(self, fields: dict[str, Any]) -> _Job:
        job = self._jobs.get(fields.get("job_id"))
        if job is None:
            raise UnknownJobError(
                f"owner {self.name!r} has no job {fields.get('job_id')!r} "
                "(it was restarted or never configured)."
            )
        return job

    def _weights(self, job: _Job, arrays: dict[str, np.ndarray]) -> np.ndarray:
        weights = arrays.get("weights")
        if weights is None or weights.shape != (job.spec.weight_count,):
            raise PrivacyPolicyError(
                f"Expected weights of shape ({job.spec.weight_count},). "
                f"Received: {None if weights is None else weights.shape}"
            )
        return weights.astype(np.float32)

    def train(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]):
        """Local epochs from the global weights; the protected contribution of the update."""
        job = self._job(fields)
        spec, weights = job.spec, self._weights(job, arrays)
        if spec.rounds == 0:
            raise OwnerRefusedError(
                f"owner {self.name!r} was configured for evaluation only in job {spec.job_id}."
            )
        job_epsilon = self._round_epsilon(job, fields)
        fields = _with_bytes(fields, arrays)
        self.ledger.check(spec.job_id, job_epsilon, f"round {int(fields.get('round', 0)) + 1}")
        new_weights, metrics = job.trainer.train(
            self.x, self.y, weights, spec.local_epochs, job.batch_size, spec.shuffle
        )
        if job.local_ledger is not None:
            rate, noise, count = job.local
            job.local_ledger.record(rate, noise, count)
        self.ledger.commit(spec.job_id, job_epsilon)
        contribution = self._contribution(job, new_weights.astype(np.float64) - weights, fields)
        payload_fields, payload_arrays = job.protection.protect(contribution, fields)
        answer = {
            "n_examples": len(self.x),
            "metrics": metrics,
            "payload": payload_fields,
            "record_epsilon": None if job.local_ledger is None else job.local_ledger.epsilon(),
        }
        return answer, payload_arrays

    def _round_epsilon(self, job: _Job, fields: dict[str, Any]) -> float:
        """What the job will have spent on this owner's data once this round is trained."""
        if job.local is not None:
            rate, noise, count = job.local
            return job.local_ledger.projected([accounting.Mechanism(rate, noise, count)])
        plan = job.spec.client_dp
        if plan is None:
            return math.inf
        rounds = int(fields.get("client_rounds", int(fields.get("round", 0)) + 1))
        return _plan_epsilon(plan, rounds, self._delta(job.spec))

    def _contribution(self, job: _Job, update: np.ndarray, fields: dict) -> np.ndarray:
        """[weighted or clipped update, weight, (centred clip indicator)] as float32."""
        spec = job.spec
        tail = []
        if spec.weighting == "uniform":
            clip = float(fields.get("clip_norm") or spec.clip_norm)
            norm = float(np.linalg.norm(update))
            update = update * min(1.0, clip / norm) if norm > 0 else update
            tail.append(1.0)
            if spec.adaptive_clipping:
                tail.append((1.0 if norm <= clip else 0.0) - 0.5)
        else:
            weight = len(self.x) / float(spec.weight_scale or 1.0)
            update = update * weight
            tail.append(weight)
        return np.concatenate([update, np.asarray(tail)]).astype(np.float32)

    def evaluate(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]):
        """Loss and metrics of the global weights on the owner's rows."""
        job = self._job(fields)
        batch_size = int(fields.get("batch_size") or job.batch_size)
        metrics = job.trainer.evaluate(self.x, self.y, self._weights(job, arrays), batch_size)
        return {"n_examples": len(self.x), "metrics": metrics}, {}

    def _aggregation_message(self, method: str, fields: dict, arrays: dict):
        _, name, message = [*method.split("/", 2), "", ""][:3]
        job = self._job(fields)
        if job.protection.name != name:
            raise CapabilityError(
                f"Expected an aggregation message for {job.protection.name!r}. "
                f"Received: method={method!r}"
            )
        return job.protection.handle(message, fields, arrays)
