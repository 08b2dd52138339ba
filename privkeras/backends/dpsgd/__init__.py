"""DP-SGD: per-example clipping, Gaussian noise and an accountant, in Keras's own loop.

Backend-neutral parts: `clipping` (per-layer rules), `accountant`, `sampling`,
`per_example_loss`, `trainer`; one train step per Keras backend in
`tensorflow.py` and `torch.py` (imported on demand). jax is not supported
yet: its trainer would live in `jax.py`.
"""

from privkeras.backends.dpsgd.engine import DPSGDEngine

__all__ = ["DPSGDEngine"]
