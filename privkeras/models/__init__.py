"""Privacy-aware Keras models."""

from privkeras.models.private_sequential import PrivateSequential

__all__ = ["PrivateSequential"]
