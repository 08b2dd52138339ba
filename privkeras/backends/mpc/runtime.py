"""`MPCRuntime`: parties, protocol, kernels, codec and communicator of one secure computation.

The runtime simulates every party in this process: each party computes its
own local steps on its own shares, and the messages between them go through
an `InProcessCommunicator` that counts bytes and rounds. A networked
deployment swaps the communicator, not the protocol code.

Example:

```python
import numpy as np
from privkeras.backends.mpc.runtime import MPCRuntime

rt = MPCRuntime(protocol="aby3", kernels="numpy", seed=0)
x = rt.share(np.array([0.5, -1.5]), owner="alice", name="x")
y = x * x + 1.0
rt.reveal(y, to="alice", what="y")         # array([1.25, 3.25])
rt.communicator.rounds, rt.reveal_log
```
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from privkeras.backends.mpc.communicator import Communicator, InProcessCommunicator
from privkeras.backends.mpc.placement import Remote
from privkeras.backends.mpc.protocols.aby3 import ABY3Protocol
from privkeras.backends.mpc.protocols.base import Protocol
from privkeras.backends.mpc.protocols.pond import PondProtocol
from privkeras.backends.mpc.protocols.streams import PartyStreams
from privkeras.backends.mpc.tensor import SharedTensor
from privkeras.core.fixed_point import FixedPointCodec
from privkeras.core.kernels import KERNEL_LIBRARIES, RingKernels, get_kernels
from privkeras.core.registry import Registry
from privkeras.errors import PrecisionOverflowError, PrivacyPolicyError

__all__ = [
    "PROTOCOLS",
    "MPCRuntime",
    "RevealRecord",
    "available_protocols",
    "get_protocol",
    "register_protocol",
]

#: Protocol classes by name; an unknown name raises `PrivacyPolicyError` listing them.
PROTOCOLS: Registry[str, type[Protocol]] = Registry("protocol", unknown_error=PrivacyPolicyError)

DEALER_WARNING = (
    "MPC protocol 'pond' trusts its dealer: the dealer of correlated randomness (Beaver "
    "triples, masks) must be honest and must not collude with either compute party, or "
    "every secret is exposed. Use protocol='aby3' (three parties, no dealer) if no such "
    "party exists."
)
_dealer_warned = False


def register_protocol(cls: type[Protocol], *, replace: bool = False) -> type[Protocol]:
    """Registers a protocol class under `cls.name` (usable as a class decorator).

    Raises:
        RegistrationError: If another class holds the name and not `replace`.
    """
    return PROTOCOLS.register(cls.name, cls, replace=replace)


def get_protocol(name: str) -> type[Protocol]:
    """The protocol class registered as `name`.

    Raises:
        PrivacyPolicyError: For an unknown name, listing the registered ones.
    """
    return PROTOCOLS.get(name)


def available_protocols() -> tuple[str, ...]:
    """The names of the registered protocols, sorted (what `MPC(protocol=...)` accepts)."""
    return tuple(PROTOCOLS.names())


register_protocol(PondProtocol)
register_protocol(ABY3Protocol)


@dataclasses.dataclass(frozen=True)
class RevealRecord:
    """One reveal: what was revealed, to whom, and its shape."""

    what: str
    to: str
    shape: tuple[int, ...]


class MPCRuntime:
    """A secure computation among simulated parties.

    Args:
        protocol: `"pond"` (2 parties + dealer) or `"aby3"` (3 parties).
        kernels: `"numpy"`, `"torch"` or `"tensorflow"` (or a `RingKernels`).
        precision_bits: Fractional bits of the fixed-point encoding, in [1, 40].
        seed: None for keys from `os.urandom`, or an int that makes every
            share reproducible (tests only: not secure).
        communicator: A `Communicator` for the protocol's parties; an
            `InProcessCommunicator` by default. Its placement says which roles
            run in this process (all of them by default; one party in a party
            process, the caller and model owner in a networked driver).
        keys: Stream keys agreed for a networked job without a seed (see
            `PartyStreams`).
        track_bounds: Whether `share` and `share_public` derive a public
            bound on |value| from each value, so that every operation on
            the tensors checks the fixed-point range before it runs (see
            `SharedTensor.bound`). Off by default: the engines check whole
            models before any party works instead. `privkeras.mpc`'s
            default runtime turns it on.

    Raises:
        PrivacyPolicyError: For an unknown protocol or kernel library (listing
            those that exist) or a seed that is not an int.
        ValueError: For a bad precision (from the fixed-point codec).

    Example:

    ```python
    rt = MPCRuntime("pond", kernels="torch", seed=1)
    a = rt.share(np.ones((2, 3)), owner="alice")
    (a @ np.ones((3, 1))).reveal(to="alice")     # [[3.], [3.]]
    ```
    """

    def __init__(
        self,
        protocol: str = "pond",
        kernels: str | RingKernels = "numpy",
        precision_bits: int = 16,
        seed: int | None = None,
        communicator: Communicator | None = None,
        keys: Mapping[str, bytes] | None = None,
        track_bounds: bool = False,
    ):
        cls = get_protocol(protocol)
        if isinstance(kernels, RingKernels):
            self.kernels = kernels
        elif kernels in KERNEL_LIBRARIES:
            self.kernels = get_kernels(kernels)
        else:
            raise PrivacyPolicyError(
                f"Expected kernels in {list(KERNEL_LIBRARIES)}. Received: kernels={kernels!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise PrivacyPolicyError(f"Expected seed to be None or an int. Received: seed={seed!r}")
        self.codec = FixedPointCodec(precision_bits=precision_bits)
        self.track_bounds = bool(track_bounds)
        #: |x * y| must stay below this before truncation: 2^(ring_bits - 2 - 2f)
        #: (one bit of headroom below the 2^(ring_bits - 1 - 2f) that the ring can hold).
        self.product_limit = 2.0 ** (self.codec.ring_bits - 2 - 2 * self.codec.precision_bits)
        self.protocol_name = protocol
        parties = [f"p{i}" for i in range(cls.num_parties)]
        self.communicator = communicator or InProcessCommunicator(parties)
        if tuple(self.communicator.parties) != tuple(parties):
            raise ValueError(
                f"Expected a communicator for parties {parties}. "
                f"Received: parties={list(self.communicator.parties)}"
            )
        self.seed = seed
        self.placement = self.communicator.placement
        self.streams = PartyStreams(cls.num_parties, seed, self.placement, keys)
        self.protocol: Protocol = cls(
            self.kernels, self.streams, self.communicator, self.codec.precision_bits
        )
        self.reveal_log: list[RevealRecord] = []
        if protocol == "pond" and self.placement.any_here(("caller", "model_owner")):
            _warn_dealer_once()

    def __repr__(self) -> str:
        return (
            f"MPCRuntime(protocol={self.protocol_name!r}, kernels={self.kernels.name!r}, "
            f"precision_bits={self.codec.precision_bits})"
        )

    @property
    def parties(self) -> tuple[str, ...]:
        """Names of the compute parties."""
        return self.communicator.parties

    # -- encoding --------------------------------------------------------------------------
    def encode_public(self, value: Any, name: str = "public value") -> Any:
        """A public real array as a ring tensor at scale 2^f (no sharing)."""
        if isinstance(value, SharedTensor):
            raise TypeError("Expected a public value. Received: a SharedTensor")
        encoded = self.codec.encode(_to_numpy(value), name=name)
        return self.kernels.from_numpy(encoded)

    # -- sharing ------------------------------------------------------------------------------
    def share(
        self,
        value: Any,
        owner: str = "caller",
        name: str = "x",
        bound: float | None = None,
    ) -> SharedTensor:
        """Secret-shares real values held by `owner` among the compute parties.

        Args:
            value: Array-like of reals (numpy, torch, tf, lists, numbers).
            owner: Who holds the plaintext: a compute party (`"p0"`...) shares
                without communicating; anyone else sends one message per share.
            name: What to call the value in errors.
            bound: A public bound on |value| that the owner declares (checked
                by the owner against its values, so a data-independent bound
                tells nothing about them). None: derived from the values
                (max |value|) if the runtime tracks bounds, else untracked.

        Returns:
            A `SharedTensor` at scale 2^f.

        Raises:
            PrecisionOverflowError: For NaN, infinite or out-of-range values,
                or values beyond the declared `bound`, naming `name`.
            ValueError: For a `bound` that is not a real in [0, 2^(63 - f)).
        """
        if isinstance(value, Remote) or not self.placement.here(owner):
            shape = value.shape if isinstance(value, Remote) else np.shape(value)
            declared = self.checked_bound(bound)  # public: the same in every process
            return SharedTensor(
                self, self.protocol.share(None, owner, shape=tuple(shape)), declared
            )
        encoded = self.encode_public(value, name=name)
        bound = self._share_bound(value, bound, name)
        return SharedTensor(self, self.protocol.share(encoded, owner), bound)

    def share_bound(self, value: Any, bound: float | None = None, name: str = "x") -> float | None:
        """The public bound `share(value, bound=bound)` gives its tensor (None: untracked).

        What a session's driver tells the parties, which do not see the value.

        Raises:
            PrecisionOverflowError: For values beyond a declared `bound`.
            ValueError: For a `bound` that is not a real in [0, 2^(63 - f)).
        """
        return self._share_bound(value, bound, name)

    def here(self, role: str) -> bool:
        """Whether `role` runs in this process (see `Placement`)."""
        return self.placement.here(role)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles that run every job: the compute parties, and Pond's dealer."""
        return self.parties + (("dealer",) if self.protocol_name == "pond" else ())

    def broadcast(self, value: Any, source: str) -> np.ndarray:
        """A public decision of `source` (batch order, early stop), known to every role after.

        In one process it is `value`; across processes `source` sends it to the
        parties (and dealer), which run the same code with `value=None`. Not
        counted in rounds or bytes: it is control, not protocol.
        """
        return self.communicator.broadcast(source, value, self.roles)

    def share_public(self, value: Any, name: str = "public value") -> SharedTensor:
        """A public value as a (trivial) sharing, without communication.

        Its bound is max |value| when the runtime tracks bounds.
        """
        encoded = self.encode_public(value, name=name)
        zero = self.protocol.zeros(self.kernels.shape(encoded))
        bound = self._share_bound(value, None, name)
        return SharedTensor(self, self.protocol.add_public(zero, encoded), bound)

    # -- range -----------------------------------------------------------------------------------
    def checked_bound(self, bound: float | None) -> float | None:
        """`bound` as a float, or None.

        Raises:
            ValueError: Unless `bound` is None or a real in [0, 2^(63 - f)).
        """
        if bound is None:
            return None
        valid = not isinstance(bound, bool) and isinstance(bound, (int, float, np.number))
        if not valid or not 0 <= float(bound) < self.codec.max_abs:
            raise ValueError(
                f"Expected bound to be None or a real in [0, {self.codec.max_abs:g}) "
                f"(the range of {self.codec!r}). Received: bound={bound!r}"
            )
        return float(bound)

    def _share_bound(self, value: Any, declared: float | None, name: str) -> float | None:
        declared = self.checked_bound(declared)
        if declared is None and not self.track_bounds:
            return None
        largest = float(np.max(np.abs(np.asarray(_to_numpy(value), np.float64)), initial=0.0))
        if declared is None:  # encoding rounds to the nearest 2^-f: at most half an ulp more
            return largest + 2.0 ** -(self.codec.precision_bits + 1)
        if largest > declared:
            raise PrecisionOverflowError(
                f"Expected |{name}| <= bound={declared:g} (declared by its owner). "
                f"Received: a value of magnitude {largest:g}"
            )
        return declared

    def require_bound(self, bound: float, what: str, *, product: bool, received: str) -> None:
        """Raises `PrecisionOverflowError` before an operation whose worst case leaves the range.

        Args:
            bound: The worst-case |result| (for a product: before truncation).
            what: The operation, as `"x * y"`.
            product: Whether the result is a truncated product (limit
                2^(ring_bits - 2 - 2f)) rather than a value (limit 2^(ring_bits - 1 - f)).
            received: The operands' bounds, for the message.
        """
        limit = self.product_limit if product else self.codec.max_abs
        if bound < limit:
            return
        f, ring = self.codec.precision_bits, self.codec.ring_bits
        rule = (
            f"a product is held at scale 2^(2f) before truncation, so |{what}| must stay "
            f"below 2^({ring - 2} - 2f) = 2^{ring - 2 - 2 * f}"
            if product
            else f"values must stay below 2^({ring - 1} - f) = 2^{ring - 1 - f}"
        )
        raise PrecisionOverflowError(
            f"Expected |{what}| < {limit:.6g} to fit {self.codec!r}: {rule}, or the ring "
            f"wraps around. Received: {received}, so |{what}| could reach {bound:.6g}"
        )

    # -- revealing -------------------------------------------------------------------------------
    def reveal(
        self,
        x: SharedTensor,
        to: str = "caller",
        what: str = "value",
        check_range: bool | float = False,
    ) -> np.ndarray:
        """Opens `x` to `to` (one round) and logs the reveal.

        Args:
            x: A SharedTensor of this runtime.
            to: Who receives the value.
            what: What it is, for the log.
            check_range: True to check the opened values against `x.bound`
                (which must be tracked), a number to check against it instead.

        Returns:
            The decoded values as a float64 numpy array, in the process where
            `to` runs; None in the others (they only send their shares).

        Raises:
            PrecisionOverflowError: With `check_range`, for an opened value
                beyond the bound (a wrapped product or a failed truncation).
            ValueError: For `check_range=True` on an untracked tensor.
        """
        if not isinstance(x, SharedTensor) or x.runtime is not self:
            raise TypeError("Expected a SharedTensor of this runtime.")
        limit = self._reveal_limit(x, check_range)
        ring = self.protocol.reveal(x.shares, to)
        self.reveal_log.append(RevealRecord(what=what, to=to, shape=x.shape))
        if ring is None:
            return None
        values = self.codec.decode(self.kernels.to_numpy(ring))
        if limit is not None and values.size and np.max(np.abs(values)) > limit:
            raise PrecisionOverflowError(
                f"Expected the revealed {what!r} within its bound {limit:.6g}. Received: a "
                f"value of magnitude {float(np.max(np.abs(values))):.6g}: a product or a "
                f"truncation wrapped around the ring of {self.codec!r}"
            )
        return values

    def _reveal_limit(self, x: SharedTensor, check_range: bool | float) -> float | None:
        if check_range is False:
            return None
        if check_range is True:
            if x.bound is None:
                raise ValueError(
                    "Expected a tracked SharedTensor for reveal(check_range=True). Received: "
                    "bound=None (share with bound=..., use with_bound, or a runtime with "
                    "track_bounds=True; or pass check_range=<limit>)"
                )
            return x.bound + 4 * 2.0**-self.codec.precision_bits
        return self.checked_bound(check_range)

    def check_range(self, values: np.ndarray, name: str, limit: float | None = None) -> None:
        """Raises `PrecisionOverflowError` naming `name` if |values| reach `limit`.

        `limit` defaults to the codec's range; engines call this on revealed values.
        """
        limit = self.codec.max_abs if limit is None else limit
        values = np.asarray(values)
        if values.size and np.max(np.abs(values)) >= limit:
            raise PrecisionOverflowError(
                f"Expected |{name}| < {limit:g} to fit {self.codec!r}. "
                f"Received: a value of {float(np.max(np.abs(values))):g}"
            )


def _warn_dealer_once() -> None:
    global _dealer_warned
    if not _dealer_warned:
        _dealer_warned = True
        warnings.warn(DEALER_WARNING, UserWarning, stacklevel=3)


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return value.numpy()
    return value
