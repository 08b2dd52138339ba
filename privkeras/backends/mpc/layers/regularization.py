"""Dropout under MPC: the identity at inference; refused for training.

Training with dropout would need masks drawn jointly by the parties and kept
secret; the MPC engines do not implement that, so a model that trains with
dropout is refused (name the layer) instead of silently training without it.
"""

from __future__ import annotations

from typing import Any

import keras

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.registry import register_secure_layer, unsupported


@register_secure_layer(
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
)
def lower_dropout(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    if context.training:
        raise unsupported(
            layer,
            context,
            f"{type(layer).__name__} is supported at inference only (where it is the "
            "identity); remove it to train under MPC",
        )
    return []
