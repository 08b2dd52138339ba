"""A strict little-endian binary layout for secure-aggregation messages.

Every field has a fixed width or an explicit, bounded length; a reader refuses
short input, over-long lengths, values out of range and trailing bytes with a
`SecAggMessageError` that says what it expected and what it found. No pickle,
no framework serialization: what a transport carries is exactly these bytes.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from privkeras.backends.federated.secagg.errors import SecAggMessageError

__all__ = ["MAX_COUNT", "MAX_NAME_BYTES", "Reader", "Writer"]

#: Upper bound on any list in a message (owners, neighbours, shares).
MAX_COUNT = 1 << 20
#: Upper bound on an owner's name, in UTF-8 bytes.
MAX_NAME_BYTES = 255


class Writer:
    """Appends fields to a byte buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack("<B", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack("<I", value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(struct.pack("<Q", value))
        return self

    def f64(self, value: float) -> Writer:
        self._parts.append(struct.pack("<d", value))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def name(self, value: str) -> Writer:
        encoded = value.encode("utf-8")
        if not 1 <= len(encoded) <= MAX_NAME_BYTES:
            raise ValueError(
                f"Expected an owner name of 1 to {MAX_NAME_BYTES} UTF-8 bytes. "
                f"Received: name={value!r}"
            )
        return self.u8(len(encoded)).raw(encoded)

    def indices(self, values: tuple[int, ...]) -> Writer:
        self.u32(len(values))
        self._parts.append(np.asarray(values, dtype="<u4").tobytes())
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads fields back, refusing anything that does not fit.

    Args:
        data: The bytes to read.
        what: What the bytes are (a message type), for error messages.
    """

    def __init__(self, data: bytes, what: str):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SecAggMessageError(
                f"Expected bytes for a {what} message. Received: {type(data).__name__}"
            )
        self._data = memoryview(bytes(data))
        self._at = 0
        self.what = what

    def fail(self, expected: str, received: str) -> SecAggMessageError:
        return SecAggMessageError(
            f"Malformed {self.what} message at byte {self._at}: expected {expected}. "
            f"Received: {received}"
        )

    def take(self, n: int) -> memoryview:
        if n < 0 or self._at + n > len(self._data):
            raise self.fail(f"{n} more bytes", f"{len(self._data) - self._at} bytes left")
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def f64(self, *, finite: bool = True) -> float:
        value = struct.unpack("<d", self.take(8))[0]
        if finite and not math.isfinite(value):
            raise self.fail("a finite number", f"{value}")
        return value

    def raw(self, n: int) -> bytes:
        return bytes(self.take(n))

    def count(self, field: str, maximum: int = MAX_COUNT) -> int:
        value = self.u32()
        if value > maximum:
            raise self.fail(f"{field} <= {maximum}", f"{field}={value}")
        return value

    def name(self) -> str:
        length = self.u8()
        if length == 0:
            raise self.fail("an owner name of at least one byte", "an empty name")
        try:
            return bytes(self.take(length)).decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.fail("an owner name in UTF-8", repr(err)) from None

    def index(self, field: str, bound: int) -> int:
        value = self.u32()
        if value >= bound:
            raise self.fail(f"{field} < {bound}", f"{field}={value}")
        return value

    def indices(self, field: str, bound: int) -> tuple[int, ...]:
        """Distinct indices below `bound`, in increasing order."""
        count = self.count(field)
        values = np.frombuffer(self.take(4 * count), dtype="<u4")
        if count and (int(values.max()) >= bound or np.any(np.diff(values.astype(np.int64)) <= 0)):
            raise self.fail(
                f"distinct {field} below {bound} in increasing order", f"{values.tolist()[:8]}"
            )
        return tuple(int(v) for v in values)

    def done(self) -> None:
        left = len(self._data) - self._at
        if left:
            raise self.fail("the end of the message", f"{left} trailing bytes")
