"""Fuzzing every parse of bytes from the other role: typed errors, never a crash or a late one.

Each message that crosses between client and server (input ciphertexts,
output ciphertexts, the public context, the packing spec, and the client's
own saved secret context) is mutated deterministically: truncations, bit
flips, missing and extra fields, wrong types, forged sizes and lengths, and
blobs dropped, duplicated or swapped. Each mutant is parsed and then used
as its receiver would (evaluate, decrypt, encrypt). The only acceptable
outcomes are success (a bit flip can leave a valid object: CKKS has no
integrity) or a typed error, `HEInputError` for malformed bytes or
`ContextMismatchError` for well-formed bytes meant for another key pair or
spec, whose message says what was expected. Mutants that are malformed by
construction must be refused: `HEInputError` at parse time, or
`ContextMismatchError` when the receiver compares them with its own keys and
spec (one ciphertext too many for the packing, say).
"""

import json
import struct

import keras
import numpy as np
import pytest

from privkeras.backends.he import (
    ContextMismatchError,
    EncryptedBatch,
    HEClient,
    HEInputError,
    HEServer,
    PackingSpec,
    PublicContext,
)

TYPED = (HEInputError, ContextMismatchError)
WRONG_VALUES = [None, "x", 3.5, True, [], {}, -3, 0, 2**70, [1, "a"]]


@pytest.fixture(scope="module")
def roles():
    """A depth-1 model on N=4096 packed with rotations, both roles, and one message of each kind."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    server = HEServer(model)
    spec = server.packing(block=4)
    assert spec.parameters.poly_modulus_degree == 4096 and spec.rotation_steps
    client = HEClient(spec.parameters)
    public = client.public_context(spec)
    x = np.random.default_rng(4).uniform(-1, 1, (3, 6))
    inputs = client.encrypt_to_bytes(x, spec)
    outputs = server.evaluate(EncryptedBatch.from_bytes(inputs, public), public).to_bytes()
    messages = {
        "inputs": inputs,
        "outputs": outputs,
        "public-context": public.to_bytes(),
        "packing-spec": spec.to_bytes(),
        "secret-context": client.to_bytes(include_secret_key=True),
    }
    return server, spec, client, public, x, messages


def _receive(kind, data, roles):
    """Parses `data` as its receiver does, then uses it."""
    server, spec, client, public, x, messages = roles
    if kind == "inputs":
        server.evaluate(EncryptedBatch.from_bytes(data, public), public)
    elif kind == "outputs":
        client.decrypt(EncryptedBatch.from_bytes(data, client), spec)
    elif kind == "public-context":
        context = PublicContext.from_bytes(data)
        server.evaluate(EncryptedBatch.from_bytes(messages["inputs"], public), context)
    elif kind == "packing-spec":
        received = PackingSpec.from_bytes(data)
        client.decrypt(client.encrypt(x[: received.block], received), received)
    else:
        restored = HEClient.from_bytes(data)
        restored.decrypt(EncryptedBatch.from_bytes(messages["outputs"], restored), spec)


# -- message surgery -----------------------------------------------------------------------
def _split(data):
    (length,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header, payload):
    encoded = json.dumps(header).encode()
    return b"PKHE" + struct.pack("<I", len(encoded)) + encoded + payload


def _blobs(header, payload):
    out, offset = [], 0
    for size in header["sizes"]:
        out.append(payload[offset : offset + size])
        offset += size
    return out


def _with_blobs(header, blobs):
    return _join({**header, "sizes": [len(b) for b in blobs]}, b"".join(blobs))


def _field_paths(header):
    """Top-level fields and one level into nested objects (parameters, layouts)."""
    paths = [(name,) for name in header]
    for name, value in header.items():
        if isinstance(value, dict):
            paths += [(name, inner) for inner in value]
    return paths


def _set(header, path, value=..., delete=False):
    mutated = json.loads(json.dumps(header))
    target = mutated
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return mutated


def _may_be_valid(kind, path, value):
    """Whether a value from `WRONG_VALUES` is still valid there (then it need not fail).

    Only three are: a public context whose Galois keys cover every step
    (null), a spec without rotations ([]), and a spec's empty blob list.
    """
    valid = {
        ("public-context", ("rotation_steps",)): [None],
        ("packing-spec", ("rotation_steps",)): [[]],
        ("packing-spec", ("sizes",)): [[]],
    }
    return any(type(value) is type(v) and value == v for v in valid.get((kind, path), []))


def _cases(kind, data, seed):
    """(name, mutant, must_fail) for one genuine message."""
    rng = np.random.default_rng(seed)
    header, payload = _split(data)
    header_end = len(data) - len(payload)
    blobs = _blobs(header, payload)
    cases = []
    # truncations: at the frame, inside the header, at every blob boundary, and random
    cuts = {0, 1, 4, 7, 8, header_end - 1, header_end // 2, len(data) - 1}
    boundary = header_end
    for blob in blobs:
        cuts |= {boundary + 1, boundary + len(blob) // 2, boundary + len(blob) - 1}
        boundary += len(blob)
    cuts |= set(rng.integers(1, len(data), 8).tolist())
    cases += [(f"truncated to {n}", data[:n], True) for n in sorted(cuts) if n < len(data)]
    cases.append(("extended by one byte", data + b"\0", True))
    # bit flips: in the header and in the blobs (some leave a valid object)
    positions = rng.integers(0, header_end, 20).tolist()
    if payload:
        positions += rng.integers(header_end, len(data), 12).tolist()
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(rng.integers(0, 8))
        cases.append((f"bit flip at {position}", bytes(flipped), False))
    # forged frame
    for length in (0, header_end - 9, header_end - 7, 2**32 - 1):
        cases.append(
            (f"header length {length}", data[:4] + struct.pack("<I", length) + data[8:], True)
        )
    cases.append(("bad magic", b"PKHF" + data[4:], True))
    # fields: missing, extra, wrong types, forged values
    for path in _field_paths(header):
        name = ".".join(path)
        cases.append((f"missing {name}", _join(_set(header, path, delete=True), payload), True))
        for value in WRONG_VALUES:
            must_fail = not _may_be_valid(kind, path, value)
            cases.append(
                (f"{name}={value!r}", _join(_set(header, path, value), payload), must_fail)
            )
    cases.append(("extra field", _join({**header, "extra": 1}, payload), True))
    for name, value in header.items():
        if isinstance(value, dict):
            extended = _set(header, (name, "extra"), 1)
            cases.append((f"extra field in {name}", _join(extended, payload), True))
    # forged blob sizes, and blobs dropped, duplicated or swapped
    sizes = header["sizes"]
    if sizes:
        cases.append(
            ("sizes[0] + 1", _join({**header, "sizes": [sizes[0] + 1, *sizes[1:]]}, payload), True)
        )
        cases.append(
            (
                "sizes[-1] - 1",
                _join({**header, "sizes": [*sizes[:-1], sizes[-1] - 1]}, payload),
                True,
            )
        )
        cases.append(("sizes + [0]", _join({**header, "sizes": [*sizes, 0]}, payload), True))
        cases.append(("sizes[0] = -1", _join({**header, "sizes": [-1, *sizes[1:]]}, payload), True))
        cases.append(("blob emptied", _with_blobs(header, [b"", *blobs[1:]]), True))
        cases.append(("blob cut short", _with_blobs(header, [blobs[0][:-5], *blobs[1:]]), True))
        cases.append(
            (
                "SEAL header forged",
                _with_blobs(header, [blobs[0][:8] + b"\xff" * 8 + blobs[0][16:], *blobs[1:]]),
                True,
            )
        )
        cases.append(("blob duplicated", _with_blobs(header, [*blobs, blobs[-1]]), True))
        if len(blobs) > 1:
            cases.append(("last blob dropped", _with_blobs(header, blobs[:-1]), True))
            swapped = [blobs[1], blobs[0], *blobs[2:]]  # two ciphertexts swapped stay valid
            cases.append(("blobs swapped", _with_blobs(header, swapped), kind.endswith("context")))
    return cases


_SPEC_FORGERIES = [
    (("input_layout", "block"), 3),
    (("input_layout", "tile"), 0),
    (("input_layout", "slots"), 4096),
    (("output_layout", "positions"), [0, 0, 1, 2, 3]),
    (("input_layout", "positions"), [-1] * 8),
    (("output_shape",), [0]),
    (("output_shape",), [6]),
    (("input_gather",), [0, 1, 2, 3, 4, 99]),
    (("rotation_steps",), [0]),
    (("rotation_steps",), [5000]),
]


@pytest.mark.filterwarnings("ignore:Decrypted outputs reach")  # bit flips in valid ciphertexts
@pytest.mark.parametrize(
    "kind", ["inputs", "outputs", "public-context", "packing-spec", "secret-context"]
)
def test_every_mutant_is_refused_with_a_typed_error_or_parses_cleanly(kind, roles):
    genuine = roles[-1][kind]
    _receive(kind, genuine, roles)  # the genuine message works
    cases = _cases(kind, genuine, seed=sum(map(ord, kind)))
    if kind == "packing-spec":
        header, payload = _split(genuine)
        cases += [
            (f"{'.'.join(p)}={v!r}", _join(_set(header, p, v), payload), True)
            for p, v in _SPEC_FORGERIES
        ]
    cases += [
        ("not bytes", "PKHE", True),
        ("None", None, True),
        ("another kind", roles[-1]["packing-spec" if kind != "packing-spec" else "inputs"], True),
    ]
    assert len(cases) > 100
    print(f"{kind}: {len(cases)} mutants")
    escaped, accepted = [], []
    for name, data, must_fail in cases:
        try:
            _receive(kind, data, roles)
        except TYPED as error:
            if not str(error).startswith("Expected"):
                escaped.append(f"{name}: message does not say what was expected: {error}")
        except Exception as error:  # any other type is the defect under test
            escaped.append(f"{name}: {type(error).__name__}: {str(error)[:100]}")
        else:
            if must_fail:
                accepted.append(name)
    assert not escaped, f"{len(escaped)} of {len(cases)} untyped errors:\n" + "\n".join(escaped)
    assert not accepted, f"malformed {kind} messages accepted: {accepted}"


def test_a_forged_sample_count_is_refused_at_parse_time(roles):
    server, spec, _, public, _, messages = roles
    header, payload = _split(messages["inputs"])
    for n_samples in (-3, 0, 4097, "3", 2.0):
        with pytest.raises(HEInputError, match="n_samples"):
            EncryptedBatch.from_bytes(_join({**header, "n_samples": n_samples}, payload), public)
    over_block = EncryptedBatch.from_bytes(
        _join({**header, "n_samples": spec.block + 1}, payload), public
    )
    with pytest.raises(HEInputError, match=f"1 to {spec.block} samples"):
        server.evaluate(over_block, public)


def test_galois_keys_that_miss_a_listed_step_are_refused(roles):
    messages = roles[-1]
    header, payload = _split(messages["public-context"])
    forged = {**header, "rotation_steps": [*header["rotation_steps"], 7]}
    with pytest.raises(HEInputError, match=r"without steps \[7\]"):
        PublicContext.from_bytes(_join(forged, payload))
