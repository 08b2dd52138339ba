"""The engine interface every privacy engine implements."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from privkeras.errors import CapabilityError

if TYPE_CHECKING:
    from privkeras.policies import Policy


class Engine(abc.ABC):
    """Runs a Keras model under one privacy policy.

    An engine class declares what it is with class attributes that both the
    registry and the tests read:

    - `name`: the registry key, e.g. `"plaintext"`, `"dpsgd"`, `"mpc-torch"`.
    - `policy_kind`: the `Policy.kind` it serves (`None` for no privacy).
    - `keras_backends`: Keras backends it runs under.
    - `variant`: for policies that name an engine (`MPC(engine="tfe")`), the
      value of that field this engine answers to.
    - capability flags `TRAINS`, `PREDICTS`, `EVALUATES`, `EXPORTS`.

    An instance is made per `compile`, holding the policy. The model calls
    `fit`, `predict`, `evaluate` and `export` on it; an engine that trains with
    Keras's own loop may also provide `train_step`.
    """

    name: ClassVar[str]
    policy_kind: ClassVar[str | None]
    keras_backends: ClassVar[frozenset[str]] = frozenset({"tensorflow", "torch", "jax"})
    variant: ClassVar[str | None] = None

    TRAINS: ClassVar[bool] = False
    PREDICTS: ClassVar[bool] = False
    EVALUATES: ClassVar[bool] = False
    EXPORTS: ClassVar[bool] = False

    def __init__(self, policy: Policy | None):
        self.policy = policy

    def _refuse(self, operation: str) -> CapabilityError:
        return CapabilityError(
            f"Engine {self.name!r} does not support {operation}(). "
            f"It supports: {sorted(self.capabilities())}."
        )

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """The operations this engine offers, read from its flags."""
        flags = {
            "fit": cls.TRAINS,
            "predict": cls.PREDICTS,
            "evaluate": cls.EVALUATES,
            "export": cls.EXPORTS,
        }
        return frozenset(op for op, on in flags.items() if on)

    def on_compile(self, model: Any) -> None:  # noqa: B027 - optional hook
        """Called once when the model is compiled with this engine's policy."""

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("fit")

    def predict(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("predict")

    def evaluate(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("evaluate")

    def export(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("export")

    def report(self) -> dict[str, Any]:
        """What the engine has to say about privacy spent so far."""
        return {"policy": None if self.policy is None else self.policy.describe()}
