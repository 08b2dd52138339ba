"""The wire format: frames of tagged tensors, split into chunks. Never pickle.

A *frame* is one message between two peers: a fixed binary header (kind, job,
round, sender, receiver, method), a small JSON metadata dict, and a list of
tensors, each a dtype from a whitelist, a shape and its raw little-endian
bytes. Single-bit tensors (`bool` arrays, or integer arrays wrapped in
`bits(...)`) travel packed eight to a byte. A frame is cut into *chunks* of
at most `WireLimits.chunk_bytes`, so that no gRPC message limit is ever hit,
and reassembled by the receiver.

Layout (all integers little-endian)::

    chunk  = "PKC1" index:u32 count:u32 total:u64 | bytes of the frame
    frame  = "PKF1" version:u8 kind:u8 flags:u16 round:u64
             job_len:u16 sender_len:u8 receiver_len:u8 method_len:u16 0:u16
             meta_len:u32 n_tensors:u32                       (32 bytes)
             job sender receiver method meta(JSON)  | zero pad to 8
             n_tensors x (dtype:u8 packed:u8 ndim:u8 0:u8 0:u32 nbytes:u64
                          ndim x dim:u64)
             n_tensors x (raw bytes | zero pad to 8)

Every parse of bytes from a peer checks each field against what it must be
and raises `WireError` saying what was expected and what was received; no
input makes the parser read out of bounds, allocate more than the limits
allow, or call anything but `struct`, `json` and `numpy.frombuffer`.

Example:

```python
import numpy as np
from privkeras.net import wire

frame = wire.Frame(kind=wire.MESSAGE, job="j1", round=3, sender="p0", receiver="p1",
                   tensors=[np.arange(4), np.array([True, False, True])],
                   meta={"step": "mul"})
chunks = wire.encode(frame)              # list of bytes, each <= chunk_bytes + 20
back = wire.decode_chunks(chunks)        # Frame with numpy arrays
back.tensors[1]                          # array([ True, False,  True])
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from privkeras.errors import WireError, format_received

__all__ = [
    "ABORT",
    "DEFAULT_LIMITS",
    "KINDS",
    "MESSAGE",
    "REQUEST",
    "RESPONSE",
    "BitTensor",
    "ChunkAssembler",
    "Frame",
    "WireError",
    "WireLimits",
    "bits",
    "decode",
    "decode_chunks",
    "encode",
    "encode_frame",
]

#: Frame kinds.
MESSAGE = 1  # a tagged point-to-point message of a protocol round
REQUEST = 2  # a call to a registered method
RESPONSE = 3  # the answer to a call (or the first part of it)
ABORT = 4  # a peer gives up a job; receivers stop waiting for it
FETCH = 5  # asks for the rest of a response too large for one chunk
KINDS = {
    MESSAGE: "message",
    REQUEST: "request",
    RESPONSE: "response",
    ABORT: "abort",
    FETCH: "fetch",
}

VERSION = 1
FRAME_MAGIC = b"PKF1"
CHUNK_MAGIC = b"PKC1"
_FRAME_HEADER = struct.Struct("<4sBBHQHBBHHII")
_CHUNK_HEADER = struct.Struct("<4sIIQ")
_TENSOR_HEADER = struct.Struct("<BBBBIQ")
_DIM = struct.Struct("<Q")
CHUNK_HEADER_BYTES = _CHUNK_HEADER.size

#: Wire dtype codes. The only types a tensor may have; bool always travels bit-packed.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("bool"),
    2: np.dtype("<u1"),
    3: np.dtype("<i1"),
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype("<u8"),
    7: np.dtype("<f2"),
    8: np.dtype("<f4"),
    9: np.dtype("<f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in DTYPES.items()}
_PACKED = 1

MAX_JOB_BYTES = 128
MAX_NAME_BYTES = 63
MAX_METHOD_BYTES = 128


@dataclasses.dataclass(frozen=True)
class WireLimits:
    """Sizes a node accepts from its peers (and uses when it sends).

    Args:
        chunk_bytes: Bytes of frame per chunk (one gRPC message each). 4 MiB,
            so that a 1 MiB tensor and its header travel as one chunk. Every node
            of a cluster must accept the chunks its peers send: keep one value.
        max_frame_bytes: Largest frame, header and tensors together.
        max_meta_bytes: Largest JSON metadata dict, encoded.
        max_tensors: Most tensors in one frame.
        max_ndim: Most dimensions of one tensor.
    """

    chunk_bytes: int = 4 << 20
    max_frame_bytes: int = 512 << 20
    max_meta_bytes: int = 64 << 10
    max_tensors: int = 4096
    max_ndim: int = 32

    def __post_init__(self):
        for name in ("chunk_bytes", "max_frame_bytes", "max_meta_bytes", "max_tensors", "max_ndim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"Expected {name} to be a positive integer. {format_received(**{name: value})}"
                )
        if self.chunk_bytes < 1024:
            raise ValueError(
                f"Expected chunk_bytes >= 1024. {format_received(chunk_bytes=self.chunk_bytes)}"
            )

    @property
    def max_message_bytes(self) -> int:
        """The gRPC message size limit that fits one chunk."""
        return self.chunk_bytes + CHUNK_HEADER_BYTES + 1024


#: The limits a node uses unless given others.
DEFAULT_LIMITS = WireLimits()


@dataclasses.dataclass(frozen=True)
class BitTensor:
    """An integer tensor of 0s and 1s that travels packed eight values to a byte.

    Made by `bits(array)`; the receiver gets an array of the same dtype back.
    """

    array: np.ndarray


def bits(array: Any) -> BitTensor:
    """Marks an integer or bool tensor of 0/1 values to be sent bit-packed.

    Raises:
        WireError: The dtype is not an integer or bool, or a value is not 0 or 1.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biu":
        raise WireError(
            f"Expected an integer or bool tensor for bits(). {format_received(dtype=str(array.dtype))}"
        )
    if array.dtype.kind != "b" and array.size and ((array != 0) & (array != 1)).any():
        raise WireError("Expected a tensor of 0s and 1s for bits(). Received: other values")
    return BitTensor(array)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One message between two peers.

    Attributes:
        kind: `MESSAGE`, `REQUEST`, `RESPONSE`, `ABORT` or `FETCH`.
        job: The job the frame belongs to ("" for calls outside any job).
        round: The protocol round (MESSAGE) or a sequence number, >= 0.
        sender: Name of the sending peer.
        receiver: Name of the receiving peer.
        method: The called method (REQUEST), else "".
        meta: A small JSON-serializable dict.
        tensors: numpy arrays (received frames), or anything `np.asarray`
            accepts and `BitTensor`s (frames to send).
    """

    kind: int
    job: str = ""
    round: int = 0
    sender: str = ""
    receiver: str = ""
    method: str = ""
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tensors: Sequence[Any] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in this (received) frame, as they travelled."""
        return sum(_payload_nbytes(t) for t in self.tensors)


# ----------------------------------------------------------------------------- encoding


def encode_frame(frame: Frame, limits: WireLimits = DEFAULT_LIMITS) -> list[Any]:
    """The frame as a list of buffers (bytes and memoryviews) to concatenate.

    Raises:
        WireError: A field or tensor cannot be encoded, or the frame would be
            larger than `limits.max_frame_bytes`.
    """
    if frame.kind not in KINDS:
        raise WireError(
            f"Expected a frame kind in {sorted(KINDS)}. {format_received(kind=frame.kind)}"
        )
    if not isinstance(frame.round, int) or not 0 <= frame.round < 2**63:
        raise WireError(f"Expected a round in [0, 2**63). {format_received(round=frame.round)}")
    job = _encode_text("job", frame.job, MAX_JOB_BYTES)
    sender = _encode_text("sender", frame.sender, MAX_NAME_BYTES)
    receiver = _encode_text("receiver", frame.receiver, MAX_NAME_BYTES)
    method = _encode_text("method", frame.method, MAX_METHOD_BYTES)
    meta = _encode_meta(frame.meta, limits)
    if len(frame.tensors) > limits.max_tensors:
        raise WireError(
            f"Expected at most {limits.max_tensors} tensors in a frame. "
            + format_received(tensors=len(frame.tensors))
        )
    header = _FRAME_HEADER.pack(
        FRAME_MAGIC,
        VERSION,
        frame.kind,
        0,
        frame.round,
        len(job),
        len(sender),
        len(receiver),
        len(method),
        0,
        len(meta),
        len(frame.tensors),
    )
    head = b"".join([header, job, sender, receiver, method, meta])
    descriptors, payloads = [head, _pad(len(head))], []
    total = len(head) + len(descriptors[1])
    for index, tensor in enumerate(frame.tensors):
        descriptor, payload = _encode_tensor(index, tensor, limits)
        descriptors.append(descriptor)
        payloads += [payload, _pad(payload.nbytes)]
        total += len(descriptor) + payload.nbytes + len(payloads[-1])
    if total > limits.max_frame_bytes:
        raise WireError(
            f"Expected a frame of at most max_frame_bytes={limits.max_frame_bytes}. "
            + format_received(frame_bytes=total)
        )
    return descriptors + payloads


def encode(frame: Frame, limits: WireLimits = DEFAULT_LIMITS) -> list[bytes]:
    """Encodes `frame` into chunks of at most `limits.chunk_bytes` of frame each."""
    return list(chunk_buffers(encode_frame(frame, limits), limits.chunk_bytes))


def chunk_buffers(parts: Sequence[Any], chunk_bytes: int) -> Iterable[bytes]:
    """Cuts the concatenation of `parts` into chunks, each with its chunk header."""
    total = sum(memoryview(p).nbytes for p in parts)
    count = max(1, math.ceil(total / chunk_bytes))
    if count == 1:
        yield b"".join([_CHUNK_HEADER.pack(CHUNK_MAGIC, 0, 1, total), *parts])
        return
    pieces: list[Any] = []
    room, index = chunk_bytes, 0
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            take = view[:room]
            pieces.append(take)
            view = view[take.nbytes :]
            room -= take.nbytes
            if room == 0:
                yield b"".join([_CHUNK_HEADER.pack(CHUNK_MAGIC, index, count, total), *pieces])
                pieces, room, index = [], chunk_bytes, index + 1
    if pieces:
        yield b"".join([_CHUNK_HEADER.pack(CHUNK_MAGIC, index, count, total), *pieces])


def _encode_text(name: str, value: Any, limit: int) -> bytes:
    if not isinstance(value, str):
        raise WireError(f"Expected {name} to be a string. {format_received(**{name: value})}")
    data = value.encode("utf-8")
    if len(data) > limit or not value.isprintable():
        raise WireError(
            f"Expected {name} to be printable text of at most {limit} bytes. "
            + format_received(**{name: value[:80]})
        )
    return data


def _encode_meta(meta: Any, limits: WireLimits) -> bytes:
    if not isinstance(meta, Mapping):
        raise WireError(f"Expected meta to be a dict. {format_received(meta=type(meta).__name__)}")
    if not meta:
        return b""
    try:
        data = json.dumps(dict(meta), separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise WireError(
            f"Expected meta to be a JSON-serializable dict with string keys. Received: {error}"
        ) from None
    if len(data) > limits.max_meta_bytes:
        raise WireError(
            f"Expected meta of at most {limits.max_meta_bytes} bytes as JSON. "
            + format_received(meta_bytes=len(data))
        )
    return data


def _encode_tensor(index: int, tensor: Any, limits: WireLimits) -> tuple[bytes, memoryview]:
    packed = isinstance(tensor, BitTensor)
    array = tensor.array if packed else tensor
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise WireError(
            f"Expected tensor {index} to have a dtype in "
            f"{[str(d.newbyteorder('=')) for d in DTYPES.values()]}. "
            + format_received(dtype=str(array.dtype))
        )
    if array.ndim > limits.max_ndim:
        raise WireError(
            f"Expected tensor {index} to have at most {limits.max_ndim} dimensions. "
            + format_received(ndim=array.ndim)
        )
    if array.dtype.kind == "b":
        packed = True
    if packed:
        payload = np.packbits(array.reshape(-1), bitorder="little")
    else:
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        payload = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    descriptor = _TENSOR_HEADER.pack(
        code, _PACKED if packed else 0, array.ndim, 0, 0, payload.nbytes
    )
    descriptor += b"".join(_DIM.pack(int(d)) for d in array.shape)
    return descriptor, memoryview(payload)


def _pad(nbytes: int) -> bytes:
    return bytes(-nbytes % 8)


def _payload_nbytes(tensor: Any) -> int:
    if isinstance(tensor, BitTensor):
        return math.ceil(tensor.array.size / 8)
    array = np.asarray(tensor)
    return math.ceil(array.size / 8) if array.dtype.kind == "b" else array.nbytes


# ----------------------------------------------------------------------------- decoding


class ChunkAssembler:
    """Reassembles the chunks of one frame, checking each against the first.

    Args:
        limits: What the receiver accepts.
        reserve: Called with the frame's total size before its buffer is
            allocated (a node's memory budget); may raise to refuse it.

    Feed chunks in order with `add`; `frame()` decodes once all arrived.
    """

    def __init__(self, limits: WireLimits = DEFAULT_LIMITS, reserve=None):
        self.limits = limits
        self._reserve = reserve
        self._buffer: bytearray | None = None
        self._filled = 0
        self._count = 0
        self._next = 0

    @property
    def total(self) -> int:
        """Bytes of the frame being assembled (0 before the first chunk)."""
        return 0 if self._buffer is None else len(self._buffer)

    @property
    def complete(self) -> bool:
        return self._buffer is not None and self._next == self._count

    def add(self, chunk: bytes) -> None:
        """Adds the next chunk. Raises `WireError` on any inconsistency."""
        view = memoryview(chunk)
        if view.nbytes < CHUNK_HEADER_BYTES:
            raise WireError(
                f"Expected a chunk of at least {CHUNK_HEADER_BYTES} bytes. "
                + format_received(chunk_bytes=view.nbytes)
            )
        magic, index, count, total = _CHUNK_HEADER.unpack_from(view)
        if magic != CHUNK_MAGIC:
            raise WireError(
                f"Expected a chunk starting with {CHUNK_MAGIC!r}. {format_received(magic=magic)}"
            )
        data = view[CHUNK_HEADER_BYTES:]
        if index != self._next:
            raise WireError(f"Expected chunk {self._next} next. {format_received(index=index)}")
        if self._buffer is None:
            self._start(count, total)
        elif (count, total) != (self._count, len(self._buffer)):
            raise WireError(
                f"Expected every chunk of a frame to state count={self._count}, "
                f"total={len(self._buffer)}. " + format_received(count=count, total=total)
            )
        if not data.nbytes or data.nbytes > self.limits.chunk_bytes:
            raise WireError(
                f"Expected 1 to {self.limits.chunk_bytes} bytes of frame per chunk. "
                + format_received(bytes=data.nbytes)
            )
        end = self._filled + data.nbytes
        last = index == count - 1
        if end > len(self._buffer) or (last and end != len(self._buffer)):
            raise WireError(
                f"Expected the chunks to carry exactly total={len(self._buffer)} bytes. "
                + format_received(carried=end, chunk=index, count=count)
            )
        self._buffer[self._filled : end] = data
        self._filled, self._next = end, index + 1

    def frame(self) -> Frame:
        """Decodes the assembled frame. Raises `WireError` if chunks are missing."""
        if not self.complete:
            raise WireError(
                f"Expected {self._count or 'all'} chunks of the frame. "
                + format_received(chunks_received=self._next)
            )
        return decode(self._buffer, self.limits)

    def _start(self, count: int, total: int) -> None:
        if not 0 < total <= self.limits.max_frame_bytes:
            raise WireError(
                f"Expected a frame of 1 to max_frame_bytes={self.limits.max_frame_bytes} bytes. "
                + format_received(total=total)
            )
        least = math.ceil(total / self.limits.chunk_bytes)
        if not least <= count <= total:
            raise WireError(
                f"Expected {least} to {total} chunks for a frame of {total} bytes. "
                + format_received(count=count)
            )
        if self._reserve is not None:
            self._reserve(total)
        self._buffer = bytearray(total)
        self._count = count


def chunk_count(chunk: bytes) -> int:
    """How many chunks the frame that `chunk` belongs to has (1 if the header is unreadable)."""
    view = memoryview(chunk)
    if view.nbytes < CHUNK_HEADER_BYTES:
        return 1
    return max(1, _CHUNK_HEADER.unpack_from(view)[2])


def decode_chunks(chunks: Iterable[bytes], limits: WireLimits = DEFAULT_LIMITS) -> Frame:
    """Reassembles and decodes one frame from its chunks (see `ChunkAssembler`)."""
    assembler = ChunkAssembler(limits)
    for chunk in chunks:
        if assembler.complete:
            raise WireError("Expected no chunk after the last one. Received: one more")
        assembler.add(chunk)
    return assembler.frame()


def decode(data: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> Frame:
    """Decodes one frame. Tensors are numpy views of `data` (writable if `data` is).

    Raises:
        WireError: The bytes are not exactly one valid frame within `limits`.
    """
    view = memoryview(data).cast("B")
    reader = _Reader(view)
    fields = reader.unpack(_FRAME_HEADER, "frame header")
    magic, version, kind, flags, round_, job_len, sender_len, receiver_len = fields[:8]
    method_len, reserved, meta_len, n_tensors = fields[8:]
    if magic != FRAME_MAGIC:
        raise WireError(
            f"Expected a frame starting with {FRAME_MAGIC!r}. {format_received(magic=magic)}"
        )
    _expect("version", version, version == VERSION, f"{VERSION}")
    _expect("kind", kind, kind in KINDS, f"one of {sorted(KINDS)}")
    _expect("flags", flags, flags == 0 and reserved == 0, "0")
    _expect("round", round_, round_ < 2**63, "< 2**63")
    _expect("meta_len", meta_len, meta_len <= limits.max_meta_bytes, f"<= {limits.max_meta_bytes}")
    _expect("n_tensors", n_tensors, n_tensors <= limits.max_tensors, f"<= {limits.max_tensors}")
    job = _decode_text(reader, "job", job_len, MAX_JOB_BYTES)
    sender = _decode_text(reader, "sender", sender_len, MAX_NAME_BYTES)
    receiver = _decode_text(reader, "receiver", receiver_len, MAX_NAME_BYTES)
    method = _decode_text(reader, "method", method_len, MAX_METHOD_BYTES)
    meta = _decode_meta(reader.take(meta_len, "meta"))
    reader.skip_padding()
    specs = [_decode_tensor_spec(reader, i, limits) for i in range(n_tensors)]
    reader.skip_padding()
    tensors = []
    for index, (dtype, packed, shape, nbytes) in enumerate(specs):
        raw = reader.take(nbytes, f"tensor {index}")
        tensors.append(_tensor_from(raw, dtype, packed, shape, index))
        reader.skip_padding()
    if reader.offset != view.nbytes:
        raise WireError(
            f"Expected the frame to end after its last tensor at byte {reader.offset}. "
            + format_received(frame_bytes=view.nbytes)
        )
    return Frame(kind, job, round_, sender, receiver, method, meta, tensors)


class _Reader:
    """Bounds-checked reads from a memoryview."""

    def __init__(self, view: memoryview):
        self.view, self.offset = view, 0

    def take(self, nbytes: int, what: str) -> memoryview:
        end = self.offset + nbytes
        if end > self.view.nbytes:
            raise WireError(
                f"Expected {nbytes} bytes of {what} at byte {self.offset}. "
                + format_received(bytes_left=self.view.nbytes - self.offset)
            )
        part = self.view[self.offset : end]
        self.offset = end
        return part

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        return layout.unpack(self.take(layout.size, what))

    def skip_padding(self) -> None:
        pad = self.take(-self.offset % 8, "padding")
        if any(pad):
            raise WireError(
                f"Expected zero padding at byte {self.offset - pad.nbytes}. Received: non-zero"
            )


def _expect(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise WireError(f"Expected {name} {expected}. {format_received(**{name: value})}")


def _decode_text(reader: _Reader, name: str, length: int, limit: int) -> str:
    _expect(f"{name} length", length, length <= limit, f"<= {limit}")
    raw = bytes(reader.take(length, name))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(
            f"Expected {name} in UTF-8. {format_received(**{name: raw[:80]})}"
        ) from None
    if not text.isprintable():
        raise WireError(
            f"Expected {name} to be printable text. {format_received(**{name: text[:80]})}"
        )
    return text


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _decode_meta(raw: memoryview) -> dict[str, Any]:
    if not raw.nbytes:
        return {}
    try:
        meta = json.loads(bytes(raw).decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise WireError(
            f"Expected meta to be a JSON object. Received: {str(error)[:120]}"
        ) from None
    if not isinstance(meta, dict):
        raise WireError(
            f"Expected meta to be a JSON object. {format_received(meta=type(meta).__name__)}"
        )
    return meta


def _decode_tensor_spec(reader: _Reader, index: int, limits: WireLimits):
    code, flags, ndim, zero8, zero32, nbytes = reader.unpack(
        _TENSOR_HEADER, f"tensor {index} header"
    )
    dtype = DTYPES.get(code)
    _expect(f"tensor {index} dtype code", code, dtype is not None, f"in {sorted(DTYPES)}")
    _expect(
        f"tensor {index} flags", flags, flags in (0, _PACKED) and zero8 == zero32 == 0, "0 or 1"
    )
    packed = flags == _PACKED
    _expect(
        f"tensor {index} packing",
        flags,
        packed == (dtype.kind == "b") or (packed and dtype.kind in "iu"),
        "bit-packing for bool (always) and integer tensors only",
    )
    _expect(f"tensor {index} ndim", ndim, ndim <= limits.max_ndim, f"<= {limits.max_ndim}")
    shape = tuple(_DIM.unpack(reader.take(8, f"tensor {index} shape"))[0] for _ in range(ndim))
    numel = math.prod(shape)
    expected = math.ceil(numel / 8) if packed else numel * dtype.itemsize
    if nbytes != expected:
        raise WireError(
            f"Expected tensor {index} of shape {shape} and dtype {dtype} to carry {expected} bytes. "
            + format_received(nbytes=nbytes)
        )
    if numel * dtype.itemsize > limits.max_frame_bytes:
        raise WireError(
            f"Expected tensor {index} to unpack to at most max_frame_bytes={limits.max_frame_bytes}. "
            + format_received(shape=shape, dtype=str(dtype))
        )
    return dtype, packed, shape, nbytes


def _tensor_from(raw: memoryview, dtype: np.dtype, packed: bool, shape: tuple, index: int):
    if not packed:
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    numel = math.prod(shape)
    packed_bytes = np.frombuffer(raw, dtype=np.uint8)
    spare = packed_bytes.size * 8 - numel
    if spare and packed_bytes[-1] >> (8 - spare):
        raise WireError(
            f"Expected zero padding bits after tensor {index}'s last bit. Received: non-zero"
        )
    values = np.unpackbits(packed_bytes, count=numel, bitorder="little")
    return (
        values.view(np.bool_).reshape(shape)
        if dtype.kind == "b"
        else values.astype(dtype).reshape(shape)
    )
