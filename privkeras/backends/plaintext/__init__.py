"""The plaintext engine: plain Keras, the oracle other engines are tested against."""

from privkeras.backends.plaintext.engine import PlaintextEngine

__all__ = ["PlaintextEngine"]
