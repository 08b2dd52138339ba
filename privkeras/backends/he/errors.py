"""Typed errors of the HE engine.

Each derives from a `privkeras.errors` class (and through it from the matching
builtin), so `except privkeras.PrivkerasError` and `except ValueError` keep
working.
"""

from __future__ import annotations

from privkeras.errors import InvalidInputError, PrivacyPolicyError, PrivkerasError

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


class HEInputError(InvalidInputError):
    """Inputs the HE roles cannot take: wrong shape, NaN or infinite values, or bytes
    from the other role that are not a well-formed message of the kind expected.

    An `InvalidInputError`, the type every engine raises for bad input.
    """
