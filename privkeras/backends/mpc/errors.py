"""Typed errors of the MPC engine.

Each derives from `privkeras.errors.PrivkerasError` and from the builtin it
replaces, so `except privkeras.PrivkerasError` and `except ValueError` both
keep working; `MPCInputError` is an `InvalidInputError`, as every engine's
bad-input error is.
"""

from __future__ import annotations

from privkeras.errors import InvalidInputError

__all__ = ["MPCInputError"]


class MPCInputError(InvalidInputError):
    """Inputs, targets, owners' data or shared operands that MPC cannot take.

    Wrong or mismatched shapes, empty batches, x and y with different numbers
    of rows, labels outside the model's classes, operands of two runtimes.
    Raised before any party does work.
    """
