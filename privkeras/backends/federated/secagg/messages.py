"""The messages of a secure-aggregation round, each encoded to and from bytes strictly.

Stage by stage (C: coordinator, O: owner):

| stage | C -> O | O -> C |
|---|---|---|
| advertise_keys | `RoundSetup` | `AdvertiseKeys` (signed public keys) |
| share_keys | `NeighbourKeys` (neighbours' signed keys) | `ShareKeys` (encrypted Shamir shares) |
| masked_input | `ForwardedShares` (shares others sent it) | `MaskedInput` (the masked vector) |
| unmasking | `UnmaskRequest` (which neighbours survived) | `UnmaskResponse` (shares to reveal) |

Every message starts with `MAGIC`, a version byte, a type byte and the
16-byte round id, then the index of its sender (owner messages) or recipient
(coordinator messages) in the round. Owners appear by index; names travel only
with signed keys, so an owner downloads O(k) bytes, never the list of all n.
`decode_message` reads any of them; each class's `from_bytes` reads its own
type. Malformed input raises `SecAggMessageError`, never anything else.

Example:

```python
data = message.to_bytes()
same = decode_message(data)        # or MaskedInput.from_bytes(data)
```
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from privkeras.backends.federated.secagg.crypto import KEY_BYTES, SIGNATURE_BYTES, TAG_BYTES
from privkeras.backends.federated.secagg.errors import SecAggMessageError
from privkeras.backends.federated.secagg.params import RoundParameters
from privkeras.backends.federated.secagg.shamir import ELEMENT_BYTES, PRIME
from privkeras.backends.federated.secagg.wire import MAX_COUNT, Reader, Writer

__all__ = [
    "MAGIC",
    "STAGES",
    "AdvertiseKeys",
    "EncryptedShares",
    "ForwardedShare",
    "ForwardedShares",
    "MaskedInput",
    "NeighbourKeys",
    "RevealedShare",
    "RoundSetup",
    "ShareKeys",
    "SignedKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode_message",
]

MAGIC = b"PKSA"
VERSION = 1
ROUND_ID_BYTES = 16
#: The stages of a round, in order.
STAGES = ("advertise_keys", "share_keys", "masked_input", "unmasking")
#: Plaintext of one encrypted share pair: the seed share and the mask-key share.
SHARE_PLAINTEXT_BYTES = 2 * ELEMENT_BYTES
CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES
COMMITMENT_BYTES = 32
#: Commitments to single Shamir shares are truncated to 128 bits: they only need
#: second-preimage resistance (a holder must not forge a share an honest dealer
#: committed to); a dealer that breaks its own commitments only fails the round,
#: because reconstructed secrets are checked against the 256-bit commitments.
SHARE_COMMITMENT_BYTES = 16
#: Indices are u32 on the wire; a round has at most this many owners.
MAX_OWNERS = MAX_COUNT


def _element(reader: Reader, field: str) -> int:
    value = int.from_bytes(reader.take(ELEMENT_BYTES), "little")
    if value >= PRIME:
        raise reader.fail(f"{field} below the field prime", "a larger value")
    return value


class _Message:
    """Shared header handling; subclasses define TYPE, STAGE and their body."""

    TYPE: ClassVar[int]
    STAGE: ClassVar[str]
    #: True for owner -> coordinator messages (the header index is the sender).
    FROM_OWNER: ClassVar[bool]

    round_id: bytes

    @property
    def party(self) -> int:
        """The sender (owner messages) or recipient (coordinator messages)."""
        return self.sender if self.FROM_OWNER else self.recipient

    def to_bytes(self) -> bytes:
        if len(self.round_id) != ROUND_ID_BYTES:
            raise ValueError(
                f"Expected a {ROUND_ID_BYTES}-byte round id. Received: {len(self.round_id)}"
            )
        writer = Writer().raw(MAGIC).u8(VERSION).u8(self.TYPE).raw(self.round_id).u32(self.party)
        self._write_body(writer)
        return writer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes):
        message = decode_message(data)
        if not isinstance(message, cls):
            raise SecAggMessageError(
                f"Expected a {cls.__name__} message. Received: a {type(message).__name__} message"
            )
        return message

    def _write_body(self, writer: Writer) -> None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RoundSetup(_Message):
    """C -> O: the round's id and parameters, and the recipient's index and name."""

    TYPE: ClassVar[int] = 1
    STAGE: ClassVar[str] = "advertise_keys"
    FROM_OWNER: ClassVar[bool] = False
    round_id: bytes
    recipient: int
    recipient_name: str
    params: RoundParameters

    def _write_body(self, writer):
        writer.name(self.recipient_name)
        self.params.write(writer)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        name = reader.name()
        params = RoundParameters.read(reader)
        if index >= params.num_owners:
            raise reader.fail(f"recipient < num_owners={params.num_owners}", f"recipient={index}")
        return cls(round_id, index, name, params)

    def digest_bytes(self) -> bytes:
        """The part every owner's setup shares: round id and parameters."""
        writer = Writer().raw(self.round_id)
        self.params.write(writer)
        return writer.getvalue()


def _write_keys(writer: Writer, keys) -> None:
    writer.raw(keys.channel_key).raw(keys.mask_key).raw(keys.seed_commitment).raw(keys.signature)


def _read_keys(reader: Reader) -> tuple[bytes, bytes, bytes, bytes]:
    return (
        reader.raw(KEY_BYTES),
        reader.raw(KEY_BYTES),
        reader.raw(COMMITMENT_BYTES),
        reader.raw(SIGNATURE_BYTES),
    )


@dataclasses.dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """O -> C: the owner's two X25519 public keys, a commitment to its self-mask
    seed, and its long-term signature over them (see `SecAggOwner`)."""

    TYPE: ClassVar[int] = 2
    STAGE: ClassVar[str] = "advertise_keys"
    FROM_OWNER: ClassVar[bool] = True
    round_id: bytes
    sender: int
    channel_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes

    def _write_body(self, writer):
        _write_keys(writer, self)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        return cls(round_id, index, *_read_keys(reader))


@dataclasses.dataclass(frozen=True)
class SignedKeys:
    """One neighbour's advertised keys as forwarded by the coordinator."""

    owner: int
    name: str
    channel_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes


@dataclasses.dataclass(frozen=True)
class NeighbourKeys(_Message):
    """C -> O: the signed keys of the recipient's neighbours, in increasing index order."""

    TYPE: ClassVar[int] = 3
    STAGE: ClassVar[str] = "share_keys"
    FROM_OWNER: ClassVar[bool] = False
    round_id: bytes
    recipient: int
    neighbours: tuple[SignedKeys, ...]

    def _write_body(self, writer):
        writer.u32(len(self.neighbours))
        for keys in self.neighbours:
            writer.u32(keys.owner).name(keys.name)
            _write_keys(writer, keys)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        count = reader.count("neighbours")
        entries, last = [], -1
        for _ in range(count):
            owner = reader.index("neighbour", MAX_OWNERS)
            if owner <= last or owner == index:
                raise reader.fail(
                    "distinct neighbours in increasing order, not the recipient", f"{owner}"
                )
            last = owner
            entries.append(SignedKeys(owner, reader.name(), *_read_keys(reader)))
        return cls(round_id, index, tuple(entries))


@dataclasses.dataclass(frozen=True)
class EncryptedShares:
    """The sender's shares for one neighbour, encrypted to it, with commitments.

    Attributes:
        recipient: The neighbour.
        ciphertext: AES-256-GCM of (seed share || mask-key share), 82 bytes.
        seed_share_commitment: Commitment to the seed share (SHA-256, 16 bytes).
        key_share_commitment: Commitment to the mask-key share (SHA-256, 16 bytes).
    """

    recipient: int
    ciphertext: bytes
    seed_share_commitment: bytes
    key_share_commitment: bytes


@dataclasses.dataclass(frozen=True)
class ShareKeys(_Message):
    """O -> C: encrypted shares for each neighbour, in increasing recipient order."""

    TYPE: ClassVar[int] = 4
    STAGE: ClassVar[str] = "share_keys"
    FROM_OWNER: ClassVar[bool] = True
    round_id: bytes
    sender: int
    shares: tuple[EncryptedShares, ...]

    def _write_body(self, writer):
        writer.u32(len(self.shares))
        for entry in self.shares:
            writer.u32(entry.recipient).raw(entry.ciphertext)
            writer.raw(entry.seed_share_commitment).raw(entry.key_share_commitment)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        count = reader.count("shares")
        entries, last = [], -1
        for _ in range(count):
            recipient = reader.index("recipient", MAX_OWNERS)
            if recipient <= last or recipient == index:
                raise reader.fail(
                    "distinct recipients in increasing order, not the sender", f"{recipient}"
                )
            last = recipient
            entries.append(
                EncryptedShares(
                    recipient,
                    reader.raw(CIPHERTEXT_BYTES),
                    reader.raw(SHARE_COMMITMENT_BYTES),
                    reader.raw(SHARE_COMMITMENT_BYTES),
                )
            )
        return cls(round_id, index, tuple(entries))


@dataclasses.dataclass(frozen=True)
class ForwardedShare:
    """One neighbour's encrypted shares for the recipient, with the sender's commitments
    (so the recipient can tell a bad share from its dealer before it reveals anything)."""

    sender: int
    ciphertext: bytes
    seed_share_commitment: bytes
    key_share_commitment: bytes


@dataclasses.dataclass(frozen=True)
class ForwardedShares(_Message):
    """C -> O: what the recipient's surviving neighbours encrypted to it.

    The senders listed are exactly the recipient's neighbours that completed
    `share_keys`: the owners it must mask against.
    """

    TYPE: ClassVar[int] = 5
    STAGE: ClassVar[str] = "masked_input"
    FROM_OWNER: ClassVar[bool] = False
    round_id: bytes
    recipient: int
    shares: tuple[ForwardedShare, ...]

    def _write_body(self, writer):
        writer.u32(len(self.shares))
        for entry in self.shares:
            writer.u32(entry.sender).raw(entry.ciphertext)
            writer.raw(entry.seed_share_commitment).raw(entry.key_share_commitment)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        count = reader.count("shares")
        entries, last = [], -1
        for _ in range(count):
            sender = reader.index("sender", MAX_OWNERS)
            if sender <= last or sender == index:
                raise reader.fail(
                    "distinct senders in increasing order, not the recipient", f"{sender}"
                )
            last = sender
            entries.append(
                ForwardedShare(
                    sender,
                    reader.raw(CIPHERTEXT_BYTES),
                    reader.raw(SHARE_COMMITMENT_BYTES),
                    reader.raw(SHARE_COMMITMENT_BYTES),
                )
            )
        return cls(round_id, index, tuple(entries))


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """O -> C: the owner's encoded update plus its masks, in Z_2^b (uint32 or uint64)."""

    TYPE: ClassVar[int] = 6
    STAGE: ClassVar[str] = "masked_input"
    FROM_OWNER: ClassVar[bool] = True
    round_id: bytes
    sender: int
    vector: np.ndarray

    def _write_body(self, writer):
        vector = np.asarray(self.vector)
        if vector.ndim != 1 or vector.dtype not in (np.uint32, np.uint64):
            raise ValueError(
                "Expected a 1-D uint32 or uint64 masked vector. "
                f"Received: shape={vector.shape}, dtype={vector.dtype}"
            )
        writer.u8(vector.dtype.itemsize * 8).u32(vector.size)
        writer.raw(vector.astype(vector.dtype.newbyteorder("<"), copy=False).tobytes())

    @classmethod
    def _read_body(cls, reader, round_id, index):
        bits = reader.u8()
        if bits not in (32, 64):
            raise reader.fail("ring bits 32 or 64", f"{bits}")
        length = reader.count("length", (1 << 31) - 1)
        raw = reader.take(length * bits // 8)
        vector = np.frombuffer(raw, dtype=f"<u{bits // 8}").astype(f"u{bits // 8}")
        return cls(round_id, index, vector)


@dataclasses.dataclass(frozen=True)
class UnmaskRequest(_Message):
    """C -> O: which of the recipient's neighbours' inputs are summed (`survivors`:
    reveal their seed shares) and which dropped after sharing keys (`dropped`:
    reveal their mask-key shares)."""

    TYPE: ClassVar[int] = 7
    STAGE: ClassVar[str] = "unmasking"
    FROM_OWNER: ClassVar[bool] = False
    round_id: bytes
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def _write_body(self, writer):
        writer.indices(self.survivors).indices(self.dropped)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        survivors = reader.indices("survivors", MAX_OWNERS)
        dropped = reader.indices("dropped", MAX_OWNERS)
        if set(survivors) & set(dropped) or index in survivors or index in dropped:
            raise reader.fail("disjoint survivors and dropped, without the recipient", "an overlap")
        return cls(round_id, index, survivors, dropped)


@dataclasses.dataclass(frozen=True)
class RevealedShare:
    """A share this owner holds of `owner`'s seed or mask key (a field element)."""

    owner: int
    share: int


def _write_revealed(writer: Writer, entries: tuple[RevealedShare, ...]) -> None:
    writer.u32(len(entries))
    for entry in entries:
        writer.u32(entry.owner).raw(entry.share.to_bytes(ELEMENT_BYTES, "little"))


def _read_revealed(reader: Reader, field: str) -> tuple[RevealedShare, ...]:
    count = reader.count(field)
    entries, last = [], -1
    for _ in range(count):
        owner = reader.index("owner", MAX_OWNERS)
        if owner <= last:
            raise reader.fail(f"{field} for distinct owners in increasing order", f"{owner}")
        last = owner
        entries.append(RevealedShare(owner, _element(reader, "share")))
    return tuple(entries)


@dataclasses.dataclass(frozen=True)
class UnmaskResponse(_Message):
    """O -> C: seed shares of surviving neighbours, mask-key shares of dropped ones,
    and the neighbours whose encrypted shares did not decrypt (`complaints`)."""

    TYPE: ClassVar[int] = 8
    STAGE: ClassVar[str] = "unmasking"
    FROM_OWNER: ClassVar[bool] = True
    round_id: bytes
    sender: int
    seed_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]
    complaints: tuple[int, ...] = ()

    def _write_body(self, writer):
        _write_revealed(writer, self.seed_shares)
        _write_revealed(writer, self.key_shares)
        writer.indices(self.complaints)

    @classmethod
    def _read_body(cls, reader, round_id, index):
        seeds = _read_revealed(reader, "seed_shares")
        keys = _read_revealed(reader, "key_shares")
        complaints = reader.indices("complaints", MAX_OWNERS)
        owners = [e.owner for e in seeds] + [e.owner for e in keys] + list(complaints)
        if len(set(owners)) != len(owners) or index in owners:
            raise reader.fail("each neighbour at most once, not the sender", "a repeated owner")
        return cls(round_id, index, seeds, keys, complaints)


_TYPES = {
    cls.TYPE: cls
    for cls in (
        RoundSetup,
        AdvertiseKeys,
        NeighbourKeys,
        ShareKeys,
        ForwardedShares,
        MaskedInput,
        UnmaskRequest,
        UnmaskResponse,
    )
}


def decode_message(data: bytes):
    """Any secure-aggregation message from its bytes.

    Raises:
        SecAggMessageError: For anything that is not exactly one well-formed message.
    """
    reader = Reader(data, "secure-aggregation")
    magic = reader.raw(len(MAGIC))
    if magic != MAGIC:
        raise reader.fail(f"the magic {MAGIC!r}", f"{magic!r}")
    version = reader.u8()
    if version != VERSION:
        raise reader.fail(f"version {VERSION}", f"version {version}")
    kind = reader.u8()
    cls = _TYPES.get(kind)
    if cls is None:
        raise reader.fail(f"a message type in {sorted(_TYPES)}", f"type {kind}")
    reader.what = cls.__name__
    round_id = reader.raw(ROUND_ID_BYTES)
    index = reader.index("owner index", MAX_OWNERS)
    message = cls._read_body(reader, round_id, index)
    reader.done()
    return message
