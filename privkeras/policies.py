"""Privacy policies: frozen, validated, serializable configuration objects.

A policy says *what* protection a model gets; the backend registry decides
*which engine* provides it. Strings are shorthands for a policy with its
documented defaults (see `SHORTHANDS`).

Example:

```python
import privkeras as pk

policy = pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-5)
same = pk.policies.deserialize(policy.get_config())
assert same == policy
```
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, ClassVar

from privkeras.errors import PrivacyPolicyError

__all__ = [
    "DPSGD",
    "HE",
    "MPC",
    "SHORTHANDS",
    "Federated",
    "Policy",
    "deserialize",
    "get",
    "serialize",
]


def _fail(cls_name: str, field: str, value: Any, expected: str) -> PrivacyPolicyError:
    return PrivacyPolicyError(
        f"{cls_name}: expected {field} {expected}. Received: {field}={value!r}"
    )


def _check_real(cls_name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(cls_name, field, value, "to be a real number")
    if math.isnan(value):
        raise _fail(cls_name, field, value, "to be a number, not NaN")
    return float(value)


def _check_int(cls_name: str, field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(cls_name, field, value, f"to be an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise _fail(cls_name, field, value, f"in [{low}, {high}]")
    return value


def _check_choice(cls_name: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise _fail(cls_name, field, value, f"one of {list(choices)}")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Base class of privacy policies.

    Subclasses are frozen dataclasses; `kind` names the policy family that the
    backend registry routes on.
    """

    kind: ClassVar[str] = ""

    def get_config(self) -> dict[str, Any]:
        """Returns a JSON-serializable dict that `deserialize` turns back into the policy."""
        return {"kind": self.kind, "config": dataclasses.asdict(self)}

    def describe(self) -> str:
        """One line for `model.summary()`."""
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


@dataclasses.dataclass(frozen=True)
class DPSGD(Policy):
    """Differentially private SGD (Abadi et al., 2016) with an accountant.

    Args:
        l2_norm_clip: Bound C on each example's global gradient L2 norm. > 0.
        noise_multiplier: Gaussian noise std as a multiple of `l2_norm_clip`.
            Exactly one of `noise_multiplier` and `target_epsilon` is given.
            `0` disables noise (epsilon is infinite) and warns.
        target_epsilon: Budget to calibrate the noise for before training.
        delta: Target delta, in (0, 1).
        sampling: `"poisson"` (each example joins a batch independently with
            rate q, the assumption of the accountant) or `"shuffle"`.
        accountant: `"pld"` (privacy loss distributions) or `"rdp"`.
        secure_noise: Draw the noise from the core's cryptographically secure
            stream instead of the backend's generator.
    """

    kind: ClassVar[str] = "dp-sgd"
    SAMPLINGS: ClassVar[tuple[str, ...]] = ("poisson", "shuffle")
    ACCOUNTANTS: ClassVar[tuple[str, ...]] = ("pld", "rdp")

    l2_norm_clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    sampling: str = "poisson"
    accountant: str = "pld"
    secure_noise: bool = False

    def __post_init__(self):
        name = type(self).__name__
        clip = _check_real(name, "l2_norm_clip", self.l2_norm_clip)
        if not (clip > 0 and math.isfinite(clip)):
            raise _fail(name, "l2_norm_clip", self.l2_norm_clip, "> 0 and finite")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise PrivacyPolicyError(
                f"{name}: expected exactly one of noise_multiplier and target_epsilon. "
                f"Received: noise_multiplier={self.noise_multiplier!r}, "
                f"target_epsilon={self.target_epsilon!r}"
            )
        if self.noise_multiplier is not None:
            noise = _check_real(name, "noise_multiplier", self.noise_multiplier)
            if not (noise >= 0 and math.isfinite(noise)):
                raise _fail(name, "noise_multiplier", self.noise_multiplier, ">= 0 and finite")
            if noise == 0:
                warnings.warn(
                    "DPSGD(noise_multiplier=0) adds no noise: training is NOT differentially "
                    "private and the reported epsilon is infinite. Use it only to check clipping.",
                    UserWarning,
                    stacklevel=3,
                )
        if self.target_epsilon is not None:
            eps = _check_real(name, "target_epsilon", self.target_epsilon)
            if not (eps > 0 and math.isfinite(eps)):
                raise _fail(name, "target_epsilon", self.target_epsilon, "> 0 and finite")
        delta = _check_real(name, "delta", self.delta)
        if not 0 < delta < 1:
            raise _fail(name, "delta", self.delta, "in (0, 1)")
        _check_choice(name, "sampling", self.sampling, self.SAMPLINGS)
        _check_choice(name, "accountant", self.accountant, self.ACCOUNTANTS)
        if not isinstance(self.secure_noise, bool):
            raise _fail(name, "secure_noise", self.secure_noise, "to be a bool")


@dataclasses.dataclass(frozen=True)
class Federated(Policy):
    """Federated training on remote data owners (FedAvg and friends).

    Args:
        rounds: Number of federated rounds, >= 1.
        local_epochs: Epochs each owner trains per round, >= 1.
        fraction_fit: Fraction of owners asked per round, in (0, 1].
        min_owners: Rounds need at least this many answering owners.
        secure_aggregation: Mask updates pairwise so the coordinator sees only the sum.
        clip_norm: Client-level DP clip of each update, or None.
        noise_multiplier: Client-level DP noise multiplier (needs `clip_norm`).
        timeout: Seconds to wait for an owner before treating it as dropped.
    """

    kind: ClassVar[str] = "federated"

    rounds: int = 10
    local_epochs: int = 1
    fraction_fit: float = 1.0
    min_owners: int = 2
    secure_aggregation: bool = True
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    timeout: float = 30.0

    def __post_init__(self):
        name = type(self).__name__
        _check_int(name, "rounds", self.rounds, 1, 1_000_000)
        _check_int(name, "local_epochs", self.local_epochs, 1, 10_000)
        _check_int(name, "min_owners", self.min_owners, 1, 1_000_000)
        frac = _check_real(name, "fraction_fit", self.fraction_fit)
        if not 0 < frac <= 1:
            raise _fail(name, "fraction_fit", self.fraction_fit, "in (0, 1]")
        if self.clip_norm is not None:
            clip = _check_real(name, "clip_norm", self.clip_norm)
            if not (clip > 0 and math.isfinite(clip)):
                raise _fail(name, "clip_norm", self.clip_norm, "> 0 and finite, or None")
        noise = _check_real(name, "noise_multiplier", self.noise_multiplier)
        if not (noise >= 0 and math.isfinite(noise)):
            raise _fail(name, "noise_multiplier", self.noise_multiplier, ">= 0 and finite")
        if noise > 0 and self.clip_norm is None:
            raise PrivacyPolicyError(
                f"{name}: expected clip_norm to be set when noise_multiplier > 0. "
                f"Received: clip_norm=None, noise_multiplier={self.noise_multiplier!r}"
            )
        timeout = _check_real(name, "timeout", self.timeout)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise _fail(name, "timeout", self.timeout, "> 0 and finite")


@dataclasses.dataclass(frozen=True)
class MPC(Policy):
    """Secure multi-party computation on secret-shared data and models.

    Args:
        protocol: `"pond"` (2 compute parties and a dealer of correlated
            randomness) or `"aby3"` (3 parties, replicated sharing).
        engine: `"tfe"` (TensorFlow tensors) or `"torch"`; `None` follows the
            Keras backend.
        precision_bits: Fractional bits of the fixed-point encoding, in [1, 40].
        seed: Optional integer seed that makes every share reproducible. For
            tests only: it warns that the run is not secure.
    """

    kind: ClassVar[str] = "mpc"
    PROTOCOLS: ClassVar[tuple[str, ...]] = ("pond", "aby3")
    ENGINES: ClassVar[tuple[str | None, ...]] = (None, "tfe", "torch")

    protocol: str = "pond"
    engine: str | None = None
    precision_bits: int = 16
    seed: int | None = None

    def __post_init__(self):
        name = type(self).__name__
        _check_choice(name, "protocol", self.protocol, self.PROTOCOLS)
        _check_choice(name, "engine", self.engine, self.ENGINES)
        _check_int(name, "precision_bits", self.precision_bits, 1, 40)
        if self.seed is not None:
            _check_int(name, "seed", self.seed, 0, 2**63 - 1)
            warnings.warn(
                "MPC(seed=...) makes every share and mask reproducible: use it for tests, "
                "never with real secrets.",
                UserWarning,
                stacklevel=3,
            )


@dataclasses.dataclass(frozen=True)
class HE(Policy):
    """Homomorphic-encryption (CKKS) inference.

    Args:
        poly_modulus_degree: CKKS ring degree (a power of two in [1024, 32768]),
            or None to choose it from the model.
        scale_bits: Bits of the CKKS scale in [20, 60], or None to choose it.
        security_level: Bits of security, one of 128, 192, 256.
    """

    kind: ClassVar[str] = "he"
    DEGREES: ClassVar[tuple[int, ...]] = (1024, 2048, 4096, 8192, 16384, 32768)
    SECURITY_LEVELS: ClassVar[tuple[int, ...]] = (128, 192, 256)

    poly_modulus_degree: int | None = None
    scale_bits: int | None = None
    security_level: int = 128

    def __post_init__(self):
        name = type(self).__name__
        if self.poly_modulus_degree is not None:
            _check_choice(name, "poly_modulus_degree", self.poly_modulus_degree, self.DEGREES)
        if self.scale_bits is not None:
            _check_int(name, "scale_bits", self.scale_bits, 20, 60)
        _check_choice(name, "security_level", self.security_level, self.SECURITY_LEVELS)


_POLICY_CLASSES: dict[str, type[Policy]] = {cls.kind: cls for cls in (DPSGD, Federated, MPC, HE)}

#: What each shorthand string stands for.
SHORTHANDS: dict[str, Policy] = {}


def _shorthands() -> dict[str, Policy]:
    # Built lazily so that importing privkeras never warns.
    if not SHORTHANDS:
        SHORTHANDS.update(
            {
                "dp-sgd": DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1, delta=1e-5),
                "federated": Federated(),
                "mpc": MPC(),
                "he": HE(),
            }
        )
    return SHORTHANDS


def get(identifier: Policy | str | None) -> Policy | None:
    """Resolves a policy, a shorthand string or None (no privacy).

    Raises:
        PrivacyPolicyError: For an unknown string or an object of another type.
    """
    if identifier is None or isinstance(identifier, Policy):
        return identifier
    if isinstance(identifier, str):
        policies = _shorthands()
        if identifier in policies:
            return policies[identifier]
        raise PrivacyPolicyError(
            f"Expected privacy to be one of {sorted(policies)}, a privkeras policy object "
            f"or None. Received: privacy={identifier!r}"
        )
    raise PrivacyPolicyError(
        "Expected privacy to be a privkeras policy (DPSGD, Federated, MPC, HE), one of "
        f"{sorted(_POLICY_CLASSES)} or None. Received: privacy={identifier!r} "
        f"of type {type(identifier).__name__}"
    )


def serialize(policy: Policy | None) -> dict[str, Any] | None:
    """Returns the config of a policy (None stays None)."""
    return None if policy is None else policy.get_config()


def deserialize(config: dict[str, Any] | None) -> Policy | None:
    """Rebuilds a policy from `serialize`'s output."""
    if config is None:
        return None
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in _POLICY_CLASSES:
        raise PrivacyPolicyError(
            f"Expected a policy config with kind in {sorted(_POLICY_CLASSES)}. "
            f"Received: config={config!r}"
        )
    with warnings.catch_warnings():
        # The warnings were given when the policy was first made.
        warnings.simplefilter("ignore")
        return _POLICY_CLASSES[kind](**config.get("config", {}))
