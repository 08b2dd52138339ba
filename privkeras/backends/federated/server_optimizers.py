"""Server optimizers: how the coordinator applies the round's averaged update.

Each round the owners' updates are averaged into `delta` (the mean of
`local_weights - global_weights`, a pseudo-gradient with the sign of a
step). The server optimizer turns it into the next global weights. Notation
and defaults follow Reddi et al., "Adaptive Federated Optimization" (ICLR
2021), Algorithm 2:

- FedAvg (McMahan et al., 2017): `x <- x + eta * delta`.
- FedAvgM (Hsu et al., 2019): `m <- beta * m + delta`, `x <- x + eta * m`.
- FedAdam: `m <- b1 m + (1 - b1) delta`, `v <- b2 v + (1 - b2) delta^2`,
  `x <- x + eta m / (sqrt(v) + tau)`.
- FedYogi: as FedAdam with `v <- v - (1 - b2) delta^2 sign(v - delta^2)`.

Reddi et al. use no bias correction, `m_{-1} = 0` and `v_{-1} = tau^2`;
so do we. Constants: `beta = 0.9` (FedAvgM), `b1 = 0.9`, `b2 = 0.99`,
`tau = 1e-3`. State is float64; weights go back as float32.

Example:

```python
from privkeras.backends.federated import server_optimizers

optimizer = server_optimizers.get("fedadam", learning_rate=0.01)
weights = optimizer.step(weights, delta)
```
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from privkeras.core.registry import Registry
from privkeras.errors import PrivacyPolicyError

__all__ = ["DEFAULT_LEARNING_RATES", "SERVER_OPTIMIZERS", "ServerOptimizer", "get"]

SERVER_OPTIMIZERS: Registry[str, type[ServerOptimizer]] = Registry(
    "server optimizer", unknown_error=PrivacyPolicyError
)

#: `Federated(server_learning_rate=None)` means these.
DEFAULT_LEARNING_RATES = {"fedavg": 1.0, "fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01}


class ServerOptimizer(abc.ABC):
    """Applies averaged updates to the global weights (a flat float vector)."""

    name: ClassVar[str]

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    @abc.abstractmethod
    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The next global weights (float32) from the current ones and the round's `delta`."""


@SERVER_OPTIMIZERS.decorator("fedavg")
class FedAvg(ServerOptimizer):
    """`x <- x + eta * delta` (eta = 1 is McMahan et al.'s FedAvg)."""

    name = "fedavg"

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return (weights + self.learning_rate * delta).astype(np.float32)


@SERVER_OPTIMIZERS.decorator("fedavgm")
class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al., 2019): `m <- beta m + delta`, `x <- x + eta m`."""

    name = "fedavgm"
    MOMENTUM: ClassVar[float] = 0.9

    def __init__(self, learning_rate: float):
        super().__init__(learning_rate)
        self.momentum: np.ndarray | None = None

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        delta = delta.astype(np.float64)
        self.momentum = delta if self.momentum is None else self.MOMENTUM * self.momentum + delta
        return (weights + self.learning_rate * self.momentum).astype(np.float32)


class _Adaptive(ServerOptimizer):
    """Shared part of FedAdam and FedYogi (Reddi et al., 2021, Algorithm 2)."""

    BETA_1: ClassVar[float] = 0.9
    BETA_2: ClassVar[float] = 0.99
    TAU: ClassVar[float] = 1e-3

    def __init__(self, learning_rate: float):
        super().__init__(learning_rate)
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    @abc.abstractmethod
    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray: ...

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        delta = delta.astype(np.float64)
        if self.m is None:
            self.m = np.zeros_like(delta)
            self.v = np.full_like(delta, self.TAU**2)
        self.m = self.BETA_1 * self.m + (1 - self.BETA_1) * delta
        self.v = self._second_moment(self.v, np.square(delta))
        step = self.learning_rate * self.m / (np.sqrt(self.v) + self.TAU)
        return (weights + step).astype(np.float32)


@SERVER_OPTIMIZERS.decorator("fedadam")
class FedAdam(_Adaptive):
    """`v <- b2 v + (1 - b2) delta^2`."""

    name = "fedadam"

    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return self.BETA_2 * v + (1 - self.BETA_2) * squared


@SERVER_OPTIMIZERS.decorator("fedyogi")
class FedYogi(_Adaptive):
    """`v <- v - (1 - b2) delta^2 sign(v - delta^2)` (Zaheer et al., 2018)."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return v - (1 - self.BETA_2) * squared * np.sign(v - squared)


def get(name: str, learning_rate: float | None = None) -> ServerOptimizer:
    """A new server optimizer; `learning_rate=None` takes `DEFAULT_LEARNING_RATES[name]`."""
    cls = SERVER_OPTIMIZERS.get(name)
    rate = DEFAULT_LEARNING_RATES.get(name, 1.0) if learning_rate is None else learning_rate
    return cls(rate)
