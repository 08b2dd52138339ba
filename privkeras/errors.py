"""Typed exceptions raised by privkeras.

Every error says what was expected and what was received, in the Keras style:
``Expected precision_bits in [1, 40]. Received: precision_bits=64``.
Each class also derives from the matching builtin (``ValueError``,
``LookupError``, ...) so that generic ``except`` clauses keep working.
"""

from __future__ import annotations


class PrivkerasError(Exception):
    """Base class of every error privkeras raises on purpose."""


class PrivacyPolicyError(PrivkerasError, ValueError):
    """A privacy policy, or one of its fields, is invalid."""


class EngineNotAvailableError(PrivkerasError, LookupError):
    """No registered engine serves the requested policy and Keras backend."""


class RegistrationError(PrivkerasError, ValueError):
    """Something was registered twice (without `replace=True`) or with an invalid declaration."""


class EngineRegistrationError(RegistrationError):
    """An engine was registered twice or with an invalid declaration."""


class InvalidInputError(PrivkerasError, ValueError):
    """Data or loop arguments no engine can run on, refused before any step.

    NaN or infinite values, inputs of the wrong shape, no samples, x, y and
    sample_weight of different lengths, a `batch_size` that is not a positive
    integer. Every engine raises this same type, with the same message, for
    the same mistake.
    """


class CapabilityError(PrivkerasError, NotImplementedError):
    """The engine in use does not offer the requested operation."""


class UnsupportedLayerError(PrivkerasError, TypeError):
    """A Keras layer (or its configuration) cannot run under an engine."""


class PrecisionOverflowError(PrivkerasError, OverflowError):
    """A value does not fit the fixed-point range of the ring."""


class PrivacyBudgetExceededError(PrivkerasError, RuntimeError):
    """The next step would spend more privacy budget than the policy allows."""


class PartyError(PrivkerasError, RuntimeError):
    """A remote party or data owner is unreachable, slow, dead or misbehaving."""


class AuthenticationError(PartyError):
    """A peer failed to authenticate (bad token or certificate)."""


class WireError(PartyError, ValueError):
    """Bytes from a peer are not a valid privkeras frame (malformed, truncated, oversized,
    or of a type the wire format refuses), or a local tensor cannot be put on the wire."""


class RemoteCallError(PartyError):
    """A peer's handler raised while serving a call; the message names the peer, the
    method, and the remote error's type and text."""


def format_received(**values: object) -> str:
    """Formats ``Received: name=value`` for error messages."""
    return "Received: " + ", ".join(f"{name}={value!r}" for name, value in values.items())
