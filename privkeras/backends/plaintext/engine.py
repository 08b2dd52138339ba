"""Plain Keras, no privacy: the reference every engine is compared with."""

from __future__ import annotations

from typing import Any

from privkeras.backends.base import Engine
from privkeras.backends.registry import register_engine


@register_engine
class PlaintextEngine(Engine):
    """Runs `fit`, `predict` and `evaluate` exactly as `keras.Sequential` does."""

    name = "plaintext"
    policy_kind = None
    TRAINS = PREDICTS = EVALUATES = True

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_fit(*args, **kwargs)

    def predict(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_predict(*args, **kwargs)

    def evaluate(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_evaluate(*args, **kwargs)
