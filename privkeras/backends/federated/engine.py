"""The federated engine: `model.fit(FederatedData(...))` trains on owners who keep their rows.

`fit` checks every owner's data against the model (before round 1), sends
the job (the model's Keras configs, local settings, the privacy plan) to
every owner, calibrates the client-level noise for `target_epsilon`, and
runs `Federated.rounds` rounds (`coordinator.FederatedRound`). It speaks
Keras: a `keras.callbacks.CallbackList` where a round is an epoch
(`on_epoch_end` at each round's end, so `EarlyStopping` and
`ModelCheckpoint` work), a real `History` with the round's loss and
metrics (averaged over the answering owners, weighted by their example
counts), `owners` (how many answered) and `epsilon`, and a progress bar
counting the owners that answered.

Simulated owners (`FederatedData.simulate`) and worker processes
(`DataOwner`) go through the same code; only the transport differs.

Notes:
    The guarantee with `clip_norm` and noise is client-level
    (add-or-remove-one-owner) (epsilon, delta)-DP of the sequence of global
    models, for a coordinator that adds the noise (`dp="central"`): see
    `coordinator` for the mechanism and `accounting` for the accountant.
    The logged loss and metrics are computed from what owners report and are
    not covered by epsilon (as in Flower and TensorFlow Federated); neither
    are evaluation metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import warnings
from typing import Any

import keras

from privkeras.backends import keras_loop
from privkeras.backends.base import Engine
from privkeras.backends.federated import accounting, aggregation, server_optimizers
from privkeras.backends.federated.coordinator import (
    ClientDP,
    CohortRunner,
    FederatedRound,
    RoundOutcome,
    reason,
    weighted_logs,
)
from privkeras.backends.federated.data import FederatedData
from privkeras.backends.federated.errors import OwnerDataError, OwnerRefusedError
from privkeras.backends.federated.local_training import WeightLayout
from privkeras.backends.federated.progress import RoundProgress
from privkeras.backends.federated.protocol import JobSpec, OwnerProtocol
from privkeras.backends.federated.validation import check_owners
from privkeras.backends.registry import register_engine
from privkeras.errors import (
    AuthenticationError,
    CapabilityError,
    PartyError,
    PrivacyBudgetExceededError,
    PrivacyPolicyError,
)

__all__ = ["FederatedEngine"]

#: `keras.Model.fit` arguments that have no meaning on owners' data.
_UNSUPPORTED_FIT_ARGUMENTS = (
    "validation_split",
    "class_weight",
    "sample_weight",
    "steps_per_epoch",
    "validation_steps",
)


@register_engine
class FederatedEngine(Engine):
    """Federated training (FedAvg family, client-level DP, owners' own budgets).

    Example:

    ```python
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"],
                  privacy=pk.Federated(rounds=10, clip_norm=1.0, noise_multiplier=1.0))
    history = model.fit(pk.FederatedData.simulate(partitions), batch_size=32)
    history.history["epsilon"][-1]
    ```
    """

    name = "federated"
    policy_kind = "federated"
    keras_backends = frozenset({"tensorflow", "torch"})
    TRAINS = PREDICTS = EVALUATES = True

    def __init__(self, policy):
        super().__init__(policy)
        self.ledger = accounting.RoundLedger(policy.delta)
        self.noise_multiplier: float | None = policy.noise_multiplier
        self.clip_norm: float | None = policy.clip_norm
        self.rounds_run = 0
        self.history: list[dict[str, Any]] = []
        self.record_epsilon: dict[str, float] = {}
        self._job: JobSpec | None = None
        self._job_owners: tuple[str, ...] = ()

    @classmethod
    def training_data_from_arrays(cls, x: Any, y: Any) -> tuple[Any, Any]:
        """The caller's rows as two simulated owners (what `fit` takes: a `FederatedData`)."""
        half = len(x) // 2
        return FederatedData.simulate([(x[:half], y[:half]), (x[half:], y[half:])]), None

    # -- fit --------------------------------------------------------------------------------
    def fit(
        self,
        model: Any,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int | None = None,
        verbose: Any = "auto",
        callbacks: Any = None,
        validation_data: Any = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        **options: Any,
    ) -> keras.callbacks.History:
        """Runs `Federated.rounds` rounds on the owners of `x` (a `FederatedData`).

        Args:
            model: The compiled model; its optimizer, loss and metrics are the owners' local ones.
            x: A `FederatedData`.
            y: Must be None (each owner holds its labels).
            batch_size: Owners' local batch size (default 32).
            epochs: None, or `Federated.rounds` (rounds come from the policy).
            verbose: 0, 1 (a bar per round), 2 (a line per round) or "auto".
            callbacks: Keras callbacks; an epoch is a round.
            validation_data: A `FederatedData` (owners evaluate) or `(x, y)`
                held by the coordinator; fills `val_*` logs each round.
            shuffle: Whether owners shuffle their rows each local epoch.
            initial_epoch: Round to start from (for resuming).

        Returns:
            A `keras.callbacks.History`.

        Raises:
            OwnerDataError: An owner's data does not fit the model (before round 1).
            OwnerRefusedError, PrivacyBudgetExceededError: An owner refuses the job.
            PartyError: An owner cannot be reached before round 1, or a round
                has fewer than `min_owners` answers (naming the missing owners).
        """
        data = self._check_fit_arguments(x, y, epochs, initial_epoch, options)
        batch_size = _check_batch_size(batch_size)
        owners = {client.name: client for client in data.clients()}
        runner = CohortRunner(self.policy.timeout)
        try:
            descriptions = self._describe_and_check(owners, runner, model)
            rounds_left = self.policy.rounds - initial_epoch
            aggregator = self._aggregator(len(owners))
            update_size = WeightLayout(model.weights).size
            client_dp = self._resolve_client_dp(len(owners), rounds_left, aggregator, update_size)
            job = self._job_spec(
                model, batch_size, shuffle, client_dp, aggregator.name, rounds_left
            )
            if self.policy.secure_aggregation:
                job = _secure_job(job, descriptions, len(owners), client_dp, self.policy)
            self._configure(owners, runner, job)
            rounds = FederatedRound(
                job=job,
                owners=owners,
                runner=runner,
                aggregator=aggregator,
                server_optimizer=server_optimizers.get(
                    self.policy.server_optimizer, self.policy.server_learning_rate
                ),
                fraction_fit=self.policy.fraction_fit,
                min_owners=self.policy.min_owners,
                client_dp=client_dp,
                ledger=self.ledger,
                dp=self.policy.dp,
            )
            return self._run_rounds(
                model, rounds, runner, verbose, callbacks, validation_data, initial_epoch
            )
        finally:
            runner.close()

    def _check_fit_arguments(self, x, y, epochs, initial_epoch, options) -> FederatedData:
        for name in _UNSUPPORTED_FIT_ARGUMENTS:
            value = options.pop(name, None)
            if value is not None and not (name == "validation_split" and value == 0):
                raise CapabilityError(
                    f"Engine {self.name!r} does not support fit({name}=...): the rows stay "
                    f"with their owners. Received: {name}={value!r}"
                )
        if options:
            raise TypeError(f"fit() got unexpected arguments: {sorted(options)}")
        if not isinstance(x, FederatedData):
            raise PrivacyPolicyError(
                "Expected fit(pk.FederatedData(owners)) (or FederatedData.simulate(partitions)) "
                f"under the Federated policy. Received: x of type {type(x).__name__}"
            )
        if y is not None:
            raise PrivacyPolicyError(
                "Expected y=None with FederatedData (each owner holds its own labels). "
                f"Received: y of type {type(y).__name__}"
            )
        if epochs is not None and epochs != self.policy.rounds:
            raise PrivacyPolicyError(
                f"Expected epochs=None: federated training runs Federated.rounds="
                f"{self.policy.rounds} rounds (set rounds= in the policy). Received: epochs={epochs!r}"
            )
        if not (isinstance(initial_epoch, int) and 0 <= initial_epoch < self.policy.rounds):
            raise PrivacyPolicyError(
                f"Expected initial_epoch in [0, {self.policy.rounds - 1}]. "
                f"Received: initial_epoch={initial_epoch!r}"
            )
        if self.policy.min_owners > len(x):
            raise PrivacyPolicyError(
                f"Expected at least Federated.min_owners={self.policy.min_owners} owners. "
                f"Received: {len(x)} owners ({x.names})"
            )
        return x

    def _describe_and_check(self, owners, runner: CohortRunner, model) -> dict[str, Any]:
        if not model.built:
            raise CapabilityError(
                "Expected a built model (start it with keras.Input(shape)) for federated "
                "training: the owners build theirs from its config."
            )
        descriptions, failures = runner.call(owners, lambda owner: owner.describe(runner.timeout))
        _raise_failures(failures, "describe their data")
        check_owners([descriptions[name] for name in owners], model)
        return descriptions

    def _resolve_client_dp(
        self, n_owners: int, rounds: int, aggregator: aggregation.Aggregator, update_size: int
    ) -> ClientDP | None:
        policy = self.policy
        if policy.clip_norm is None:
            return None
        expected = policy.fraction_fit * n_owners
        if policy.delta >= 1.0 / n_owners:
            warnings.warn(
                f"Federated(delta={policy.delta:g}) is not below 1/n = {1 / n_owners:.3g} for "
                f"n={n_owners} owners: such a delta lets a mechanism publish one owner's "
                "update outright. Use delta well below 1/n.",
                UserWarning,
                stacklevel=4,
            )
        noise = self.noise_multiplier
        if noise is None and aggregator.owners_add_noise:  # accounted as the owners' mechanism
            noise = accounting.calibrate_rdp_noise(
                policy.target_epsilon,
                rounds,
                self.ledger,
                lambda z: aggregator.privacy_cost(
                    None, z, policy.fraction_fit, n_owners, update_size
                ),
            )
            self.noise_multiplier = noise
        elif noise is None:
            noise = accounting.calibrate_noise(
                policy.target_epsilon,
                policy.fraction_fit,
                rounds,
                policy.delta,
                prior=self.ledger.mechanisms,
            )
            self.noise_multiplier = noise
        return ClientDP.resolve(
            self.clip_norm or policy.clip_norm, noise, expected, policy.adaptive_clipping
        )

    def _aggregator(self, n_owners: int) -> aggregation.Aggregator:
        policy = self.policy
        name = aggregation.SECURE if policy.secure_aggregation else aggregation.PLAIN
        if policy.secure_aggregation and n_owners < 2:
            raise PrivacyPolicyError(
                "Expected at least 2 owners with Federated(secure_aggregation=True): the "
                f"coordinator learns the sum, which for one owner is its update. "
                f"Received: {n_owners} owner"
            )
        if policy.dp == "distributed" and policy.adaptive_clipping:
            raise CapabilityError(
                "Federated(dp='distributed') does not support adaptive_clipping: the clipping "
                "indicator would need noise of its own added by the owners. Received: "
                "adaptive_clipping=True"
            )
        if name not in aggregation.AGGREGATORS and name == aggregation.SECURE:
            with contextlib.suppress(ImportError):  # registers itself when it ships
                importlib.import_module("privkeras.backends.federated.secagg")
        if name not in aggregation.AGGREGATORS:
            raise CapabilityError(
                "Federated(secure_aggregation=True) needs the secure aggregation "
                f"{name!r}, which is not installed; registered aggregations: "
                f"{aggregation.AGGREGATORS.names()}."
            )
        aggregator = aggregation.get_aggregator(name, dp=policy.dp)
        if policy.secure_aggregation:
            aggregator.min_owners = policy.min_owners  # rounds (and their accounting) need them
        if policy.dp == "distributed" and not aggregator.owners_add_noise:
            raise CapabilityError(
                f"Federated(dp='distributed') needs an aggregation whose owners add the noise; "
                f"{name!r} does not."
            )
        return aggregator

    def _job_spec(self, model, batch_size, shuffle, client_dp, aggregation_name, rounds) -> JobSpec:
        policy = self.policy
        plan = None
        if client_dp is not None and client_dp.noise_multiplier > 0:
            plan = {
                "sample_rate": policy.fraction_fit,
                "noise_multiplier": client_dp.noise_multiplier,
                "rounds": rounds,
                "delta": policy.delta,
                "placement": policy.dp,
            }
        local = policy.local_privacy
        return JobSpec(
            job_id=os.urandom(8).hex(),
            model=keras.saving.serialize_keras_object(model),
            compile=keras.Model.get_compile_config(model),
            weight_count=WeightLayout(model.weights).size,
            rounds=rounds,
            batch_size=batch_size,
            local_epochs=policy.local_epochs,
            shuffle=bool(shuffle),
            proximal_mu=policy.proximal_mu,
            weighting="uniform" if client_dp is not None else "examples",
            clip_norm=None if client_dp is None else client_dp.clip_norm,
            adaptive_clipping=bool(client_dp and client_dp.adaptive),
            client_dp=plan,
            local_privacy=None if local is None else local.get_config(),
            aggregation=aggregation_name,
        )

    def _configure(self, owners, runner: CohortRunner, job: JobSpec) -> None:
        _, failures = runner.call(owners, lambda owner: owner.configure(job, runner.timeout))
        _raise_failures(failures, "accept the job")
        self._job, self._job_owners = job, tuple(sorted(owners))

    # -- rounds -----------------------------------------------------------------------------
    def _run_rounds(
        self, model, rounds: FederatedRound, runner, verbose, callbacks, validation_data, initial
    ) -> keras.callbacks.History:
        verbose = 1 if verbose == "auto" else int(verbose)
        total = self.policy.rounds
        progress = RoundProgress(total, verbose) if verbose else None
        history = keras.callbacks.History()
        extra = [progress] if progress else []
        callback_list = keras_loop.callback_list(
            [*extra, *_as_list(callbacks), history], model, 0, steps=None, epochs=total
        )
        layout = WeightLayout(model.weights)
        model.stop_training = False
        callback_list.on_train_begin()
        logs: dict[str, float] = {}
        for round_index in range(initial, total):
            cohort = rounds.sample()
            if progress:
                progress.begin(len(cohort))
            callback_list.on_epoch_begin(round_index)
            weights = layout.flatten(model.get_weights())
            outcome = rounds.run(
                self.rounds_run, weights, cohort, progress.answered if progress else None
            )
            model.set_weights(layout.unflatten(outcome.weights))
            self.rounds_run += 1
            logs = self._round_logs(outcome, rounds, model, runner, validation_data)
            self._remember(round_index, outcome)
            callback_list.on_epoch_end(round_index, logs)
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
        return history

    def _round_logs(self, outcome: RoundOutcome, rounds: FederatedRound, model, runner, val):
        logs = dict(outcome.logs)
        logs["owners"] = float(len(outcome.survivors))
        if rounds.client_dp is not None:
            logs["epsilon"] = self.ledger.epsilon()
            self.clip_norm = rounds.client_dp.clip_norm
            if rounds.client_dp.adaptive:
                logs["clip_norm"] = self.clip_norm
        self.record_epsilon.update(outcome.record_epsilon)
        if self.record_epsilon:
            logs["record_epsilon"] = max(self.record_epsilon.values())
        if val is not None:
            val_logs = self._validation_logs(model, val, runner)
            logs.update({f"val_{name}": value for name, value in val_logs.items()})
        return logs

    def _validation_logs(self, model, validation_data, runner) -> dict[str, float]:
        if isinstance(validation_data, FederatedData):
            return self._federated_evaluate(model, validation_data, None, runner)
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise PrivacyPolicyError(
                "Expected validation_data to be a FederatedData or (x, y). "
                f"Received: {type(validation_data).__name__}"
            )
        x_val, y_val = validation_data
        return keras_loop.as_floats(model.keras_evaluate(x_val, y_val, verbose=0, return_dict=True))

    def _remember(self, round_index: int, outcome: RoundOutcome) -> None:
        self.history.append(
            {
                "round": round_index + 1,
                "cohort": outcome.cohort,
                "answered": outcome.survivors,
                "dropped": outcome.dropped,
                "seconds": outcome.seconds,
                "bytes_down": outcome.bytes_down,
                "bytes_up": outcome.bytes_up,
                **({"aggregation": outcome.aggregation} if outcome.aggregation else {}),
            }
        )

    # -- evaluate / predict -----------------------------------------------------------------
    def evaluate(
        self,
        model: Any,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: Any = "auto",
        return_dict: bool = False,
        callbacks: Any = None,
        **kwargs: Any,
    ) -> Any:
        """On a `FederatedData`: each owner evaluates the global model on its rows; the
        loss and metrics are averaged weighted by example counts. On arrays: Keras's evaluate."""
        if not isinstance(x, FederatedData):
            return model.keras_evaluate(
                x,
                y,
                batch_size=batch_size,
                verbose=verbose,
                return_dict=return_dict,
                callbacks=callbacks,
                **kwargs,
            )
        if y is not None or kwargs:
            raise PrivacyPolicyError(
                "Expected evaluate(FederatedData) without y or other arguments. "
                f"Received: y={type(y).__name__}, {sorted(kwargs)}"
            )
        verbose = 1 if verbose == "auto" else int(verbose)
        runner = CohortRunner(self.policy.timeout)
        try:
            logs = self._federated_evaluate(model, x, batch_size, runner, verbose, callbacks)
        finally:
            runner.close()
        return keras_loop.evaluate_result(logs, return_dict)

    def _federated_evaluate(
        self, model, data: FederatedData, batch_size, runner, verbose=0, callbacks=None
    ) -> dict[str, float]:
        owners = {client.name: client for client in data.clients()}
        job = self._job
        if job is None or not set(owners) <= set(self._job_owners):
            self._describe_and_check(owners, runner, model)
            job = self._job_spec(model, _check_batch_size(batch_size), False, None, "plain", 0)
            _, failures = runner.call(owners, lambda owner: owner.configure(job, runner.timeout))
            _raise_failures(failures, "accept the evaluation")
        weights = WeightLayout(model.weights).flatten(model.get_weights())
        size = _check_batch_size(batch_size) if batch_size is not None else job.batch_size
        progress = RoundProgress(1, verbose, what="Evaluation") if verbose else None
        callback_list = keras_loop.callback_list(
            [*([progress] if progress else []), *_as_list(callbacks)], model, 0, steps=None
        )
        if progress:
            progress.begin(len(owners))
        callback_list.on_test_begin()

        def evaluate(owner: OwnerProtocol):
            return owner.evaluate(job.job_id, weights, size, runner.timeout)

        results, failures = runner.call(owners, evaluate, progress.answered if progress else None)
        _raise_failures(failures, "evaluate")
        logs = weighted_logs(results)
        callback_list.on_test_end(logs)
        return logs

    def predict(self, model: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras's predict on the coordinator's inputs with the global model."""
        return model.keras_predict(x, *args, **kwargs)

    # -- report -----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        policy = self.policy
        dp = policy.clip_norm is not None
        distributed = policy.dp == "distributed"
        who = (
            "the owners before masking (distributed discrete Gaussian, Kairouz, Liu and "
            "Steinke 2021): the coordinator is not trusted with it"
            if distributed
            else "the coordinator (dp='central': it is trusted to add it)"
        )
        return {
            "policy": policy.describe(),
            "rounds": self.rounds_run,
            "epsilon": self.ledger.epsilon() if dp else math.inf,
            "delta": policy.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "guarantee": (
                "client-level (add-or-remove-one owner) DP of the global models, Poisson "
                f"sampling of owners at rate {policy.fraction_fit:g}, noise added by {who}"
                if dp
                else "none: updates are not clipped or noised (epsilon is infinite)"
            ),
            "secure_aggregation": (
                "SecAgg+ (the coordinator learns only the sum of the survivors' updates)"
                if policy.secure_aggregation
                else "off (the coordinator sees each update)"
            ),
            "accountant": (
                "rdp (distributed discrete Gaussian, dp-accounting)"
                if self.ledger.rdp_rounds
                else "pld (dp-accounting)"
            ),
            "record_epsilon": dict(self.record_epsilon),
            "round_log": list(self.history),
        }


#: Before round 1, an owner's failure of one of these types is raised as that type.
_TYPED_FAILURES = (
    PrivacyBudgetExceededError,
    AuthenticationError,
    OwnerDataError,
    OwnerRefusedError,
    CapabilityError,
)


def _raise_failures(failures: dict[str, Exception], what: str) -> None:
    """Before round 1 every owner must answer; the error names each one that did not."""
    if not failures:
        return
    lines = "; ".join(f"{name}: {reason(error)}" for name, error in sorted(failures.items()))
    message = f"These owners did not {what}: {lines}"
    for cls in _TYPED_FAILURES:
        if any(isinstance(error, cls) for error in failures.values()):
            raise cls(message)
    raise PartyError(message)


def _secure_job(job: JobSpec, descriptions, n_owners: int, client_dp, policy) -> JobSpec:
    """The job under secure aggregation: bounded example weights, the owners' DP plan."""
    changes: dict[str, Any] = {}
    if job.weighting == "examples":  # n_i / max n keeps every weighted value within the ring
        changes["weight_scale"] = float(max(d.n_examples for d in descriptions.values()))
    if job.client_dp is not None and job.client_dp.get("placement") == "distributed":
        changes["client_dp"] = {
            **job.client_dp,
            "vector_length": job.weight_count,
            "num_owners": n_owners,
            "min_owners": policy.min_owners,
            "clip_norm": client_dp.clip_norm,
        }
    return dataclasses.replace(job, **changes)


def _check_batch_size(batch_size: Any) -> int:
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrivacyPolicyError(
            f"Expected batch_size to be a positive integer. Received: batch_size={batch_size!r}"
        )
    return batch_size


def _as_list(callbacks: Any) -> list:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
