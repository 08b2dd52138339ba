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


def _check_positive(
    cls_name: str, field: str, value: Any, expected: str = "> 0 and finite"
) -> float:
    number = _check_real(cls_name, field, value)
    if not (number > 0 and math.isfinite(number)):
        raise _fail(cls_name, field, value, expected)
    return number


def _check_int(cls_name: str, field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(cls_name, field, value, f"to be an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise _fail(cls_name, field, value, f"in [{low}, {high}]")
    return value


def _check_choice(cls_name: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise _fail(cls_name, field, value, f"one of {list(choices)}")


# -- names an engine registers --------------------------------------------------------------
# Read from the engines' registries at validation time, never copied here. The imports are
# lazy: `import privkeras.policies` stays free of TensorFlow and torch, and the registries
# are complete by the time a policy is made (importing one engine module imports them all).
def _registered_accountants() -> tuple[str, ...]:
    from privkeras.backends.dpsgd.accountant import available_accountants

    return tuple(available_accountants())


def _registered_protocols() -> tuple[str, ...]:
    from privkeras.backends.mpc.runtime import available_protocols

    return tuple(available_protocols())


def _registered_engine_variants(kind: str) -> tuple[str, ...]:
    from privkeras.backends.registry import engine_variants

    return engine_variants(kind)


def _check_registered(cls_name: str, field: str, value: Any, names: tuple, what: str) -> None:
    if value not in names:
        raise _fail(cls_name, field, value, f"one of the registered {what} {list(names)}")


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
        accountant: A registered accountant: `"pld"` (privacy loss
            distributions) or `"rdp"` ship with privkeras
            (`privkeras.backends.dpsgd.accountant.register_accountant` adds
            others).
        secure_noise: Draw the noise from the core's cryptographically secure
            stream instead of the backend's generator.
    """

    kind: ClassVar[str] = "dp-sgd"
    SAMPLINGS: ClassVar[tuple[str, ...]] = ("poisson", "shuffle")

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
        _check_registered(
            name, "accountant", self.accountant, _registered_accountants(), "accountants"
        )
        if not isinstance(self.secure_noise, bool):
            raise _fail(name, "secure_noise", self.secure_noise, "to be a bool")


@dataclasses.dataclass(frozen=True)
class Federated(Policy):
    """Federated training on remote data owners (FedAvg and friends).

    Each round, every owner is asked with probability `fraction_fit` (Poisson
    sampling), trains `local_epochs` on its own rows from the global weights,
    and sends back only its update; the server optimizer applies the average.

    Args:
        rounds: Number of federated rounds, >= 1.
        local_epochs: Epochs each owner trains per round, >= 1.
        fraction_fit: Probability that an owner is asked in a round, in (0, 1].
        min_owners: A round completes only if at least this many of the asked
            owners answer (all of them when fewer are asked), >= 1.
        timeout: Seconds to wait for an owner before dropping it from the round.
        server_optimizer: `"fedavg"`, `"fedavgm"` (server momentum),
            `"fedadam"` or `"fedyogi"` (Reddi et al., 2021).
        server_learning_rate: Server step size; None means 1.0 for fedavg and
            fedavgm, 0.01 for fedadam and fedyogi.
        proximal_mu: FedProx proximal term `mu / 2 * ||w - w_global||^2` added
            to each owner's local loss (Li et al., 2020); 0 disables it.
        clip_norm: Client-level DP: each owner's update is clipped to this L2
            norm (the initial norm with `adaptive_clipping`), or None.
        noise_multiplier: Client-level DP noise std as a multiple of
            `clip_norm`, added to the sum of updates (needs `clip_norm`). At
            most one of `noise_multiplier` and `target_epsilon` is given.
        target_epsilon: Budget to calibrate the noise for before round 1
            (needs `clip_norm`).
        delta: Target delta of the client-level guarantee, in (0, 1).
        adaptive_clipping: Adapt `clip_norm` to the median update norm
            (Andrew et al., 2021), its privacy cost accounted (needs `clip_norm`).
        local_privacy: A `DPSGD` policy with which every owner trains locally
            (record-level DP), or None.
        secure_aggregation: Mask updates pairwise so that the coordinator sees
            only their sum (SecAgg+).
        dp: Where the client-level noise is added: `"central"` (by the
            coordinator, trusted) or `"distributed"` (by the owners before
            masking; needs `secure_aggregation` and noise).
    """

    kind: ClassVar[str] = "federated"
    SERVER_OPTIMIZERS: ClassVar[tuple[str, ...]] = ("fedavg", "fedavgm", "fedadam", "fedyogi")
    DP_PLACEMENTS: ClassVar[tuple[str, ...]] = ("central", "distributed")

    rounds: int = 10
    local_epochs: int = 1
    fraction_fit: float = 1.0
    min_owners: int = 2
    timeout: float = 30.0
    server_optimizer: str = "fedavg"
    server_learning_rate: float | None = None
    proximal_mu: float = 0.0
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    adaptive_clipping: bool = False
    local_privacy: DPSGD | None = None
    secure_aggregation: bool = False
    dp: str = "central"

    def __post_init__(self):
        name = type(self).__name__
        _check_int(name, "rounds", self.rounds, 1, 1_000_000)
        _check_int(name, "local_epochs", self.local_epochs, 1, 10_000)
        _check_int(name, "min_owners", self.min_owners, 1, 1_000_000)
        frac = _check_real(name, "fraction_fit", self.fraction_fit)
        if not 0 < frac <= 1:
            raise _fail(name, "fraction_fit", self.fraction_fit, "in (0, 1]")
        _check_positive(name, "timeout", self.timeout)
        _check_choice(name, "server_optimizer", self.server_optimizer, self.SERVER_OPTIMIZERS)
        if self.server_learning_rate is not None:
            _check_positive(name, "server_learning_rate", self.server_learning_rate)
        mu = _check_real(name, "proximal_mu", self.proximal_mu)
        if not (mu >= 0 and math.isfinite(mu)):
            raise _fail(name, "proximal_mu", self.proximal_mu, ">= 0 and finite")
        self._check_client_dp(name)
        for flag in ("adaptive_clipping", "secure_aggregation"):
            if not isinstance(getattr(self, flag), bool):
                raise _fail(name, flag, getattr(self, flag), "to be a bool")
        self._check_local_privacy(name)
        self._check_dp_placement(name)

    def _check_client_dp(self, name: str) -> None:
        if self.clip_norm is not None:
            _check_positive(name, "clip_norm", self.clip_norm, "> 0 and finite, or None")
        if self.noise_multiplier is not None:
            noise = _check_real(name, "noise_multiplier", self.noise_multiplier)
            if not (noise >= 0 and math.isfinite(noise)):
                raise _fail(name, "noise_multiplier", self.noise_multiplier, ">= 0 and finite")
        if self.target_epsilon is not None:
            _check_positive(name, "target_epsilon", self.target_epsilon)
            if self.noise_multiplier is not None:
                raise PrivacyPolicyError(
                    f"{name}: expected at most one of noise_multiplier and target_epsilon. "
                    f"Received: noise_multiplier={self.noise_multiplier!r}, "
                    f"target_epsilon={self.target_epsilon!r}"
                )
        delta = _check_real(name, "delta", self.delta)
        if not 0 < delta < 1:
            raise _fail(name, "delta", self.delta, "in (0, 1)")
        needs_clip = {
            "noise_multiplier > 0": bool(self.noise_multiplier),
            "target_epsilon is set": self.target_epsilon is not None,
            "adaptive_clipping=True": self.adaptive_clipping is True,
        }
        for condition, present in needs_clip.items():
            if present and self.clip_norm is None:
                raise PrivacyPolicyError(
                    f"{name}: expected clip_norm to be set when {condition}. "
                    f"Received: clip_norm=None, noise_multiplier={self.noise_multiplier!r}, "
                    f"target_epsilon={self.target_epsilon!r}, "
                    f"adaptive_clipping={self.adaptive_clipping!r}"
                )
        if self.noise_multiplier == 0 and self.clip_norm is not None:
            warnings.warn(
                "Federated(noise_multiplier=0) adds no noise: training is NOT differentially "
                "private and the reported epsilon is infinite. Use it only to check clipping.",
                UserWarning,
                stacklevel=4,
            )

    def _check_local_privacy(self, name: str) -> None:
        local = self.local_privacy
        if isinstance(local, dict):  # From get_config / JSON.
            if local.get("kind") != DPSGD.kind:
                raise _fail(name, "local_privacy", local, "a DPSGD policy config")
            local = DPSGD(**local.get("config", {}))
            object.__setattr__(self, "local_privacy", local)
        if local is not None and not isinstance(local, DPSGD):
            raise _fail(name, "local_privacy", local, "to be a DPSGD policy or None")

    def _check_dp_placement(self, name: str) -> None:
        _check_choice(name, "dp", self.dp, self.DP_PLACEMENTS)
        if self.dp != "distributed":
            return
        noisy = bool(self.noise_multiplier) or self.target_epsilon is not None
        if not (self.secure_aggregation and noisy):
            raise PrivacyPolicyError(
                f"{name}: expected secure_aggregation=True and noise (noise_multiplier > 0 or "
                "target_epsilon) with dp='distributed': owners add the noise before masking. "
                f"Received: secure_aggregation={self.secure_aggregation!r}, "
                f"noise_multiplier={self.noise_multiplier!r}, "
                f"target_epsilon={self.target_epsilon!r}"
            )

    def get_config(self) -> dict[str, Any]:
        """Returns a JSON-serializable dict; `local_privacy` is kept as its own config."""
        config = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        if self.local_privacy is not None:
            config["local_privacy"] = self.local_privacy.get_config()
        return {"kind": self.kind, "config": config}


@dataclasses.dataclass(frozen=True)
class MPC(Policy):
    """Secure multi-party computation on secret-shared data and models.

    Args:
        protocol: A protocol registered with the MPC runtime: `"pond"` (2
            compute parties and a dealer of correlated randomness) or
            `"aby3"` (3 parties, replicated sharing) ship with privkeras.
        engine: A registered MPC engine variant, `"tfe"` (TensorFlow tensors)
            or `"torch"`; `None` follows the Keras backend.
        precision_bits: Fractional bits of the fixed-point encoding, in [1, 40].
        seed: Optional integer seed that makes every share reproducible. For
            tests only: it warns that the run is not secure.
        parties: None (the default) runs every party in this process. Else the
            addresses of the party processes (`privkeras party`), by name:
            `{"p0": "host:port", "p1": ..., "dealer": ...}` for pond, `p0`, `p1`,
            `p2` for aby3. Addresses only: credentials come from the
            environment or `pk.mpc.local_cluster`, never from the policy
            (policies are saved inside `.keras` files).
        timeout: Seconds any networked wait may take before a `PartyError`
            naming the party and the step.
    """

    kind: ClassVar[str] = "mpc"
    #: The party processes each protocol needs.
    ROLES: ClassVar[dict[str, tuple[str, ...]]] = {
        "pond": ("p0", "p1", "dealer"),
        "aby3": ("p0", "p1", "p2"),
    }

    protocol: str = "pond"
    engine: str | None = None
    precision_bits: int = 16
    seed: int | None = None
    parties: Any = None
    timeout: float = 30.0

    def __post_init__(self):
        name = type(self).__name__
        _check_registered(name, "protocol", self.protocol, _registered_protocols(), "protocols")
        if self.engine is not None:
            variants = _registered_engine_variants(self.kind)
            _check_registered(name, "engine", self.engine, variants, "MPC engines (or None)")
        _check_int(name, "precision_bits", self.precision_bits, 1, 40)
        _check_positive(name, "timeout", self.timeout)
        if self.parties is not None:
            object.__setattr__(self, "parties", _party_addresses(name, self.protocol, self.parties))
        if self.seed is not None:
            _check_int(name, "seed", self.seed, 0, 2**63 - 1)
            warnings.warn(
                "MPC(seed=...) makes every share and mask reproducible: use it for tests, "
                "never with real secrets.",
                UserWarning,
                stacklevel=3,
            )


def _party_addresses(name: str, protocol: str, parties: Any) -> tuple[tuple[str, str], ...]:
    """`parties` as sorted (name, "host:port") pairs, checked against the protocol's roles."""
    try:
        pairs = dict(parties.items() if hasattr(parties, "items") else parties)
    except (TypeError, ValueError):
        raise _fail(name, "parties", parties, 'to map party names to "host:port"') from None
    expected = MPC.ROLES.get(protocol)
    if expected is None:
        raise _fail(name, "protocol", protocol, f"with party processes, one of {sorted(MPC.ROLES)}")
    if sorted(pairs) != sorted(expected):
        raise _fail(
            name, "parties", sorted(pairs), f"to name exactly {list(expected)} for {protocol!r}"
        )
    for party, address in pairs.items():
        host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(name, f"parties[{party!r}]", address, 'to be "host:port"')
    return tuple(sorted(pairs.items()))


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
