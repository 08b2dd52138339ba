"""One evaluation worker process of an `EvaluationPool` (server side: public material only).

The pool starts `python -c BOOTSTRAP ROOT` and talks to it over its stdin
and stdout in frames: a little-endian u32 length, then a `wire` message.
Requests are answered one at a time, in order:

- `worker-context` (`id`; blob: `PublicContext.to_bytes()`): keep the public
  keys under `id`;
- `worker-program` (`id`, `slots`, `block`, `zero_threshold`; blob:
  `HEGraph.to_bytes()`): keep the packed program under `id`;
- `worker-evaluate` (`program`, `context`; blobs: SEAL input ciphertexts):
  run the program, answer `worker-result` with the output ciphertexts.

Anything that fails is answered with `worker-error` (the error's type and
text; `HEInputError` for ciphertexts that do not load as fresh inputs,
which the pool raises as such), and the worker goes on; it exits when its stdin closes, so it never
outlives the pool's process.

The worker holds no secret key (it is given none, and `PublicContext`
has no place for one), no Keras and no TensorFlow: `BOOTSTRAP` binds the
`privkeras.backends` and `privkeras.backends.he` packages without running
their `__init__`, which register every engine and import Keras (0.8 s and
70 MB per worker measured on the project machine, against 0.15 s without).
"""

from __future__ import annotations

import collections
import struct
import sys
from typing import Any, BinaryIO

from privkeras.backends.he.wire import (
    FieldError,
    integer,
    message_kind,
    pack_message,
    seal_to_bytes,
    unpack_message,
)

__all__ = ["BOOTSTRAP", "FRAME", "main", "read_frame", "write_frame"]

#: The length before each frame.
FRAME = struct.Struct("<I")
_KEPT = 4  # contexts and programs kept per worker

BOOTSTRAP = """\
import sys, types
root = sys.argv[1]
sys.path.insert(0, root)
for name in ("privkeras.backends", "privkeras.backends.he"):
    package = types.ModuleType(name)
    package.__path__ = [root + "/" + name.replace(".", "/")]
    sys.modules[name] = package
from privkeras.backends.he.worker import main
main()
"""


def write_frame(stream: BinaryIO, message: bytes) -> None:
    """Writes one frame whole (raw streams may take it in parts)."""
    view = memoryview(FRAME.pack(len(message)) + message)
    while view:
        view = view[stream.write(view) :]
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = stream.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame, or None at end of stream."""
    head = _read_exactly(stream, FRAME.size)
    if head is None:
        return None
    return _read_exactly(stream, FRAME.unpack(head)[0])


def _key(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise FieldError("a key of 1 to 200 characters")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError("a number")
    return float(value)


_EVALUATE = {"program": _key, "context": _key}
_PROGRAM = {
    "id": _key,
    "slots": integer(1, 1 << 15),
    "block": integer(1, 1 << 15),
    "zero_threshold": _number,
}
_CONTEXT = {"id": _key}


class _Worker:
    """The contexts and programs a worker keeps between requests (a few of each)."""

    def __init__(self):
        self.contexts: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.programs: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def handle(self, data: bytes) -> bytes:
        kind = message_kind(data)
        if kind == "worker-evaluate":
            header, blobs = unpack_message(data, kind, _EVALUATE)
            return pack_message("worker-result", {}, self.evaluate(header, blobs))
        if kind == "worker-program":
            header, blobs = unpack_message(data, kind, _PROGRAM, blobs=(1, 1))
            self.keep_program(header, blobs[0])
        else:
            header, blobs = unpack_message(data, "worker-context", _CONTEXT, blobs=(1, 1))
            self.keep_context(header["id"], blobs[0])
        return pack_message("worker-result", {}, [])

    def keep_context(self, key: str, data: bytes) -> None:
        from privkeras.backends.he.context import PublicContext

        context = PublicContext.from_bytes(data)
        self.contexts[key] = (context.parameters, context.ops())
        _trim(self.contexts)

    def keep_program(self, header: dict[str, Any], data: bytes) -> None:
        from privkeras.backends.he.program import HEGraph

        graph = HEGraph.from_bytes(data)
        self.programs[header["id"]] = graph.pack(
            header["slots"], header["block"], header["zero_threshold"]
        )
        _trim(self.programs)

    def evaluate(self, header: dict[str, Any], blobs: list[bytes]) -> list[bytes]:
        from privkeras.backends.he.context import load_ciphertexts

        parameters, ops = self.contexts[header["context"]]
        program = self.programs[header["program"]]
        self.contexts.move_to_end(header["context"])
        self.programs.move_to_end(header["program"])
        inputs = load_ciphertexts(blobs, "inputs", parameters)  # HEInputError if malformed
        return [seal_to_bytes(ct) for ct in program.apply(ops, inputs)]


def _trim(kept: collections.OrderedDict) -> None:
    while len(kept) > _KEPT:
        kept.popitem(last=False)


def main() -> None:
    """Serves requests from stdin until it closes."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the reply stream
    worker = _Worker()
    write_frame(replies, pack_message("worker-ready", {}, []))
    while (request := read_frame(requests)) is not None:
        try:
            reply = worker.handle(request)
        except Exception as error:  # answered to the pool, which raises it there
            header = {"type": type(error).__name__, "message": str(error)[:2000]}
            reply = pack_message("worker-error", header, [])
        write_frame(replies, reply)
