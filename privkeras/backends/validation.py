"""Checks on the data handed to `fit`, `evaluate`, `predict` and the `*_on_batch` calls.

`PrivateSequential` runs `check_call` once per call, before it routes the
call to any engine, on numpy arrays and tensors: so every engine refuses the
same mistake with the same `InvalidInputError` and the same message, before
any step, share or ciphertext. Datasets, generators, `PyDataset`s and nested
structures are left to the engine (which may run `check_arrays` on each batch
it draws).

What is refused:

- NaN and infinities in `x`, `y` or `sample_weight` (one pass over the data,
  done once per call: about 10 ms for MNIST's 60,000 x 784 float32 rows on
  one core; the first bad row is then found and named);
- `x` without samples, or with a per-sample shape the model's input does not
  accept (Keras's own tolerance applies: one trailing axis of size 1 more or
  less);
- `x`, `y` and `sample_weight` with different numbers of rows;
- a `batch_size` that is not a positive integer (None is Keras's default).

Example:

```python
from privkeras.backends import validation

validation.check_call((None, 6), x=x, y=y, batch_size=32)
# InvalidInputError: Expected finite values in x. Received: NaN or infinite
#   values in rows [3] (first at index (3, 1): nan)
```
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from privkeras.errors import InvalidInputError, format_received

__all__ = [
    "as_numpy",
    "check_arrays",
    "check_batch_size",
    "check_call",
    "check_finite",
    "num_samples",
]

#: How many bad rows an error message lists.
_ROWS_SHOWN = 10


def as_numpy(value: Any) -> np.ndarray | None:
    """A numpy view of an array or tensor (a host copy only for device tensors).

    Returns:
        The values as a numeric numpy array, or None for anything that is
        not an array or a tensor (datasets, generators, lists, dicts, sparse
        or symbolic tensors): those are the engine's to check.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        array = value.detach().cpu().numpy()
    elif hasattr(value, "__array__") and not isinstance(value, (list, tuple, dict)):
        try:
            array = np.asarray(value)
        except Exception:  # symbolic tensors and the like: not data yet
            return None
    else:
        return None
    return None if array.dtype == object else array


def num_samples(value: Any) -> int:
    """The length of axis 0 of an array or tensor."""
    return int(np.shape(value)[0])


def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """Refuses a batch size that is not None or a positive integer.

    Raises:
        InvalidInputError: For 0, negative, non-integer or boolean values.
    """
    if batch_size is None:
        return
    if (
        isinstance(batch_size, (bool, np.bool_))
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise InvalidInputError(
            f"Expected {name} to be a positive integer or None. "
            + format_received(**{name: batch_size})
        )


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuses NaN and infinities, naming the first bad row.

    One vectorised pass over the data when it is finite (the common case);
    only when it is not are the bad rows located.

    Raises:
        InvalidInputError: Listing the rows with a NaN or an infinity and the
            index and value of the first one.
    """
    if values.dtype.kind not in "fc" or values.size == 0:
        return  # integers and booleans are always finite
    if np.isfinite(values).all():
        return
    rows = values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
    bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    first_row = int(bad_rows[0])
    column = int(np.flatnonzero(~np.isfinite(rows[first_row]))[0])
    index = (first_row, *np.unravel_index(column, values.shape[1:])) if values.ndim else ()
    index = tuple(int(i) for i in index)
    shown = bad_rows[:_ROWS_SHOWN].tolist()
    more = f" and {len(bad_rows) - _ROWS_SHOWN} more" if len(bad_rows) > _ROWS_SHOWN else ""
    raise InvalidInputError(
        f"Expected finite values in {what}: NaN and infinities cannot be trained on, "
        f"predicted or scored. Received: NaN or infinite values in rows {shown}{more} "
        f"(first at index {index}: {values[index]!r})"
    )


def _check_samples(values: np.ndarray, what: str) -> None:
    if values.ndim == 0:
        raise InvalidInputError(
            f"Expected {what} with samples on axis 0. " + format_received(**{_shape(what): ()})
        )
    if len(values) == 0:
        raise InvalidInputError(
            f"Expected {what} with at least one sample. "
            + format_received(**{_shape(what): values.shape})
        )


def _accepts(input_shape: tuple, shape: tuple) -> bool:
    """Whether Keras's functional call accepts a batch of this shape."""
    expected = tuple(input_shape)
    if len(shape) == len(expected) + 1 and shape[-1] == 1:
        shape = shape[:-1]  # Keras squeezes a trailing axis of 1
    elif len(shape) == len(expected) - 1 and expected[-1] == 1:
        expected = expected[:-1]  # Keras expands one
    if len(shape) != len(expected):
        return False
    return all(want is None or want == got for want, got in zip(expected[1:], shape[1:]))


def _check_shape(values: np.ndarray, input_shape: tuple | None, what: str) -> None:
    if input_shape is None or _accepts(input_shape, values.shape):
        return
    expected = "(" + ", ".join(str(dim) for dim in input_shape) + ")"
    raise InvalidInputError(
        f"Expected {what} of shape {expected}, as the model's input. "
        + format_received(**{_shape(what): values.shape})
    )


def _shape(what: str) -> str:
    return what.replace(" ", "_") + ".shape"


def check_arrays(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    *,
    input_shape: tuple | None = None,
    prefix: str = "",
) -> None:
    """Checks one set of `x`, `y` and `sample_weight`, where they are arrays or tensors.

    Args:
        x: Inputs.
        y: Targets, or None.
        sample_weight: Per-sample weights, or None.
        input_shape: The model's input shape with its batch axis, e.g.
            `(None, 28, 28, 1)`; None when the model is not built yet.
        prefix: Prefix of the names in messages (`"validation_data "`).

    Raises:
        InvalidInputError: For the mistakes listed in the module docstring.
    """
    x_values = as_numpy(x)
    if x_values is not None:
        _check_samples(x_values, prefix + "x")
        _check_shape(x_values, input_shape, prefix + "x")
        check_finite(x_values, prefix + "x")
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        values = as_numpy(value)
        if values is None:
            continue
        what = prefix + name
        _check_samples(values, what)
        if x_values is not None and len(values) != len(x_values):
            expected = (
                f"{what} of shape ({len(x_values)},), one weight per row of x"
                if name == "sample_weight"
                else f"x and {what} with the same number of rows"
            )
            received = {_shape(prefix + "x"): x_values.shape, _shape(what): values.shape}
            raise InvalidInputError(f"Expected {expected}. " + format_received(**received))
        check_finite(values, what)


def check_call(
    input_shape: tuple | None,
    x: Any = None,
    y: Any = None,
    sample_weight: Any = None,
    batch_size: Any = None,
    validation_data: Any = None,
) -> None:
    """What `PrivateSequential` checks before routing a call to its engine.

    Args:
        input_shape: The model's input shape (batch axis included), or None.
        x, y, sample_weight, batch_size: The call's arguments.
        validation_data: `fit`'s `(x, y)` or `(x, y, sample_weight)`, if any.

    Raises:
        InvalidInputError: For the mistakes listed in the module docstring.
    """
    check_batch_size(batch_size)
    check_arrays(x, y, sample_weight, input_shape=input_shape)
    if isinstance(validation_data, (tuple, list)) and 2 <= len(validation_data) <= 3:
        check_arrays(*validation_data, input_shape=input_shape, prefix="validation_data ")
