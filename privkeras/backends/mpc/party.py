"""What a compute party (or Pond's dealer) does with a job it receives.

The party rebuilds the model's architecture from the job's JSON (it never
sees a weight: the model owner shares them), lowers it exactly as the driver
did, and runs the same job function as the driver (`run_predict`,
`trainer.run_fit`) on its own runtime, with no-op hooks. Every value it
holds is a share component of its own; what it reveals goes to the roles the
reveal log names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.jobs import Hooks, JobSpec, run_predict
from privkeras.backends.mpc.layers import SecureProgram
from privkeras.backends.mpc.losses import get_loss
from privkeras.backends.mpc.optimizers import get_optimizer
from privkeras.backends.mpc.placement import Remote
from privkeras.backends.mpc.roles import MODEL_OWNER
from privkeras.backends.mpc.shared_data import SharedData
from privkeras.backends.mpc.trainer import TrainingPlan, run_fit

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime

__all__ = ["build_program", "run_job"]


def build_program(spec: JobSpec) -> tuple[Any, SecureProgram]:
    """The Keras model (architecture only) and its secure program, as the driver lowered it.

    Raises:
        MPCInputError: For a model the job describes that cannot be rebuilt,
            or whose input shape differs from the job's.
    """
    import keras

    from privkeras.models import PrivateSequential

    try:
        model = keras.models.model_from_json(
            spec.model, custom_objects={"PrivateSequential": PrivateSequential}
        )
    except Exception as error:  # any malformed architecture from the wire
        raise MPCInputError(
            f"Expected a Keras model architecture in the job. Received one that fails to "
            f"load: {type(error).__name__}: {error}"
        ) from None
    if tuple(model.input_shape[1:]) != spec.input_shape:
        raise MPCInputError(
            f"Expected a model with input shape {spec.input_shape}. "
            f"Received: {tuple(model.input_shape[1:])}"
        )
    return model, SecureProgram.lower(model, spec.engine, training=spec.kind == "fit")


def run_job(spec: JobSpec, runtime: MPCRuntime) -> None:
    """Runs `spec` as the roles of `runtime`'s placement (a party, or the dealer)."""
    if spec.kind == "session":
        from privkeras.backends.mpc.session import serve_session

        serve_session(runtime)
        return
    import keras

    _, program = build_program(spec)
    if spec.kind == "predict":
        params = program.share_params(runtime, MODEL_OWNER)
        rows = Remote((spec.rows, *spec.input_shape))
        run_predict(runtime, program, params, rows, spec.batch_size, spec.what)
        return
    loss_config = spec.loss if isinstance(spec.loss, str) else keras.losses.deserialize(spec.loss)
    loss = get_loss(loss_config, spec.engine)
    plan = TrainingPlan(
        program=program,
        loss=loss,
        optimizer=get_optimizer(keras.optimizers.deserialize(spec.optimizer), spec.engine),
        data=SharedData.remote(spec.owners, spec.sizes, spec.input_shape, spec.target_shapes),
        fused=loss.fuses(program.last_activation),
        batch_size=spec.batch_size,
    )
    schedule = spec.fit_schedule
    validation = (
        Remote((schedule.validation_rows, *spec.input_shape)) if schedule.validation_rows else None
    )
    run_fit(runtime, plan, schedule, Hooks(), validation=validation)
