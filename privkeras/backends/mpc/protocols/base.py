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

One protocol code runs in every process layout (see
`privkeras.backends.mpc.placement`): a `Shares` tuple holds None for every
component that no local role holds, and carries the value's shape, so that
a process holding nothing (Pond's dealer, the driver of a networked job)
still follows the computation and deals for it. Each step computes only the
components, dealer values and messages of the local roles.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from privkeras.backends.mpc.communicator import Communicator
from privkeras.backends.mpc.protocols.streams import PartyStreams
from privkeras.core.kernels import RingKernels, conv_output_padding

__all__ = ["PRODUCTS", "Protocol", "Shares", "product_shape"]

Tensor = Any


class Shares(tuple):
    """One ring tensor per share component (None where no local role holds it), and the shape.

    Args:
        parts: The components.
        shape: The value's shape; taken from the first present component if omitted.
    """

    def __new__(cls, parts, shape: Sequence[int] | None = None):
        obj = super().__new__(cls, parts)
        if shape is None:
            present = next((p for p in obj if p is not None), None)
            if present is None:
                raise ValueError("Expected a shape for shares of which no component is local.")
            shape = tuple(int(d) for d in present.shape)
        obj.shape = tuple(shape)
        return obj

    def __getnewargs__(self):
        return (tuple(self), self.shape)

    @property
    def present(self) -> bool:
        """Whether this process holds any component."""
        return any(p is not None for p in self)


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
        self.placement = communicator.placement
        self._constants: dict[int, Tensor] = {}

    # -- placement -----------------------------------------------------------------------
    def here(self, role: str) -> bool:
        """Whether `role` (a party, the dealer, a data owner) runs in this process."""
        return self.placement.here(role)

    def ring(self, stream, shape: Sequence[int]) -> Tensor | None:
        """Uniform ring elements from `stream`, or None where this process lacks its key."""
        return None if stream is None else self.kernels.from_numpy(stream.ring(shape))

    def random_bits(self, stream, shape: Sequence[int]) -> Tensor | None:
        """Uniform 0/1 from `stream`, or None where this process lacks its key."""
        return None if stream is None else self.kernels.from_numpy(stream.bits(shape))

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
        """Applies a ring-linear `fn` to each local component of the arguments.

        A process that holds no component finds the result's shape by applying
        `fn` to zeros of the arguments' shapes (a probe, never a share).
        """
        parts = tuple(None if group[0] is None else fn(*group) for group in zip(*args))
        if any(p is not None for p in parts):
            return Shares(parts)
        probe = fn(*(self.kernels.zeros(a.shape) for a in args))
        return Shares(parts, self.kernels.shape(probe))

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
        return x.shape

    def holds(self, component: int) -> bool:
        """Whether a local party holds share component `component`."""
        return self.placement.any_here(self.component_holders(component))

    @abc.abstractmethod
    def component_holders(self, component: int) -> tuple[str, ...]:
        """The parties that hold share component `component`."""

    def zeros(self, shape: Sequence[int]) -> Shares:
        zero = self.kernels.zeros(shape)
        return Shares(
            tuple(zero if self.holds(c) else None for c in range(self.num_components)), shape
        )


def product_shape(op: str, left, right, kwargs) -> tuple[int, ...]:
    """The shape of the bilinear product `op` of operands of shapes `left` and `right`."""
    left, right = tuple(left), tuple(right)
    if op == "mul":
        return tuple(np.broadcast_shapes(left, right))
    if op == "matmul":
        if len(right) == 1:
            return left[:-1]
        if len(left) == 1:
            return right[:-2] + right[-1:]
        batch = tuple(np.broadcast_shapes(left[:-2], right[:-2]))
        return (*batch, left[-2], right[-1])
    if op == "conv2d":
        strides = kwargs.get("strides", (1, 1))
        padding = kwargs.get("padding", "VALID")
        height, _, _ = conv_output_padding(left[1], right[0], strides[0], padding)
        width, _, _ = conv_output_padding(left[2], right[1], strides[1], padding)
        return (left[0], height, width, right[3])
    raise ValueError(f"Expected a product in {sorted(PRODUCTS)}. Received: op={op!r}")
