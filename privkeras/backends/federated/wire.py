"""The bytes of a federated message: a JSON header and raw little-endian arrays.

Every request and answer between the coordinator and a data owner is one
message, in-process and over the network alike, so that the simulated
owners run the very code (and send the very bytes) that worker processes do.

Layout: `b"PKFM"`, a version byte, the header length (uint32, little
endian), the UTF-8 JSON header, then the arrays back to back. The header
holds the message's fields and, under `"arrays"`, each array's name, dtype
and shape. Arrays are float32, float64, int32, int64, uint8, uint32 or
uint64 (masked ring vectors travel as unsigned integers); decoding never
unpickles and checks every length.

Example:

```python
from privkeras.backends.federated import wire

data = wire.encode({"round": 3}, {"weights": np.zeros(10, np.float32)})
fields, arrays = wire.decode(data)
```
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from privkeras.backends.federated.errors import WireFormatError

__all__ = ["decode", "encode"]

_MAGIC = b"PKFM"
_VERSION = 1
_PREFIX = struct.Struct("<4sBI")
_DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float64", "int32", "int64", "uint8", "uint32", "uint64")
}
_ARRAYS_KEY = "arrays"


def encode(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """One message: JSON-serializable `fields` and named numpy `arrays`.

    Raises:
        WireFormatError: For an array of another dtype or a reserved field name.
    """
    if _ARRAYS_KEY in fields:
        raise WireFormatError(f"Expected no field named {_ARRAYS_KEY!r}: it is reserved.")
    specs, blobs = [], []
    for name, array in (arrays or {}).items():
        array = np.asarray(array)
        dtype = _DTYPES.get(array.dtype.name)
        if dtype is None:
            raise WireFormatError(
                f"Expected arrays of dtype {sorted(_DTYPES)}. "
                f"Received: {name} of dtype {array.dtype}"
            )
        specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        blobs.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
    header = json.dumps({**fields, _ARRAYS_KEY: specs}, separators=(",", ":")).encode()
    return b"".join([_PREFIX.pack(_MAGIC, _VERSION, len(header)), header, *blobs])


def decode(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The fields and arrays of a message made by `encode`.

    Raises:
        WireFormatError: For bytes that are not a whole, well-formed message.
    """
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise WireFormatError(f"Expected a federated message. Received: {len(view)} bytes")
    magic, version, header_length = _PREFIX.unpack_from(view)
    if magic != _MAGIC or version != _VERSION:
        raise WireFormatError(
            f"Expected a federated message of version {_VERSION}. "
            f"Received: magic={bytes(magic)!r}, version={version}"
        )
    start = _PREFIX.size + header_length
    try:
        fields = json.loads(bytes(view[_PREFIX.size : start]))
        specs = fields.pop(_ARRAYS_KEY)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WireFormatError(f"Expected a JSON object header. Received: {error}") from None
    arrays, offset = {}, start
    for spec in specs if isinstance(specs, list) else [None]:
        name, dtype, shape = _check_spec(spec)
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(view):
            raise WireFormatError(
                f"Expected {size} bytes for array {name!r}. "
                f"Received: {len(view) - offset} bytes left"
            )
        arrays[name] = np.frombuffer(view[offset : offset + size], dtype=dtype).reshape(shape)
        offset += size
    if offset != len(view):
        raise WireFormatError(f"Expected a message of {offset} bytes. Received: {len(view)} bytes")
    return fields, arrays


def _check_spec(spec: Any) -> tuple[str, np.dtype, tuple[int, ...]]:
    try:
        name, dtype, shape = spec["name"], _DTYPES[spec["dtype"]], tuple(spec["shape"])
        if not isinstance(name, str) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise TypeError
    except (KeyError, TypeError, IndexError):
        raise WireFormatError(
            f"Expected an array spec with a name, a dtype in {sorted(_DTYPES)} and a shape. "
            f"Received: {spec!r}"
        ) from None
    return name, dtype, shape
