"""Secure versions of Keras layers for the MPC engines, one file per family.

Importing this package registers every family (dense, conv, activations,
polynomial activations, pooling, reshape, normalization, regularization) in
`registry`.
"""

from privkeras.backends.mpc.layers import (  # noqa: F401  (each import registers a family)
    activations,
    conv,
    dense,
    normalization,
    polynomial,
    pooling,
    regularization,
    reshape,
)
from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.program import SecureProgram, SharedParams
from privkeras.backends.mpc.layers.registry import register_secure_layer, supported_layer_types

__all__ = [
    "LoweringContext",
    "SecureLayer",
    "SecureProgram",
    "SharedParams",
    "register_secure_layer",
    "supported_layer_types",
]
