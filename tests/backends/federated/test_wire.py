"""The federated message format: round trip, and every malformed input refused."""

import contextlib

import numpy as np
import pytest

from privkeras.backends.federated import wire
from privkeras.backends.federated.errors import WireFormatError


def test_round_trip_of_fields_and_arrays():
    arrays = {
        "weights": np.arange(7, dtype=np.float32),
        "ids": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "empty": np.zeros((0, 3), np.float64),
    }
    data = wire.encode({"round": 3, "name": "alice", "nested": {"a": [1, 2]}}, arrays)
    fields, decoded = wire.decode(data)
    assert fields == {"round": 3, "name": "alice", "nested": {"a": [1, 2]}}
    for name, array in arrays.items():
        assert decoded[name].dtype == array.dtype
        np.testing.assert_array_equal(decoded[name], array)


def test_float32_weights_cost_their_size_plus_a_small_header():
    weights = np.zeros(2410, np.float32)
    data = wire.encode({"job_id": "0123456789abcdef", "round": 9}, {"weights": weights})
    assert weights.nbytes < len(data) < weights.nbytes + 150


def test_other_dtypes_are_refused_rather_than_pickled():
    with pytest.raises(WireFormatError, match="dtype"):
        wire.encode({}, {"x": np.array(["a"], dtype=object)})
    with pytest.raises(WireFormatError, match="reserved"):
        wire.encode({"arrays": 1})


def _valid():
    return wire.encode({"a": 1}, {"w": np.ones(4, np.float32)})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PKFM",
        b"XXXX" + _valid()[4:],
        _valid()[:-1],
        _valid() + b"\0",
        _valid()[:9] + b"{not json" + _valid()[18:],
        wire._PREFIX.pack(b"PKFM", 1, 2) + b"[]",
        wire._PREFIX.pack(b"PKFM", 1, 2) + b"{}",
        wire._PREFIX.pack(b"PKFM", 2, 13) + b'{"arrays":[]}',
    ],
)
def test_malformed_bytes_raise_wire_format_error(data):
    with pytest.raises(WireFormatError):
        wire.decode(data)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "w", "dtype": "object", "shape": [1]},
        {"name": "w", "dtype": "float32", "shape": [-1]},
        {"name": "w", "dtype": "float32", "shape": [True]},
        {"name": 3, "dtype": "float32", "shape": [1]},
        {"dtype": "float32", "shape": [1]},
        "w",
    ],
)
def test_bad_array_specs_are_refused(spec):
    import json

    header = json.dumps({"arrays": [spec]}).encode()
    data = wire._PREFIX.pack(b"PKFM", 1, len(header)) + header + b"\0" * 4
    with pytest.raises(WireFormatError):
        wire.decode(data)


def test_random_corruptions_never_raise_anything_else():
    rng = np.random.default_rng(0)
    data = bytearray(_valid())
    for _ in range(300):
        corrupted = bytearray(data)
        for index in rng.integers(0, len(data), size=3):
            corrupted[index] = rng.integers(0, 256)
        with contextlib.suppress(WireFormatError):
            wire.decode(bytes(corrupted))
