"""Typed errors of the federated engine.

Each derives from `privkeras.errors.PrivkerasError` and from the builtin or
privkeras error it refines, so generic `except` clauses keep working.
"""

from __future__ import annotations

from privkeras.errors import PartyError, PrivkerasError

__all__ = ["OwnerDataError", "OwnerRefusedError", "UnknownJobError", "WireFormatError"]


class OwnerDataError(PrivkerasError, ValueError):
    """An owner's data does not fit the model (feature shape, labels, NaN), named before round 1."""


class OwnerRefusedError(PartyError):
    """An owner refused a request its rules do not allow (`--allow`)."""


class UnknownJobError(PartyError):
    """An owner does not know the job of a request (it restarted); the coordinator re-sends it."""


class WireFormatError(PrivkerasError, ValueError):
    """Bytes that are not a well-formed federated message."""
