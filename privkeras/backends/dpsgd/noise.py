"""Gaussian noise for DP-SGD, drawn on the host one step ahead.

A DP step needs one normal sample per trainable weight (270k for the MNIST
MLP). On CPU, drawing them inside the step costs as much as a third of the
step (TensorFlow's Philox + Box-Muller: about 3.5 ms for 270k on two cores).
`HostNoise` draws the next step's noise in a background thread while the
current step runs, so the step only copies a ready buffer. The draws are
consumed strictly in order, each exactly once.

Generators:

- default: numpy's PCG64 with its ziggurat normal sampler, seeded from the
  global numpy state (so `keras.utils.set_random_seed` reproduces a run).
  Fast, not cryptographically secure: the same standing as Opacus without
  `secure_mode`, or as TensorFlow's and torch's generators.
- `secure=True`: the core's `SecureStream` (AES-256-CTR keyed from
  `os.urandom`, Box-Muller in float64). About 8x slower than PCG64 per
  sample; hidden behind the step when the step is longer than the draw.

Notes:
    Floating-point Gaussian samples only approximate the Gaussian
    mechanism (Mironov, "On significance of the least significant bits for
    differential privacy", CCS 2012); neither generator changes that.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from privkeras.core.random import SecureStream

__all__ = ["HostNoise"]


class HostNoise:
    """`size` N(0, std^2) float32 samples per call of `take`, prepared one call ahead.

    Args:
        size: Samples per step.
        std: Standard deviation.
        secure: Draw from a `SecureStream` instead of numpy's PCG64.
    """

    def __init__(self, size: int, std: float, secure: bool):
        self.size = size
        self.std = float(std)
        self.secure = secure
        if secure:
            self._stream = SecureStream()
        else:
            self._generator = np.random.default_rng(np.random.randint(0, 2**31 - 1, size=4))
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="privkeras-dp-noise"
        )
        self._next = self._executor.submit(self._draw)

    def _draw(self) -> np.ndarray:
        if self.secure:
            return self._stream.gaussian((self.size,), std=self.std).astype(np.float32)
        sample = self._generator.standard_normal(self.size, dtype=np.float32)
        sample *= np.float32(self.std)
        return sample

    def take(self) -> np.ndarray:
        """The next step's noise (waits if it is not ready), and starts the one after."""
        if self._next is None:
            raise RuntimeError("HostNoise.take() after close().")
        sample = self._next.result()
        self._next = self._executor.submit(self._draw)
        return sample

    def close(self) -> None:
        """Stops the background thread; a drawn but untaken sample is dropped."""
        self._next = None
        self._executor.shutdown(wait=False, cancel_futures=True)
