"""Typed errors of the HE engine.

Each derives from a `privkeras.errors` class (and through it from the matching
builtin), so `except privkeras.PrivkerasError` and `except ValueError` keep
working.
"""

from __future__ import annotations

from privkeras.errors import PrivacyPolicyError, PrivkerasError

__all__ = [
    "ContextMismatchError",
    "DepthExceededError",
    "HEInputError",
    "SecretKeyError",
]


class DepthExceededError(PrivacyPolicyError):
    """The model needs more multiplicative depth than the allowed parameters offer."""


class SecretKeyError(PrivkerasError, PermissionError):
    """A role without the secret key was asked to decrypt, or a server was handed one."""


class ContextMismatchError(PrivkerasError, ValueError):
    """Ciphertexts, keys or packing specs that belong to different contexts were mixed."""


class HEInputError(PrivkerasError, ValueError):
    """Inputs of the wrong shape, or with NaN or infinite values."""
