"""Bundles: what `model.export(dir, format="mpc" | "he")` writes, and how a server reads it back.

A bundle is a folder with a public `manifest.json` and one subfolder per
server role (MPC: one per compute party, and Pond's dealer; HE: the server).
The manifest names the model's architecture, the engine and its protocol or
parameters, the codec, the input and output specs, the format version, and
the SHA-256 digest and size of every other file. Each role's folder holds
its own files and a copy of the manifest, so that a role's folder alone can
be copied to the host that serves it.

Every file is checked against the manifest's digest before anything reads
it; a missing, extra-sized or tampered file is a `BundleError` naming it.
Arrays are stored as `.npz` archives of plain numeric arrays and read with
`allow_pickle=False`: a bundle never holds or runs a pickle.

Example:

```python
from privkeras.serving import bundle

manifest = bundle.read_manifest("credit_model")        # or .../p0, or .../manifest.json
manifest.kind, manifest.engine, manifest.input_shape
arrays = manifest.load_arrays("p0/shares.npz")         # digest checked first
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from privkeras.errors import InvalidInputError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "BundleError",
    "BundleWriter",
    "Manifest",
    "parse_manifest",
    "read_manifest",
]

#: The `format` field of every privkeras bundle manifest.
FORMAT = "privkeras-bundle"
#: The version this privkeras writes and reads; any other is refused.
FORMAT_VERSION = 1
#: The manifest's file name, at the top of a bundle and in each role's folder.
MANIFEST = "manifest.json"
#: Largest manifest read (the architecture JSON of a big model is well below).
MAX_MANIFEST_BYTES = 16 << 20
_KINDS = ("mpc", "he")
_DTYPES = ("int64", "float32", "float64", "uint8")


class BundleError(InvalidInputError):
    """A bundle is missing, malformed, of another format version, or fails its digests."""


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed, checked manifest and the folder it was read from.

    Attributes:
        data: The manifest's fields (JSON types).
        root: The bundle's top folder, or the role's folder when only that was
            deployed (None for a manifest received from a server).
        role_dir: The role folder the manifest was read from (None: the top folder).
        digest: SHA-256 of the manifest's bytes: servers and clients of one
            bundle compare it, so none serves or queries another bundle.
        raw: The manifest's bytes.
    """

    data: Mapping[str, Any]
    root: Path | None
    role_dir: str | None
    digest: str
    raw: bytes = dataclasses.field(repr=False, default=b"")

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def engine(self) -> str:
        return self.data["engine"]

    @property
    def roles(self) -> tuple[str, ...]:
        """The server roles, in the order their processes are started."""
        return tuple(self.data["roles"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data["input"]["shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.data["output"]["shape"])

    def path(self, relative: str) -> Path:
        """Where a file the manifest lists lies (in a role's folder deployed alone, too)."""
        if self.root is None:
            raise BundleError(
                "Expected a manifest read from a bundle folder. Received: one sent by a server"
            )
        if self.role_dir is not None:
            role, _, rest = relative.partition("/")
            if role != self.role_dir:
                raise BundleError(
                    f"Expected a file of role {self.role_dir!r} in {self.root}. "
                    f"Received: a request for {relative!r} (another role's file)"
                )
            return self.root / rest
        return self.root / relative

    def verify(self, relative: str) -> Path:
        """Checks one listed file's size and digest; returns its path.

        Raises:
            BundleError: The file is not listed, missing, or its bytes differ.
        """
        entry = self.data["files"].get(relative)
        if entry is None:
            raise BundleError(
                f"Expected a file listed in the manifest. Received: {relative!r} "
                f"(listed: {sorted(self.data['files'])})"
            )
        path = self.path(relative)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise BundleError(
                f"Expected bundle file {relative!r} at {path}. Received: {error.strerror}"
            ) from None
        if size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(
                f"Expected bundle file {relative!r} to match the manifest's digest "
                f"(sha256 {entry['sha256'][:16]}..., {entry['bytes']} bytes). Received: "
                f"{size} bytes with another digest: the file was changed or corrupted; "
                "it is not loaded"
            )
        return path

    def verify_role(self, role: str) -> None:
        """Checks every file of `role` before any is read."""
        for relative in self.data["files"]:
            if relative.split("/", 1)[0] == role:
                self.verify(relative)

    def load_arrays(
        self, relative: str, expected: Mapping[str, tuple[str, tuple[int, ...]]]
    ) -> dict[str, np.ndarray]:
        """The arrays of a listed `.npz` file, after its digest matched; never unpickles.

        Args:
            relative: The file, as the manifest lists it.
            expected: `{name: (dtype, shape)}`: exactly these arrays must be in it.

        Raises:
            BundleError: A digest mismatch, an unreadable archive, or other arrays.
        """
        path = self.verify(relative)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError) as error:
            raise BundleError(
                f"Expected a numpy archive of plain arrays in {relative!r}. Received: {error}"
            ) from None
        if set(arrays) != set(expected):
            raise BundleError(
                f"Expected arrays {sorted(expected)} in {relative!r}. Received: {sorted(arrays)}"
            )
        for name, (dtype, shape) in expected.items():
            array = arrays[name]
            if str(array.dtype) != dtype or tuple(array.shape) != tuple(shape):
                raise BundleError(
                    f"Expected {name!r} in {relative!r} of dtype {dtype} and shape "
                    f"{tuple(shape)}. Received: {array.dtype} {array.shape}"
                )
        return arrays


class BundleWriter:
    """Writes a bundle: files first (each digested), then the manifests.

    Args:
        root: The bundle's folder; it must not exist, or be empty, unless `overwrite`.
        overwrite: Replace an existing bundle folder.

    Raises:
        BundleError: `root` exists, is not empty, and `overwrite` is False.
    """

    def __init__(self, root: str | os.PathLike, overwrite: bool = False):
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            if not overwrite:
                raise BundleError(
                    f"Expected a new or empty folder to export into. Received: {str(self.root)!r} "
                    "exists (pass overwrite=True to replace it)"
                )
            if self.root.is_dir():
                shutil.rmtree(self.root)
            else:
                self.root.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, dict[str, Any]] = {}

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Writes one file (mode 0600: a share is a secret of its party)."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        self.files[relative] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def write_arrays(self, relative: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Writes plain numeric arrays as an uncompressed `.npz` (no object arrays, no pickle)."""
        for name, array in arrays.items():
            if str(np.asarray(array).dtype) not in _DTYPES:
                raise TypeError(
                    f"Expected arrays of dtype {list(_DTYPES)}. Received: {name}={array.dtype}"
                )
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
        self.write_bytes(relative, buffer.getvalue())

    def finish(self, fields: Mapping[str, Any]) -> Manifest:
        """Writes `manifest.json` at the top and in each role's folder; returns it parsed.

        Args:
            fields: The engine's manifest fields: `kind`, `engine`, `roles`,
                `input`, `output`, `model`, and its own (protocol, codec, ...).
        """
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "privkeras_version": _version(),
            **fields,
            "files": dict(sorted(self.files.items())),
        }
        text = json.dumps(data, indent=1, sort_keys=True).encode()
        _check_fields(data, str(self.root))
        for folder in ["", *data["roles"]]:
            target = self.root / folder / MANIFEST
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text)
        return read_manifest(self.root)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Reads and checks a bundle's manifest.

    Args:
        path: The bundle's folder, one role's folder in it (or deployed
            alone), or a `manifest.json`.

    Raises:
        BundleError: No readable manifest, malformed JSON, another format or
            version, or fields of the wrong type.
    """
    path = Path(path)
    file = path if path.name == MANIFEST and not path.is_dir() else path / MANIFEST
    try:
        with open(file, "rb") as handle:
            text = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise BundleError(
            f"Expected a privkeras bundle (a folder with {MANIFEST}, from model.export(..., "
            f"format='mpc' or 'he')). Received: {str(path)!r} ({error.strerror})"
        ) from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"Expected a manifest of at most {MAX_MANIFEST_BYTES} bytes. Received: a larger {file}"
        )
    data = _parse(text, str(file))
    folder = file.parent
    # A role's folder (deployed alone or inside the bundle) reads only its own files.
    in_role = folder.name in data["roles"] and not (folder / folder.name).is_dir()
    role_dir = folder.name if in_role else None
    return Manifest(data, folder, role_dir, hashlib.sha256(text).hexdigest(), text)


def parse_manifest(text: bytes, where: str = "a server's reply") -> Manifest:
    """A manifest from bytes (as a server sends it to clients), checked as `read_manifest` checks.

    Raises:
        BundleError: As `read_manifest`.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"Expected a manifest of at most {MAX_MANIFEST_BYTES} bytes. Received: {len(text)}"
        )
    return Manifest(_parse(text, where), None, None, hashlib.sha256(text).hexdigest(), text)


def _parse(text: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"Expected a JSON manifest in {where}. Received: {error}") from None
    _check_fields(data, where)
    return data


def _version() -> str:
    """privkeras's version, from its installed metadata (not `privkeras.__version__`: importing
    the package's root from here would make every engine depend on every other)."""
    from importlib import metadata

    try:
        return metadata.version("privkeras")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_fields(data: Any, where: str) -> None:
    """Refuses a manifest of another format, version or shape, naming the field."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"Expected a {FORMAT!r} manifest in {where}. Received: format={got!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"Expected bundle format_version {FORMAT_VERSION} (this privkeras). Received: "
            f"format_version={data.get('format_version')!r} in {where}; export the model again "
            "with this version"
        )
    checks = {
        "kind": lambda v: v in _KINDS,
        "engine": lambda v: isinstance(v, str) and bool(v),
        "roles": lambda v: isinstance(v, list) and v and all(_is_name(r) for r in v),
        "model": lambda v: isinstance(v, str),
        "input": lambda v: isinstance(v, dict) and _is_shape(v.get("shape")),
        "output": lambda v: isinstance(v, dict) and _is_shape(v.get("shape")),
        "files": lambda v: isinstance(v, dict) and all(_is_entry(k, e) for k, e in v.items()),
    }
    for name, ok in checks.items():
        if name not in data or not ok(data[name]):
            raise BundleError(
                f"Expected a valid {name!r} field in the manifest {where}. "
                f"Received: {str(data.get(name))[:200]!r}"
            )


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value.isalnum() and len(value) <= 63


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value
    )


def _is_entry(relative: Any, entry: Any) -> bool:
    parts = relative.split("/") if isinstance(relative, str) else [""]
    return (
        all(p and p not in (".", "..") for p in parts)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
        and isinstance(entry.get("bytes"), int)
    )
