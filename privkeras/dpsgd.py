"""DP-SGD accounting, for planning a run before training it.

Built on Google's `dp-accounting`: `"pld"` (privacy loss distributions, the
default, tight) and `"rdp"` (Renyi DP, looser). Epsilon is for
add-or-remove-one neighbouring datasets and Poisson sampling at rate
`sample_rate` (batch size / dataset size), which is what `DPSGD(sampling=
"poisson")` trains with.

Example:

```python
from privkeras import dpsgd

dpsgd.compute_epsilon(256 / 60000, noise_multiplier=1.1, steps=14062, delta=1e-5)  # 2.38
dpsgd.compute_epsilon(256 / 60000, 1.1, 14062, 1e-5, accountant="rdp")             # 2.60
sigma = dpsgd.calibrate_noise(target_epsilon=3.0, sample_rate=256 / 60000,
                              steps=14062, delta=1e-5)
dpsgd.steps_for_epochs(epochs=60, dataset_size=60000, batch_size=256)              # 14100
```
"""

from __future__ import annotations

import math

from privkeras.backends.dpsgd.accountant import (
    MAX_NOISE_MULTIPLIER,
    Segment,
    available_accountants,
    calibrate_noise,
    compute_epsilon,
    max_steps,
)
from privkeras.errors import PrivacyPolicyError, format_received

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "Segment",
    "available_accountants",
    "calibrate_noise",
    "compute_epsilon",
    "max_steps",
    "steps_for_epochs",
]


def steps_for_epochs(epochs: int, dataset_size: int, batch_size: int) -> int:
    """Steps that `fit(epochs=epochs, batch_size=batch_size)` takes on `dataset_size` examples.

    Args:
        epochs: Number of epochs, >= 1.
        dataset_size: Training examples, >= 1.
        batch_size: (Expected) batch size, in [1, dataset_size].

    Returns:
        `epochs * ceil(dataset_size / batch_size)`.

    Raises:
        PrivacyPolicyError: For arguments out of range.
    """
    for name, value in (
        ("epochs", epochs),
        ("dataset_size", dataset_size),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PrivacyPolicyError(
                f"Expected {name} to be a positive integer. " + format_received(**{name: value})
            )
    if batch_size > dataset_size:
        raise PrivacyPolicyError(
            "Expected batch_size <= dataset_size. "
            + format_received(batch_size=batch_size, dataset_size=dataset_size)
        )
    return epochs * math.ceil(dataset_size / batch_size)
