"""Bytes for everything that crosses between client and server, parsed strictly.

A message is `b"PKHE"`, a little-endian u32 header length, a JSON header
(`kind`, `version`, the fields of that kind, `sizes` of the blobs) and the
blobs. SEAL objects (ciphertexts, keys) are serialized by SEAL itself,
compressed with zstd.

Every parse of bytes from the other role goes through `unpack_message` with
the schema of its kind: a missing or unexpected field, a field of the wrong
type or out of range, a blob count or size that does not add up, a SEAL
object SEAL refuses, all raise `HEInputError` saying what was expected and
what was received, before anything is computed. What parses is
well-formed; whether it is *meant* for the receiver (key pair, spec) is
checked after, as `ContextMismatchError`.

Notes:
    TenSEAL's own serialization goes through protobuf, and crashes the
    process (segmentation fault) when TensorFlow was imported first, as it is
    under Keras's default backend: both ship protobuf and their symbols clash.
    SEAL's native format has no such dependency. The `tenseal.sealapi`
    bindings only save to and load from files, so objects go through a
    private temporary file (mode 0600, in memory-backed `/dev/shm` when it
    exists) that is removed at once.

    The checks make malformed bytes a typed error; they do not authenticate
    the sender (CKKS has no integrity, see docs/policies/he.md).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privkeras.backends.he.errors import HEInputError
from privkeras.backends.he.params import CKKSParameters
from privkeras.errors import PrivacyPolicyError

__all__ = [
    "FieldError",
    "ckks_parameters",
    "hex_id",
    "integer",
    "integers",
    "message_kind",
    "one_of",
    "optional",
    "pack_message",
    "seal_from_bytes",
    "seal_to_bytes",
    "unpack_message",
]

MAGIC = b"PKHE"
VERSION = 1
#: Most blobs one message may hold (far above any packing: a ciphertext group).
MAX_BLOBS = 1 << 16
_FRAME = struct.Struct("<I")
#: SEAL's serialization header: magic, header size, version, compression, reserved, size.
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E


def pack_message(kind: str, header: dict[str, Any], blobs: list[bytes]) -> bytes:
    meta = {"kind": kind, "version": VERSION, **header, "sizes": [len(b) for b in blobs]}
    encoded = json.dumps(meta, sort_keys=True, allow_nan=False).encode()
    return b"".join([MAGIC, _FRAME.pack(len(encoded)), encoded, *blobs])


# -- field schemas ---------------------------------------------------------------------------
class FieldError(Exception):
    """A header field failed its schema; `expected` says what it should be."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


Validator = Callable[[Any], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, high: int) -> Validator:
    """An int (not a bool) in `[low, high]`."""

    def check(value: Any) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise FieldError(f"an integer in [{low}, {high}]")
        return value

    return check


def integers(
    low: int, high: int, max_length: int, min_length: int = 0, unique: bool = False
) -> Validator:
    """A list of `min_length..max_length` ints in `[low, high]` (distinct when `unique`)."""

    def check(value: Any) -> list[int]:
        expected = (
            f"a list of {min_length} to {max_length} {'distinct ' if unique else ''}"
            f"integers in [{low}, {high}]"
        )
        if not isinstance(value, list) or not min_length <= len(value) <= max_length:
            raise FieldError(expected)
        if not all(_is_int(v) and low <= v <= high for v in value):
            raise FieldError(expected)
        if unique and len(set(value)) != len(value):
            raise FieldError(expected)
        return value

    return check


def hex_id(length: int = 16) -> Validator:
    """A lowercase hexadecimal string of `length` characters (a fingerprint)."""
    pattern = re.compile(f"[0-9a-f]{{{length}}}")

    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise FieldError(f"a {length}-character hexadecimal fingerprint")
        return value

    return check


def one_of(*choices: Any) -> Validator:
    def check(value: Any) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):
            raise FieldError(f"one of {list(choices)}")
        return value

    return check


def optional(validator: Validator) -> Validator:
    """`validator`, or None."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return validator(value)
        except FieldError as error:
            raise FieldError(f"null or {error.expected}") from None

    return check


def mapping(value: Any) -> dict[str, Any]:
    """A JSON object (its own fields are checked by whoever reads it)."""
    if not isinstance(value, dict):
        raise FieldError("a JSON object")
    return value


_PARAMETER_FIELDS = {
    "poly_modulus_degree": integer(1024, 32768),
    "coeff_mod_bit_sizes": integers(1, 60, 64, min_length=2),
    "scale_bits": integer(1, 60),
    "security_level": integer(128, 256),
}


def ckks_parameters(value: Any) -> CKKSParameters:
    """A `CKKSParameters.get_config()` dict that makes valid parameters."""
    expected = f"CKKS parameters {{{', '.join(_PARAMETER_FIELDS)}}} within the HE security tables"
    if not isinstance(value, dict) or set(value) != set(_PARAMETER_FIELDS):
        raise FieldError(expected)
    try:
        config = {name: check(value[name]) for name, check in _PARAMETER_FIELDS.items()}
        return CKKSParameters.from_config(config)
    except (FieldError, PrivacyPolicyError):
        raise FieldError(expected) from None


# -- messages ------------------------------------------------------------------------------
def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _split(data: bytes, kind: str) -> tuple[Any, bytes]:
    """`(header, blob bytes)`; raises `HEInputError` for bytes that are no message at all."""
    where = f"a privkeras HE {kind!r} message (b'PKHE', u32 header length, JSON header, blobs)"
    if len(data) < 8 or data[:4] != MAGIC:
        raise HEInputError(
            f"Expected {where}. Received: {len(data)} bytes starting with {data[:8]!r}"
        )
    (length,) = _FRAME.unpack_from(data, 4)
    if length > len(data) - 8:
        raise HEInputError(
            f"Expected {where}. Received: a header length of {length} bytes in a message of "
            f"{len(data)} bytes (truncated, or a forged length)"
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise HEInputError(
            f"Expected {where}. Received: a header that is not UTF-8 JSON "
            f"({type(error).__name__}: {str(error)[:120]})"
        ) from None
    return header, data[8 + length :]


def message_kind(data: bytes) -> str | None:
    """The `kind` a message's header names (None when it names none).

    Raises:
        HEInputError: For bytes that are not a message at all.
    """
    header, _ = _split(bytes(data), "any")
    kind = header.get("kind") if isinstance(header, dict) else None
    return kind if isinstance(kind, str) else None


def unpack_message(
    data: Any,
    kind: str,
    fields: dict[str, Validator],
    blobs: tuple[int, int] = (0, MAX_BLOBS),
) -> tuple[dict[str, Any], list[bytes]]:
    """Splits and validates a message made by `pack_message`.

    Args:
        data: The bytes received.
        kind: The message kind expected.
        fields: Every header field the kind has (no other is accepted), each
            with the validator that checks and returns its value.
        blobs: The least and most blobs the kind carries.

    Returns:
        `(header, blobs)`: the validated fields (with `kind`, `version` and
        `sizes`) and the blobs.

    Raises:
        HEInputError: For bytes that are not a well-formed message of `kind`:
            truncated, a forged length or size, a missing, unexpected or
            invalid field, the wrong number of blobs.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HEInputError(
            f"Expected the bytes of a privkeras HE {kind!r} message. Received: an object of "
            f"type {type(data).__name__}"
        )
    data = bytes(data)
    header, payload = _split(data, kind)
    if not isinstance(header, dict):
        raise HEInputError(
            f"Expected a JSON object as the header of a privkeras HE {kind!r} message. "
            f"Received: a JSON {type(header).__name__}"
        )
    version = header.get("version")
    if header.get("kind") != kind or type(version) is not int or version != VERSION:
        raise HEInputError(
            f"Expected a privkeras HE {kind!r} message, version {VERSION}. Received: kind="
            f"{_shown(header.get('kind'))}, version={_shown(version)}"
        )
    expected = {"kind", "version", "sizes", *fields}
    missing, extra = sorted(expected - set(header)), sorted(set(header) - expected)
    if missing or extra:
        raise HEInputError(
            f"Expected the fields {sorted(expected)} in a {kind!r} message. Received: "
            f"missing={missing}, unexpected={[_shown(name, 40) for name in extra]}"
        )
    validated = {"kind": kind, "version": VERSION}
    for name, check in fields.items():
        validated[name] = _field(kind, name, header[name], check)
    low, high = blobs
    sizes = _field(kind, "sizes", header["sizes"], integers(0, len(payload), high, low))
    if sum(sizes) != len(payload):
        raise HEInputError(
            f"Expected blob sizes in a {kind!r} message to add up to the {len(payload)} bytes "
            f"after the header. Received: sizes adding up to {sum(sizes)} (truncated, "
            f"extended or forged)"
        )
    validated["sizes"] = sizes
    offsets = [0, *itertools.accumulate(sizes)]
    return validated, [payload[a:b] for a, b in itertools.pairwise(offsets)]


def _field(kind: str, name: str, value: Any, check: Validator) -> Any:
    try:
        return check(value)
    except FieldError as error:
        raise HEInputError(
            f"Expected field {name!r} of a {kind!r} message to be {error.expected}. "
            f"Received: {name}={_shown(value)}"
        ) from None


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- SEAL objects --------------------------------------------------------------------------
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


def _check_seal_header(cls: type, data: bytes) -> None:
    what = f"a serialized SEAL {cls.__name__}"
    if len(data) < _SEAL_HEADER.size:
        raise HEInputError(f"Expected {what}. Received: {len(data)} bytes, shorter than a header")
    magic, header_size, major, _, compression, _, size = _SEAL_HEADER.unpack_from(data)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or major not in (3, 4):
        raise HEInputError(
            f"Expected {what} (SEAL 3.x or 4.x header). Received: magic={magic:#x}, "
            f"header_size={header_size}, version_major={major}"
        )
    if compression not in (0, 1, 2) or size != len(data):
        raise HEInputError(
            f"Expected {what} of {len(data)} bytes with a known compression. Received: a header "
            f"claiming {size} bytes, compression mode {compression}"
        )


def seal_from_bytes(cls: type, seal_context: Any, data: bytes) -> Any:
    """Loads a SEAL object of class `cls` saved by `seal_to_bytes`, validated for the context.

    SEAL checks the object against the encryption parameters as it loads it
    (every coefficient reduced, sizes consistent).

    Raises:
        HEInputError: For bytes SEAL rejects (corrupt, truncated, or made for
            other parameters).
    """
    _check_seal_header(cls, data)
    fd, path = tempfile.mkstemp(prefix="privkeras-he-", dir=_scratch_dir())
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        obj = cls()
        try:
            obj.load(seal_context, path)
        except (ValueError, RuntimeError, IndexError, OverflowError, MemoryError, TypeError) as e:
            raise HEInputError(
                f"Expected a serialized {cls.__name__} valid for these encryption parameters. "
                f"Received: {len(data)} bytes that SEAL rejects ({str(e)[:160]})"
            ) from None
        return obj
    finally:
        os.unlink(path)
