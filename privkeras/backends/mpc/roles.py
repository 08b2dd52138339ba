"""The roles outside the compute parties, as share and reveal records name them.

The engine (inference) and the trainer both share values as these roles and
reveal values to them; both import the names from here, so neither imports
the other for them.
"""

from __future__ import annotations

__all__ = ["CALLER", "MODEL_OWNER"]

#: Holds the Keras model: shares the weights, receives the trained weights (or update).
MODEL_OWNER = "model_owner"
#: Calls `predict`/`evaluate`/`fit` with its own arrays: shares them, receives the outputs.
CALLER = "caller"
