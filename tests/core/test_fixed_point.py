"""FixedPointCodec: round trips within half a resolution step on every library,
typed errors instead of silent wrap-around, and no mutation of the caller's data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privkeras.core.fixed_point import FixedPointCodec
from privkeras.errors import PrecisionOverflowError

SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
LIBRARIES = {
    "numpy": (lambda a: np.array(a), lambda t: np.asarray(t), np.ndarray),
    "torch": (lambda a: torch.from_numpy(np.array(a)), lambda t: t.numpy(), torch.Tensor),
    "tensorflow": (lambda a: tf.constant(a), lambda t: t.numpy(), tf.Tensor),
}


def codec_and_values():
    return st.integers(1, 40).flatmap(
        lambda f: st.tuples(
            st.just(FixedPointCodec(precision_bits=f)),
            hnp.arrays(
                np.float64,
                hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
                # just inside the range, and small values where the resolution shows
                elements=st.one_of(
                    st.floats(-(2.0 ** (62 - f)), 2.0 ** (62 - f)),
                    st.floats(-4.0, 4.0),
                    st.sampled_from([0.0, -0.0, 2.0**-f, -(2.0 ** (-f - 1)), 2.0 ** (-f - 2)]),
                ),
            ),
        )
    )


@SETTINGS
@given(codec_and_values(), st.sampled_from(sorted(LIBRARIES)))
def test_round_trip_is_within_half_a_step_in_every_library(case, library):
    codec, values = case
    make, to_numpy, tensor_type = LIBRARIES[library]
    x = make(values)
    original = to_numpy(x).copy()
    ring = codec.encode(x)
    back = codec.decode(ring)
    assert isinstance(ring, tensor_type) and isinstance(back, tensor_type)
    assert to_numpy(ring).dtype == np.int64 and to_numpy(back).dtype == np.float64
    assert tuple(ring.shape) == tuple(values.shape) == tuple(back.shape)
    error = np.abs(to_numpy(back) - values)
    assert np.all(error <= 2.0 ** -(codec.precision_bits + 1))
    np.testing.assert_array_equal(to_numpy(x), original)  # the input is untouched


@SETTINGS
@given(codec_and_values())
def test_encoding_is_round_to_nearest_and_identical_across_libraries(case):
    codec, values = case
    expected = np.rint(values * 2.0**codec.precision_bits).astype(np.int64)
    for library, (make, to_numpy, _) in LIBRARIES.items():
        np.testing.assert_array_equal(
            to_numpy(codec.encode(make(values))), expected, err_msg=library
        )


def test_known_encodings_and_python_numbers():
    codec = FixedPointCodec(precision_bits=16)
    np.testing.assert_array_equal(codec.encode(np.array([1.5, -2.25])), [98304, -147456])
    assert codec.encode(3).dtype == np.int64 and int(codec.encode(3)) == 3 * 2**16
    np.testing.assert_array_equal(codec.encode([0.5, -1]), [2**15, -(2**16)])
    assert float(codec.decode(np.int64(-(2**63)))) == -(2.0**47)
    np.testing.assert_array_equal(codec.encode(np.array([True, False])), [2**16, 0])


@pytest.mark.parametrize("library", sorted(LIBRARIES))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(library, bad):
    make = LIBRARIES[library][0]
    with pytest.raises(
        PrecisionOverflowError, match=r"Expected finite values in weights\. Received: a value of"
    ):
        FixedPointCodec().encode(make(np.array([1.0, bad])), name="weights")


@pytest.mark.parametrize("library", sorted(LIBRARIES))
@pytest.mark.parametrize("precision_bits", [1, 16, 40])
def test_out_of_range_values_raise_instead_of_wrapping(library, precision_bits):
    make = LIBRARIES[library][0]
    codec = FixedPointCodec(precision_bits=precision_bits)
    limit = 2.0 ** (63 - precision_bits)
    assert codec.max_abs == limit
    for bad in (limit, -limit, 3 * limit, -1e300):
        with pytest.raises(
            PrecisionOverflowError, match=rf"Expected \|x\| < 2\^{63 - precision_bits}"
        ):
            codec.encode(make(np.array([0.0, bad])))
    largest = np.nextafter(limit, 0) - 1.0  # rounds to an int64 that fits
    ring = codec.encode(make(np.array([largest, -largest])))
    back = LIBRARIES[library][1](codec.decode(ring))
    np.testing.assert_array_equal(back, [largest, -largest])


def test_float32_inputs_are_encoded_exactly():
    codec = FixedPointCodec(precision_bits=20)
    x32 = np.array([0.1, -3.7, 1e5], dtype=np.float32)
    expected = np.rint(x32.astype(np.float64) * 2**20).astype(np.int64)
    np.testing.assert_array_equal(codec.encode(x32), expected)
    np.testing.assert_array_equal(codec.encode(torch.from_numpy(x32)).numpy(), expected)
    np.testing.assert_array_equal(codec.encode(tf.constant(x32)).numpy(), expected)


def test_encode_and_decode_never_mutate_their_input():
    codec = FixedPointCodec(precision_bits=8)
    x = np.array([[0.5, -1.25], [3.0, 7.75]])
    x_copy = x.copy()
    ring = codec.encode(x)
    ring_copy = ring.copy()
    codec.decode(ring)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(ring, ring_copy)
    ring[0, 0] = 0  # the output does not alias the input either
    np.testing.assert_array_equal(x, x_copy)
    t = torch.from_numpy(x.copy())
    codec.encode(t)[0, 0] = 123
    np.testing.assert_array_equal(t.numpy(), x_copy)


def test_decode_rejects_floats_and_encode_rejects_non_numbers():
    codec = FixedPointCodec()
    with pytest.raises(TypeError, match="Expected an integer array of ring elements"):
        codec.decode(np.array([1.5]))
    with pytest.raises(TypeError, match="Expected real numbers to encode"):
        codec.encode(np.array(["a"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ring_bits": 32}, r"Expected ring_bits in \[64\]\. Received: ring_bits=32"),
        (
            {"precision_bits": 0},
            r"Expected precision_bits in \[1, 40\]\. Received: precision_bits=0",
        ),
        (
            {"precision_bits": 41},
            r"Expected precision_bits in \[1, 40\]\. Received: precision_bits=41",
        ),
        ({"precision_bits": 16.0}, r"Received: precision_bits=16\.0"),
        ({"precision_bits": True}, r"Received: precision_bits=True"),
    ],
)
def test_bad_configuration_raises_keras_style_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FixedPointCodec(**kwargs)


def test_codecs_compare_by_configuration():
    assert FixedPointCodec(precision_bits=12) == FixedPointCodec(64, 12)
    assert FixedPointCodec(precision_bits=12) != FixedPointCodec(precision_bits=13)
    assert len({FixedPointCodec(), FixedPointCodec()}) == 1
    assert repr(FixedPointCodec()) == "FixedPointCodec(ring_bits=64, precision_bits=16)"
