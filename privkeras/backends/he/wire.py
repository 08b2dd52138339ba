"""Bytes for everything that crosses between client and server.

A message is `b"PKHE"`, a little-endian u32 header length, a JSON header
(`kind`, `version`, metadata, `sizes` of the blobs) and the blobs. SEAL
objects (ciphertexts, keys) are serialized by SEAL itself, compressed with
zstd.

Notes:
    TenSEAL's own serialization goes through protobuf, and crashes the
    process (segmentation fault) when TensorFlow was imported first, as it is
    under Keras's default backend: both ship protobuf and their symbols clash.
    SEAL's native format has no such dependency. The `tenseal.sealapi`
    bindings only save to and load from files, so objects go through a
    private temporary file (mode 0600, in memory-backed `/dev/shm` when it
    exists) that is removed at once.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from privkeras.backends.he.errors import HEInputError

__all__ = ["pack_message", "seal_from_bytes", "seal_to_bytes", "unpack_message"]

MAGIC = b"PKHE"
VERSION = 1


def pack_message(kind: str, header: dict[str, Any], blobs: list[bytes]) -> bytes:
    meta = {"kind": kind, "version": VERSION, **header, "sizes": [len(b) for b in blobs]}
    encoded = json.dumps(meta, sort_keys=True).encode()
    return b"".join([MAGIC, struct.pack("<I", len(encoded)), encoded, *blobs])


def unpack_message(data: bytes, kind: str) -> tuple[dict[str, Any], list[bytes]]:
    """Splits a message made by `pack_message`.

    Raises:
        HEInputError: For bytes that are not a privkeras HE message of `kind`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HEInputError(f"Expected bytes. Received: an object of type {type(data).__name__}")
    data = bytes(data)
    try:
        if data[:4] != MAGIC:
            raise ValueError("bad magic")
        (length,) = struct.unpack("<I", data[4:8])
        meta = json.loads(data[8 : 8 + length].decode())
        offset, blobs = 8 + length, []
        for size in meta["sizes"]:
            blobs.append(data[offset : offset + size])
            offset += size
        if offset != len(data):
            raise ValueError("length mismatch")
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as error:
        raise HEInputError(
            f"Expected a privkeras HE {kind!r} message. Received: {len(data)} bytes that do not "
            f"parse ({error})"
        ) from None
    if meta.get("kind") != kind or meta.get("version") != VERSION:
        raise HEInputError(
            f"Expected a privkeras HE {kind!r} message, version {VERSION}. Received: kind="
            f"{meta.get('kind')!r}, version={meta.get('version')!r}"
        )
    return meta, blobs


def _scratch_dir() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def seal_to_bytes(obj: Any) -> bytes:
    """SEAL's own serialization of a SEAL object (ciphertext, key, parameters)."""
    fd, path = tempfile.mkstemp(prefix="privkeras-he-", dir=_scratch_dir())
    os.close(fd)
    try:
        obj.save(path)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def seal_from_bytes(cls: type, seal_context: Any, data: bytes) -> Any:
    """Loads a SEAL object of class `cls` saved by `seal_to_bytes`, validated for the context.

    Raises:
        HEInputError: For bytes SEAL rejects (corrupt, or made for other parameters).
    """
    fd, path = tempfile.mkstemp(prefix="privkeras-he-", dir=_scratch_dir())
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        obj = cls()
        try:
            obj.load(seal_context, path)
        except (ValueError, RuntimeError) as error:
            raise HEInputError(
                f"Expected a serialized {cls.__name__} valid for these encryption parameters. "
                f"Received: {len(data)} bytes that SEAL rejects ({error})"
            ) from None
        return obj
    finally:
        os.unlink(path)
