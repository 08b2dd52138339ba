"""What a secret-sharing protocol offers the shared tensors.

A protocol holds values as tuples of ring tensors, one entry per share
*component*: for Pond a component is one party's additive share; for ABY3
there are three additive components and party i holds components i and i+1.
Local (communication-free) steps apply one function to every component;
steps that communicate are written per party and go through the
communicator, one `exchange` per round.

Values come in two sharings:

- arithmetic: components add up to the value mod 2^64;
- binary: components XOR to the value (64-bit words, or single bits as
  int64 0/1).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

from privkeras.backends.mpc.communicator import Communicator
from privkeras.backends.mpc.protocols.streams import PartyStreams
from privkeras.core.kernels import RingKernels

__all__ = ["PRODUCTS", "Protocol", "Shares"]

Tensor = Any
Shares = tuple[Tensor, ...]

#: Bilinear products a protocol can compute on shares, by name.
PRODUCTS: dict[str, Callable[..., Tensor]] = {
    "mul": lambda k, a, b: k.mul(a, b),
    "matmul": lambda k, a, b: k.matmul(a, b),
    "conv2d": lambda k, a, b, strides=(1, 1), padding="VALID": k.conv2d(a, b, strides, padding),
}


class Protocol(abc.ABC):
    """Arithmetic and binary secret sharing among compute parties.

    Args:
        kernels: Ring kernels (numpy, torch or tensorflow).
        streams: The runtime's random streams.
        communicator: Where messages go and are counted.
        precision_bits: Fractional bits f of the fixed-point encoding.
    """

    name: str
    num_parties: int
    #: Share components (== parties for Pond, 3 for ABY3).
    num_components: int

    def __init__(
        self,
        kernels: RingKernels,
        streams: PartyStreams,
        communicator: Communicator,
        precision_bits: int,
    ):
        self.kernels = kernels
        self.streams = streams
        self.communicator = communicator
        self.precision_bits = precision_bits
        self.parties = tuple(communicator.parties)
        self._constants: dict[int, Tensor] = {}

    def shift_left(self, a: Tensor, bits: int) -> Tensor:
        """a << bits as a product with the cached constant 2^bits (exact mod 2^64).

        One kernel call instead of a shift that builds its shift-amount tensor on
        every call (TensorFlow): comparisons shift hundreds of times.
        """
        return self.kernels.mul(a, self.constant(1 << bits))

    def constant(self, value: int) -> Tensor:
        """A scalar ring constant of the kernels' library, made once and cached."""
        tensor = self._constants.get(value)
        if tensor is None:
            tensor = self._constants[value] = self.kernels.constant(value)
        return tensor

    # -- sharing and revealing ---------------------------------------------------------
    @abc.abstractmethod
    def share(self, value: Tensor, owner: str) -> Shares:
        """Arithmetic shares of the ring tensor `value` held by `owner`."""

    @abc.abstractmethod
    def reveal(self, shares: Shares, to: str) -> Tensor:
        """Sends every share to `to` (one round); returns the value `to` reconstructs."""

    # -- local steps ---------------------------------------------------------------------
    def local(self, fn: Callable[..., Tensor], *args: Shares) -> Shares:
        """Applies a ring-linear `fn` to each component of the arguments."""
        return tuple(fn(*parts) for parts in zip(*args))

    @abc.abstractmethod
    def add_public(self, x: Shares, public: Tensor) -> Shares:
        """x + public (public is a ring tensor every party knows)."""

    @abc.abstractmethod
    def xor_public(self, x: Shares, public: Tensor) -> Shares:
        """x XOR public, for binary shares."""

    # -- products --------------------------------------------------------------------------
    @abc.abstractmethod
    def product(self, x: Shares, y: Shares, op: str, **kwargs: Any) -> Shares:
        """The untruncated bilinear product `op` of two arithmetic sharings."""

    @abc.abstractmethod
    def truncate(self, x: Shares, bits: int) -> Shares:
        """Shares of x / 2^bits (a probabilistic truncation; see the protocol's Notes)."""

    def product_truncated(
        self,
        x: Shares,
        y: Shares,
        op: str,
        bits: int,
        masks: tuple[Any, Any] = (None, None),
        **kwargs: Any,
    ) -> tuple[Shares, tuple[Any, Any]]:
        """product(x, y) / 2^bits; protocols may fuse the two.

        Args:
            masks: Per operand, a reusable mask from an earlier operation (an
                opaque protocol object) or None. Protocols without masks
                ignore them.

        Returns:
            `(shares, masks)`: the masks of x and y to keep for later products
            (None where the protocol has none).
        """
        return self.truncate(self.product(x, y, op, **kwargs), bits), (None, None)

    # -- binary sharing and conversions ----------------------------------------------------
    @abc.abstractmethod
    def negative_bit(self, x: Shares) -> Shares:
        """Binary shares (int64 0/1) of [x < 0], x read in two's complement."""

    @abc.abstractmethod
    def bit_to_arithmetic(self, bit: Shares) -> Shares:
        """Arithmetic shares (integers 0/1) of a binary-shared bit."""

    def negative_bit_with_mask(self, x: Shares) -> tuple[Shares, Any]:
        """`negative_bit(x)` and a reusable mask of x if the comparison made one."""
        return self.negative_bit(x), None

    @abc.abstractmethod
    def multiply_by_bit(
        self,
        bit: Shares,
        xs: list[Shares],
        masks: list[Any] | None = None,
        with_bit: bool = True,
    ) -> tuple[list[Shares], Shares | None, list[Any]]:
        """x * bit for each x (bit broadcast to x's shape, no truncation).

        Args:
            bit: XOR shares of a bit (int64 0/1).
            xs: Arithmetic sharings to multiply.
            masks: Per x, a reusable mask or None (see `product_truncated`).
            with_bit: Whether to also return the bit as arithmetic shares
                (free for Pond; one more product for ABY3).

        Returns:
            `([x * bit for x in xs], bit as arithmetic 0/1 or None, masks)`.
        """

    # -- helpers ------------------------------------------------------------------------------
    def shape(self, x: Shares) -> tuple[int, ...]:
        return self.kernels.shape(x[0])

    def zeros(self, shape: Sequence[int]) -> Shares:
        zero = self.kernels.zeros(shape)
        return (zero,) * self.num_components
