"""The DP-SGD engine: private training with Keras's own loop.

`fit` validates the request, samples batches (Poisson by default), swaps in
the DP train step for the Keras backend (`trainer.make_trainer`), and runs
`keras.Model.fit` with a `PrivacyMeter` first among the callbacks. `predict`
and `evaluate` are plain Keras: privacy is spent by training only.

Notes:
    The algorithm is DP-SGD (Abadi et al., "Deep Learning with Differential
    Privacy", CCS 2016): per-example clipping to `l2_norm_clip` in global L2
    norm, Gaussian noise of std `noise_multiplier * l2_norm_clip` on the
    sum, division by the expected batch size. Epsilon is for add-or-remove-one
    neighbouring datasets. Batch sampling and the noise come from the core's
    AES-256-CTR `SecureStream`, keyed from `os.urandom` at every `fit`, on
    every device and in every compile mode; never from the Keras seed. On
    CPU (and everywhere with `secure_noise=True`) the noisy gradient is the
    exactly rounded Gaussian mechanism (`noise.ExactGaussianNoise`), which
    closes the floating-point attacks of Mironov (CCS 2012) and Jin et al.
    (S&P 2022); accelerator and XLA models turn host-drawn AES-CTR words into
    float64 Gaussians in the step (`noise.gaussian_from_words`), whose tail
    cut at 12 sigma the report's `sampler_delta` accounts for.

    Between fits with the same model, loss and step constants, the trainer
    and the traced step are kept (a `fit` then costs what Keras's own costs
    plus the sampler, keyed afresh); the noise streams never are.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from privkeras.backends.base import Engine
from privkeras.backends.dpsgd import accountant as accounting
from privkeras.backends.dpsgd import validation
from privkeras.backends.dpsgd.meter import FitPlan, PrivacyMeter
from privkeras.backends.dpsgd.per_example_loss import PerExampleLoss
from privkeras.backends.dpsgd.sampling import SampledBatches, TrainingArrays, make_sampler
from privkeras.backends.dpsgd.trainer import DPTrainer, StepConfig, make_trainer
from privkeras.backends.registry import register_engine
from privkeras.errors import CapabilityError, PrivacyBudgetExceededError, PrivacyPolicyError

__all__ = ["DPSGDEngine"]

_ASSUMPTIONS = {
    "poisson": (
        "Poisson sampling at the reported sample rate (amplification by subsampling), "
        "add-or-remove-one neighbouring datasets."
    ),
    "shuffle": (
        "NO amplification by sampling: shuffled fixed-size batches are not Poisson samples, so "
        "epsilon is the unamplified bound. Each example is used once per epoch, each use a "
        "Gaussian mechanism with this noise multiplier, composed over the epochs."
    ),
}


@register_engine
class DPSGDEngine(Engine):
    """Trains with DP-SGD under the TensorFlow or torch Keras backend.

    Attributes:
        fast_clipping: True (default) uses the registered fast per-layer
            rules (book-keeping for Dense, Conv2D, Embedding); False computes
            every layer's per-example gradients by the vectorized fallback.
            Both give the same update; the switch exists to check that.
        noise_route: None (default) lets the device and compile mode choose
            where the noise is made; `"host"` or `"device"` forces one (for
            checks and benchmarks: the device route runs on CPU too).

    Example:

    ```python
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  privacy=pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1))
    model.fit(x, y, epochs=5, batch_size=64)
    model.privacy_report()["epsilon"]
    ```
    """

    name = "dpsgd"
    policy_kind = "dp-sgd"
    keras_backends = frozenset({"tensorflow", "torch"})
    TRAINS = PREDICTS = EVALUATES = True

    def __init__(self, policy):
        super().__init__(policy)
        self.fast_clipping = True
        self.noise_route: str | None = None  # None: chosen by device and compile mode
        self.ledger = accounting.PrivacyLedger(policy.delta, policy.accountant)
        self.noise_multiplier: float | None = policy.noise_multiplier
        self.steps = 0
        self._plan: FitPlan | None = None
        self._trainer: DPTrainer | None = None  # set only while a fit runs
        self._kept: _KeptStep | None = None  # the last fit's trainer and traced step
        self._clipping: dict[str, str] = {}
        self._noise_description = "none yet (no fit)"

    # -- fit ------------------------------------------------------------------------
    def fit(
        self,
        model: keras.Model,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: Any = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        class_weight: Any = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        **validation_options: Any,
    ):
        """`keras.Model.fit` with DP-SGD steps; returns Keras's `History`.

        `shuffle` is ignored: the policy's `sampling` decides the batches.
        History and the progress bar carry `epsilon`.

        Raises:
            PrivacyPolicyError: For bad arguments (batch size, data, loss,
                unreachable target_epsilon), before training.
            UnsupportedLayerError: For a layer DP-SGD cannot train, before training.
            PrivacyBudgetExceededError: When this fit would spend beyond
                `target_epsilon`, before its first step.
        """
        del shuffle
        arrays = TrainingArrays(x, y, sample_weight, class_weight)
        if validation_split and validation_data is None:
            arrays, validation_data = arrays.split(validation_split)
        plan = self._plan_fit(arrays, batch_size, epochs - initial_epoch, steps_per_epoch)
        validation.check_model_options(model)
        noise_multiplier = self._resolve_noise(plan)
        allowed = self._allowed_units(plan, noise_multiplier)
        trainer = self._trainer_for(model, arrays, plan, noise_multiplier)
        sampler = make_sampler(
            self.policy.sampling,
            plan.dataset_size,
            plan.batch_size,
            plan.steps_per_epoch,
        )
        self.ledger.plan(plan.planned_units, plan.segment(noise_multiplier, plan.units_per_epoch))
        meter = PrivacyMeter(
            self.ledger,
            plan,
            noise_multiplier,
            allowed,
            on_step=self._count_step,
            sampler_failure=trainer.failure_per_step * plan.steps_per_unit,
        )
        trainer.start_run()  # Fresh noise keys from os.urandom, every fit.
        self._plan, self._trainer, self._clipping = plan, trainer, trainer.describe()
        self._noise_description = trainer.describe_noise()
        model.train_function = self._kept.train_function  # None: traced in this fit
        try:
            return model.keras_fit(
                trainer.batches(SampledBatches(arrays, sampler)),
                epochs=epochs,
                verbose=verbose,
                shuffle=False,  # The sampler has drawn the batches.
                callbacks=[meter, *_as_list(callbacks)],
                validation_data=validation_data,
                initial_epoch=initial_epoch,
                **validation_options,
            )
        finally:
            trainer.end_run()
            self._trainer = None
            self._kept.train_function = model.train_function
            model.train_function = None  # train_on_batch must not reuse the DP step.

    def _trainer_for(self, model, arrays, plan, noise_multiplier) -> DPTrainer:
        """The last fit's trainer if nothing it depends on changed, else a new one.

        A new trainer checks the loss and the layers first (`loss.check` also
        builds an unbuilt model), and drops the traced step of the old one.
        """
        loss_sums = self._kept is not None and self._kept.loss.sums
        config = self._step_config(noise_multiplier, plan, loss_sums)
        key = _KeptStep.key_of(model, config)
        if self._kept is not None and self._kept.key == key:
            return self._kept.trainer
        loss = PerExampleLoss(model.loss)
        loss.check(model, arrays.x, arrays.y)  # Also builds an unbuilt model.
        validation.check_layers(model)
        config = self._step_config(noise_multiplier, plan, loss.sums)
        trainer = make_trainer(keras.backend.backend(), model, config, loss)
        self._kept = _KeptStep(_KeptStep.key_of(model, config), trainer, loss)
        return trainer

    def _step_config(self, noise_multiplier: float, plan: FitPlan, loss_sums: bool) -> StepConfig:
        return StepConfig(
            l2_norm_clip=self.policy.l2_norm_clip,
            noise_multiplier=noise_multiplier,
            divisor=1.0 if loss_sums else float(plan.batch_size),
            secure_noise=self.policy.secure_noise,
            fast_clipping=self.fast_clipping,
            noise_route=self.noise_route,
        )

    def _count_step(self) -> None:
        self.steps += 1

    def _plan_fit(self, arrays, batch_size, epochs, steps_per_epoch) -> FitPlan:
        n = len(arrays)
        batch_size = validation.check_batch_size(32 if batch_size is None else batch_size, n)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise PrivacyPolicyError(f"Expected epochs - initial_epoch >= 1. Received: {epochs}")
        if steps_per_epoch is not None and self.policy.sampling == "shuffle":
            raise PrivacyPolicyError(
                "With sampling='shuffle' each epoch is one pass over the data, so "
                f"steps_per_epoch is ceil(n / batch_size). Received: steps_per_epoch="
                f"{steps_per_epoch}"
            )
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool)
            or not isinstance(steps_per_epoch, int)
            or steps_per_epoch < 1
        ):
            raise PrivacyPolicyError(
                f"Expected steps_per_epoch to be a positive integer. Received: {steps_per_epoch!r}"
            )
        validation.check_delta(self.policy.delta, n)
        return FitPlan(
            n,
            batch_size,
            steps_per_epoch or math.ceil(n / batch_size),
            epochs,
            self.policy.sampling,
        )

    def _resolve_noise(self, plan: FitPlan) -> float:
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        target = self.policy.target_epsilon
        try:
            self.noise_multiplier = accounting.calibrate_noise(
                target,
                plan.unit_rate,
                plan.planned_units,
                self.policy.delta,
                self.policy.accountant,
                prior=self.ledger.segments,
            )
        except accounting.UnreachableEpsilonError as error:
            reachable = accounting.max_steps(
                target,
                plan.unit_rate,
                accounting.MAX_NOISE_MULTIPLIER,
                self.policy.delta,
                self.policy.accountant,
                prior=self.ledger.segments,
                limit=plan.planned_units,
            )
            epochs = reachable * plan.steps_per_unit // plan.steps_per_epoch
            raise PrivacyPolicyError(
                f"{error} With epochs={plan.epochs}, batch_size={plan.batch_size} and "
                f"n={plan.dataset_size}, target_epsilon={target} cannot be reached. "
                + (f"epochs={epochs} would reach it; " if epochs else "")
                + "a smaller batch_size, more data or a larger target_epsilon also would."
            ) from error
        return self.noise_multiplier

    def _allowed_units(self, plan: FitPlan, noise: float) -> int | None:
        target = self.policy.target_epsilon
        if target is None:
            return None
        planned = plan.segment(noise)
        if self.ledger.estimate(extra=[planned]) <= target:  # an upper bound: enough
            return plan.planned_units
        spent = self.ledger.epsilon(extra=[planned])
        if spent <= target:
            return plan.planned_units
        left = accounting.max_steps(
            target,
            plan.unit_rate,
            noise,
            self.policy.delta,
            self.policy.accountant,
            prior=self.ledger.segments,
            limit=plan.planned_units,
        )
        raise PrivacyBudgetExceededError(
            f"This fit plans {plan.planned_units} {plan.unit_name}, which would bring epsilon "
            f"to {spent:.4g}, beyond target_epsilon={target} (spent so far: "
            f"{self.ledger.epsilon():.4g}). The budget allows {left} more {plan.unit_name}; "
            "no step was taken."
        )

    # -- the DP step, called by PrivateSequential.train_step ---------------------------------
    def train_step(self, model: keras.Model, data: Any):
        if self._trainer is None:
            raise CapabilityError(
                f"Engine {self.name!r}: DP-SGD steps run only inside fit(), which samples the "
                "batches and accounts for them; train_on_batch would bypass both. Use fit()."
            )
        return self._trainer.train_step(data)

    # -- inference is plain Keras ------------------------------------------------------
    def predict(self, model: keras.Model, *args: Any, **kwargs: Any):
        return model.keras_predict(*args, **kwargs)

    def evaluate(self, model: keras.Model, *args: Any, **kwargs: Any):
        return model.keras_evaluate(*args, **kwargs)

    # -- report ---------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Epsilon spent so far and everything it depends on.

        Returns:
            A dict with `epsilon` (exact: the accountant at its finest
            discretization), `delta` (the guarantee's: `accountant_delta`, the
            policy's, plus `sampler_delta`, what the noise sampler adds,
            computed from its tails), `steps`, `sample_rate`,
            `noise_multiplier`, `l2_norm_clip`, `sampling`, `accountant`,
            `epsilon_assumes` (what the epsilon relies on), `noise` (how it
            is drawn), `secure_noise`, `target_epsilon`, `dataset_size`,
            `batch_size`, `clipping` (how each layer's per-example gradients
            are computed) and `policy`.
        """
        plan = self._plan
        epsilon = self.ledger.epsilon()
        sampler_delta = self.ledger.sampler_delta(epsilon)
        return {
            **super().report(),
            "epsilon": epsilon,
            "delta": self.policy.delta + sampler_delta,
            "accountant_delta": self.policy.delta,
            "sampler_delta": sampler_delta,
            "steps": self.steps,
            "sample_rate": None if plan is None else plan.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "l2_norm_clip": self.policy.l2_norm_clip,
            "sampling": self.policy.sampling,
            "accountant": self.policy.accountant,
            "epsilon_assumes": _ASSUMPTIONS[self.policy.sampling],
            "noise": self._noise_description,
            "secure_noise": self.policy.secure_noise,
            "target_epsilon": self.policy.target_epsilon,
            "dataset_size": None if plan is None else plan.dataset_size,
            "batch_size": None if plan is None else plan.batch_size,
            "clipping": dict(self._clipping),
        }


class _KeptStep:
    """A fit's trainer and traced step, reused by the next fit with the same key."""

    def __init__(self, key: tuple, trainer: DPTrainer, loss: PerExampleLoss):
        self.key, self.trainer, self.loss = key, trainer, loss
        self.train_function = None

    @staticmethod
    def key_of(model: keras.Model, config: StepConfig) -> tuple:
        """What the trainer and its trace depend on (weights' values excepted)."""
        return (
            keras.backend.backend(),
            config,
            id(model.loss),
            id(model.optimizer),
            bool(model.jit_compile),
            tuple(id(v) for v in model.trainable_variables),
            tuple(id(layer) for layer in model.layers),
        )


def _as_list(callbacks: Any) -> list:
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return list(callbacks.callbacks)
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
