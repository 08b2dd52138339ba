"""What a user sets (`SecAggConfig`) and what a round runs with (`RoundParameters`).

`SecAggConfig` holds the choices: clipping, ring size, distributed DP noise,
dropout and collusion tolerance. `SecAggConfig.resolve(num_owners,
vector_length)` derives everything else deterministically: the neighbour
degree k and threshold t (`graph.choose_degree_and_threshold`), the minimum
number of survivors, the codec's granularity gamma (no wrap-around, see
below), and with distributed DP the per-owner discrete Gaussian variance and
the rounding norm bound. The coordinator sends the derived values in its
`RoundSetup`; each owner derives them again and refuses a setup that differs.

Granularity (no wrap-around). Each owner's coordinate is at most c / gamma + 1
in magnitude after clipping to c and stochastic rounding, so n owners sum to at
most n (c / gamma + 1). Without noise, gamma = c n / (2^(b-1) - 1 - n) keeps
that inside the signed ring. With distributed DP, each owner adds
N_Z(0, sigma_i^2), sigma_i = z c / (gamma sqrt(n_min)), so the noise of n owners
is sub-Gaussian with variance at most n (sigma_i + 1)^2 (Canonne, Kamath and
Steinke 2020, Proposition 19: the discrete Gaussian is sub-Gaussian) and
exceeds T sqrt(n) (sigma_i + 1), T = sqrt(2 ln(2 d / p_wrap)), in any of the d
coordinates with probability at most `wrap_probability`; gamma solves
n (c / gamma + 1) + T sqrt(n) (sigma_i + 1) = 2^(b-1) - 1. For 10 owners, c = 1
and b = 32, gamma is about 4.7e-9 without noise; for 1,000 owners about 4.7e-7.
"""

from __future__ import annotations

import dataclasses
import math

from privkeras.backends.federated.secagg.codec import MAX_LEVELS, SUPPORTED_RING_BITS, RingCodec
from privkeras.backends.federated.secagg.discrete_gaussian import MAX_SIGMA, DiscreteGaussian
from privkeras.backends.federated.secagg.errors import SecAggMessageError
from privkeras.backends.federated.secagg.graph import choose_degree_and_threshold
from privkeras.backends.federated.secagg.wire import Reader, Writer
from privkeras.errors import PrivacyPolicyError

__all__ = ["RoundParameters", "SecAggConfig"]

_MAX_VECTOR = (1 << 31) - 1
_MAX_OWNERS = 1 << 20
_REL_TOLERANCE = 1e-9


def _fail(field: str, value, expected: str) -> PrivacyPolicyError:
    return PrivacyPolicyError(
        f"SecAggConfig: expected {field} {expected}. Received: {field}={value!r}"
    )


def _real(field: str, value, *, positive: bool = False, optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(field, value, "to be a finite real number")
    if positive and not value > 0:
        raise _fail(field, value, "> 0")
    return float(value)


def _int_or_none(field: str, value, low: int):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(field, value, f"to be an integer >= {low} or None")
    return value


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """Secure-aggregation settings.

    Args:
        clip_range: Each coordinate of an update is clipped to [-clip_range,
            clip_range] before encoding. None follows `clip_norm` (an update of
            L2 norm <= clip_norm has every coordinate in that range).
        clip_norm: L2 clipping norm of each update (client-level DP's clip), or None.
            Required with `noise_multiplier > 0`: each owner clips to it itself.
        noise_multiplier: z > 0 turns on distributed DP: every owner adds its
            share of discrete Gaussian noise so that any `min_survivors` owners
            together add noise of standard deviation z * clip_norm to the sum.
            0 adds none (central DP, if any, is then the coordinator's job).
        ring_bits: 32 (masked upload = float32 size; the default) or 64.
        neighbours: Degree k of the neighbour graph, or None to choose it from
            the tolerances below (Bell et al. 2020).
        threshold: Shares needed to recover an owner's secrets, or None (the
            largest that tolerates `max_dropout`).
        min_survivors: Rounds need at least this many owners' masked inputs;
            distributed DP noise is calibrated to it. None: the owners left when
            a `max_dropout` fraction drops.
        max_dropout: Fraction of owners a round tolerates losing, in [0, 1).
        max_corrupt: Fraction of owners that may collude with the coordinator
            (they must not reach the threshold in any neighbourhood), in [0, 1).
        security_bits: Privacy failures have probability <= 2^-security_bits.
        correctness_bits: A round with at most `max_dropout` dropouts fails with
            probability <= 2^-correctness_bits.
        wrap_probability: With distributed DP, the probability that noise pushes
            a coordinate of the sum past the ring's range.
        rounding_beta: Conditional-rounding parameter beta of Kairouz et al. 2021.
    """

    clip_range: float | None = None
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    ring_bits: int = 32
    neighbours: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None
    max_dropout: float = 1 / 3
    max_corrupt: float = 0.1
    security_bits: int = 40
    correctness_bits: int = 20
    wrap_probability: float = 1e-12
    rounding_beta: float = math.exp(-0.5)

    def __post_init__(self):
        _real("clip_range", self.clip_range, positive=True, optional=True)
        _real("clip_norm", self.clip_norm, positive=True, optional=True)
        noise = _real("noise_multiplier", self.noise_multiplier)
        if noise < 0:
            raise _fail("noise_multiplier", self.noise_multiplier, ">= 0")
        if self.clip_range is None and self.clip_norm is None:
            raise PrivacyPolicyError(
                "SecAggConfig: expected clip_range or clip_norm (masked sums need a bound to "
                "stay inside the ring). Received: clip_range=None, clip_norm=None"
            )
        if noise > 0 and self.clip_norm is None:
            raise _fail("clip_norm", None, "to be set when noise_multiplier > 0")
        if noise > 0 and self.clip_range is not None:
            raise _fail("clip_range", self.clip_range, "None when noise_multiplier > 0")
        if self.ring_bits not in SUPPORTED_RING_BITS:
            raise _fail("ring_bits", self.ring_bits, f"in {list(SUPPORTED_RING_BITS)}")
        _int_or_none("neighbours", self.neighbours, 1)
        _int_or_none("threshold", self.threshold, 1)
        _int_or_none("min_survivors", self.min_survivors, 1)
        for name in ("max_dropout", "max_corrupt"):
            value = _real(name, getattr(self, name))
            if not 0 <= value < 1:
                raise _fail(name, value, "in [0, 1)")
        for name in ("security_bits", "correctness_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
                raise _fail(name, value, "an integer in [1, 256]")
        for name in ("wrap_probability", "rounding_beta"):
            value = _real(name, getattr(self, name))
            if not 0 < value < 1:
                raise _fail(name, value, "in (0, 1)")

    @property
    def distributed_dp(self) -> bool:
        return self.noise_multiplier > 0

    def resolve(self, num_owners: int, vector_length: int) -> RoundParameters:
        """The parameters of a round with `num_owners` owners and `vector_length` values.

        Raises:
            PrivacyPolicyError: When the settings cannot be met with this many owners.
        """
        if not 2 <= num_owners <= _MAX_OWNERS:
            raise _fail("num_owners", num_owners, f"in [2, {_MAX_OWNERS}]")
        if not 1 <= vector_length <= _MAX_VECTOR:
            raise _fail("vector_length", vector_length, f"in [1, {_MAX_VECTOR}]")
        k, t = self._degree_and_threshold(num_owners)
        survivors = self.min_survivors
        if survivors is None:
            survivors = max(2, num_owners - math.floor(self.max_dropout * num_owners))
        if not max(2, t) <= survivors <= num_owners:
            raise _fail("min_survivors", survivors, f"in [max(2, threshold={t}), {num_owners}]")
        gamma, noise = self._granularity(num_owners, vector_length, survivors)
        bound = 0.0
        if noise is not None:
            bound = rounded_l2_bound(self.clip_norm / gamma, vector_length, self.rounding_beta)
        return RoundParameters(
            config=self,
            num_owners=num_owners,
            vector_length=vector_length,
            neighbours=k,
            threshold=t,
            min_survivors=survivors,
            granularity=gamma,
            noise_t=0 if noise is None else noise.t,
            noise_m=0 if noise is None else noise.m,
            rounding_bound=bound,
        )

    def _degree_and_threshold(self, n: int) -> tuple[int, int]:
        if self.neighbours is None:
            try:
                k, t = choose_degree_and_threshold(
                    n,
                    max_dropout=self.max_dropout,
                    max_corrupt=self.max_corrupt,
                    security_bits=self.security_bits,
                    correctness_bits=self.correctness_bits,
                )
            except ValueError as err:
                raise PrivacyPolicyError(f"SecAggConfig: {err}") from None
        else:
            k = min(self.neighbours, n - 1)
            if k < n - 1 and k % 2:
                raise _fail("neighbours", self.neighbours, f"even, or >= {n - 1} (complete)")
            t = self.threshold if self.threshold is not None else k // 2 + 1
        if self.threshold is not None:
            t = self.threshold
        if not 1 <= t <= k:
            raise _fail("threshold", t, f"in [1, neighbours={k}]")
        return k, t

    def _granularity(self, n: int, d: int, survivors: int) -> tuple[float, DiscreteGaussian | None]:
        half = 2.0 ** (self.ring_bits - 1) - 1
        if not self.distributed_dp:
            c = self.clip_range if self.clip_range is not None else self.clip_norm
            gamma = max(c * n / (half - n), c / MAX_LEVELS)
            return gamma, None
        c, z = self.clip_norm, self.noise_multiplier
        tail = math.sqrt(2.0 * math.log(2.0 * d / self.wrap_probability))
        room = (half - n - tail * math.sqrt(n)) * (1 - 1e-9)  # slack for float rounding
        if room <= 0:
            raise _fail("ring_bits", self.ring_bits, f"large enough for {n} owners' noise")
        gamma = c * (n + tail * z * math.sqrt(n / survivors)) / room
        # Cap the per-owner noise (int64 sampling) and the levels (float64 rounding).
        gamma = max(gamma, z * c / (MAX_SIGMA * math.sqrt(survivors)), c / MAX_LEVELS)
        noise = DiscreteGaussian(z * c / (gamma * math.sqrt(survivors)))
        return gamma, noise


def rounded_l2_bound(norm: float, dimension: int, beta: float) -> float:
    """L2 bound after conditional stochastic rounding of a vector of norm <= `norm`.

    Kairouz, Liu and Steinke (ICML 2021), Theorem 1 (Eq. 2): the smaller of
    norm + sqrt(d) (always holds) and sqrt(norm^2 + d/4 + sqrt(2 ln(1/beta))
    (norm + sqrt(d)/2)) (holds with probability >= 1 - beta).
    """
    always = norm + math.sqrt(dimension)
    likely = math.sqrt(
        norm**2
        + dimension / 4
        + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dimension) / 2)
    )
    return min(always, likely)


@dataclasses.dataclass(frozen=True)
class RoundParameters:
    """Everything a round runs with, derived by `SecAggConfig.resolve`.

    Attributes:
        config: The settings.
        num_owners: Owners invited to the round (n).
        vector_length: Values per update (d).
        neighbours: Degree k of the neighbour graph (n - 1: complete graph).
        threshold: t: shares that recover an owner's secrets.
        min_survivors: Masked inputs a round needs.
        granularity: gamma, the value of one ring step.
        noise_t, noise_m: With distributed DP, each owner adds
            N_Z(0, noise_t * noise_m) in ring steps; 0 without.
        rounding_bound: With distributed DP, the L2 bound (in ring steps) of each
            owner's rounded update; 0 without.
    """

    config: SecAggConfig
    num_owners: int
    vector_length: int
    neighbours: int
    threshold: int
    min_survivors: int
    granularity: float
    noise_t: int
    noise_m: int
    rounding_bound: float

    @property
    def clip(self) -> float:
        """The per-coordinate clip (no DP) or the L2 clip (distributed DP)."""
        if self.config.clip_range is not None:
            return self.config.clip_range
        return self.config.clip_norm

    def codec(self) -> RingCodec:
        return RingCodec(self.config.ring_bits, self.granularity, self.clip)

    def noise(self) -> DiscreteGaussian | None:
        if not self.noise_t:
            return None
        return DiscreteGaussian.from_parameters(self.noise_t, self.noise_m)

    def check_derivation(self) -> None:
        """Raises `SecAggMessageError` unless these are what `config.resolve` gives.

        Integers must match exactly; floats to a relative 1e-9 (so that two
        machines whose libm differ in the last bit agree).
        """
        try:
            expected = self.config.resolve(self.num_owners, self.vector_length)
        except PrivacyPolicyError as err:
            raise SecAggMessageError(f"Expected round parameters that can be met: {err}") from None
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(expected, field.name)
            if isinstance(mine, float):
                same = math.isclose(mine, theirs, rel_tol=_REL_TOLERANCE)
            else:
                same = mine == theirs
            if not same:
                raise SecAggMessageError(
                    f"Expected round parameters derived from the settings: {field.name}="
                    f"{theirs!r}. Received: {field.name}={mine!r}"
                )

    def write(self, writer: Writer) -> None:
        c = self.config
        writer.u8(c.ring_bits).u8(c.distributed_dp)
        writer.f64(c.clip_range if c.clip_range is not None else 0.0)
        writer.f64(c.clip_norm if c.clip_norm is not None else 0.0)
        writer.f64(c.noise_multiplier)
        writer.u32(c.neighbours or 0).u32(c.threshold or 0).u32(c.min_survivors or 0)
        writer.f64(c.max_dropout).f64(c.max_corrupt)
        writer.u32(c.security_bits).u32(c.correctness_bits)
        writer.f64(c.wrap_probability).f64(c.rounding_beta)
        writer.u32(self.num_owners).u32(self.vector_length)
        writer.u32(self.neighbours).u32(self.threshold).u32(self.min_survivors)
        writer.f64(self.granularity).u64(self.noise_t).u64(self.noise_m)
        writer.f64(self.rounding_bound)

    @classmethod
    def read(cls, reader: Reader) -> RoundParameters:
        ring_bits, dp_flag = reader.u8(), reader.u8()
        clip_range, clip_norm, noise = reader.f64(), reader.f64(), reader.f64()
        if dp_flag != (noise > 0):
            raise reader.fail("the distributed-DP flag to match noise_multiplier", f"{dp_flag}")
        neighbours, threshold, survivors = reader.u32(), reader.u32(), reader.u32()
        max_dropout, max_corrupt = reader.f64(), reader.f64()
        security_bits, correctness_bits = reader.u32(), reader.u32()
        wrap, beta = reader.f64(), reader.f64()
        try:
            config = SecAggConfig(
                clip_range=clip_range or None,
                clip_norm=clip_norm or None,
                noise_multiplier=noise,
                ring_bits=ring_bits,
                neighbours=neighbours or None,
                threshold=threshold or None,
                min_survivors=survivors or None,
                max_dropout=max_dropout,
                max_corrupt=max_corrupt,
                security_bits=security_bits,
                correctness_bits=correctness_bits,
                wrap_probability=wrap,
                rounding_beta=beta,
            )
        except PrivacyPolicyError as err:
            raise reader.fail("valid secure-aggregation settings", str(err)) from None
        return cls(
            config=config,
            num_owners=reader.u32(),
            vector_length=reader.u32(),
            neighbours=reader.u32(),
            threshold=reader.u32(),
            min_survivors=reader.u32(),
            granularity=reader.f64(),
            noise_t=reader.u64(),
            noise_m=reader.u64(),
            rounding_bound=reader.f64(),
        )
