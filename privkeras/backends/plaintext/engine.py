"""Plain Keras, no privacy: the reference every engine is compared with."""

from __future__ import annotations

from typing import Any

from privkeras.backends.base import Engine
from privkeras.backends.registry import register_engine


@register_engine
class PlaintextEngine(Engine):
    """Runs every Keras entry point exactly as `keras.Sequential` does.

    `fit`, `predict`, `evaluate`, the `*_on_batch` calls and Keras's steps
    (also when called directly) are Keras's own, on the model's plaintext
    weights.
    """

    name = "plaintext"
    policy_kind = None
    TRAINS = PREDICTS = EVALUATES = True

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_fit(*args, **kwargs)

    def predict(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_predict(*args, **kwargs)

    def evaluate(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_evaluate(*args, **kwargs)

    def train_on_batch(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_train_on_batch(*args, **kwargs)

    def test_on_batch(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_test_on_batch(*args, **kwargs)

    def predict_on_batch(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.keras_predict_on_batch(*args, **kwargs)

    def train_step(self, model: Any, *data: Any) -> Any:
        return model.keras_train_step(*data)

    def test_step(self, model: Any, *data: Any) -> Any:
        return model.keras_test_step(*data)

    def predict_step(self, model: Any, *data: Any) -> Any:
        return model.keras_predict_step(*data)
