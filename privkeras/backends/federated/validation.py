"""Checks, before round 1, that every owner's data fits the model.

Owners describe their data (`DataDescription`: counts, shapes, label range,
finiteness); the coordinator compares with the model's input and output and
its loss, and names every owner that does not fit, with what was expected
and what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privkeras.backends.federated.errors import OwnerDataError
from privkeras.backends.federated.protocol import DataDescription

__all__ = ["check_owners", "loss_name"]


def loss_name(loss: Any) -> str:
    """The model's loss as a snake_case name (`"sparse_categorical_crossentropy"`, ...)."""
    if isinstance(loss, str):
        return loss.lower()
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__
    return str(name).lower()


def _label_problem(desc: DataDescription, loss: str, output_shape: tuple) -> str | None:
    units = output_shape[-1] if output_shape else 1
    if "sparse_categorical" in loss:
        if desc.label_shape not in ((), (1,)):
            return f"expected one class index per row. Received: label_shape={desc.label_shape}"
        if not desc.labels_integral or desc.label_min < 0 or desc.label_max >= units:
            return (
                f"expected whole-number labels in [0, {units - 1}] for {units} output units. "
                f"Received: labels in [{desc.label_min:g}, {desc.label_max:g}]"
                + ("" if desc.labels_integral else " (not whole numbers)")
            )
        return None
    if loss.startswith(("categorical", "binary")) and (desc.label_min < 0 or desc.label_max > 1):
        return (
            f"expected labels in [0, 1] for {loss}. "
            f"Received: labels in [{desc.label_min:g}, {desc.label_max:g}]"
        )
    shape = tuple(output_shape)
    if desc.label_shape != shape and not (desc.label_shape == () and shape == (1,)):
        return f"expected labels of shape {shape}. Received: label_shape={desc.label_shape}"
    return None


def _problems(desc: DataDescription, input_shape: tuple, output_shape: tuple, loss: str):
    if desc.n_examples < 1:
        yield f"expected at least one row. Received: n_examples={desc.n_examples}"
    if desc.feature_shape != input_shape:
        yield f"expected features of shape {input_shape}. Received: feature_shape={desc.feature_shape}"
    if desc.nonfinite:
        yield f"expected finite values. Received: NaN or infinities in {list(desc.nonfinite)}"
    elif (problem := _label_problem(desc, loss, output_shape)) is not None:
        yield problem


def check_owners(descriptions: Sequence[DataDescription], model: Any) -> None:
    """Raises `OwnerDataError` naming each owner whose data does not fit `model`."""
    input_shape = tuple(model.input_shape[1:])
    output_shape = tuple(model.output_shape[1:])
    loss = loss_name(model.loss)
    lines = [
        f"owner {desc.name!r}: {problem}"
        for desc in descriptions
        for problem in _problems(desc, input_shape, output_shape, loss)
    ]
    if lines:
        raise OwnerDataError(
            "Data of these owners does not fit the model (nothing was trained):\n  "
            + "\n  ".join(lines)
        )
