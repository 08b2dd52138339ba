"""Ring kernels: numpy, torch and tensorflow agree bit for bit, and numpy equals
an exact Python-int oracle reduced mod 2^64.

Every case is computed on all three libraries from the same int64 inputs;
the oracle works on Python ints (object arrays) and wraps at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels, kernels_for, library_of

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EDGE_VALUES = [
    INT64_MIN,
    INT64_MIN + 1,
    INT64_MAX,
    INT64_MAX - 1,
    -1,
    0,
    1,
    2,
    2**62,
    -(2**62),
    2**62 - 1,
    2**32,
    2**32 - 1,
    -(2**32),
    2**31,
    2**53 + 1,
]
RING_VALUES = st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from(EDGE_VALUES))
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def wrap(values) -> np.ndarray:
    """Python ints (object array or scalar) -> int64 representatives mod 2^64."""
    values = np.asarray(values, dtype=object)
    flat = [((int(v) + 2**63) % 2**64) - 2**63 for v in values.ravel()]
    return np.array(flat, dtype=np.int64).reshape(values.shape)


def as_ints(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).astype(object)


def ring_arrays(shape_strategy):
    return shape_strategy.flatmap(lambda shape: hnp.arrays(np.int64, shape, elements=RING_VALUES))


def on_every_library(op, *arrays, **kwargs) -> dict[str, np.ndarray]:
    """Runs `op(kernels, *tensors)` on each library; checks no input changed."""
    originals = [a.copy() for a in arrays]
    results = {}
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name, **kwargs)
        tensors = [k.from_numpy(a) for a in arrays]
        results[name] = k.to_numpy(op(k, *tensors))
        for tensor, original in zip(tensors, originals):
            np.testing.assert_array_equal(k.to_numpy(tensor), original)
    for array, original in zip(arrays, originals):
        np.testing.assert_array_equal(array, original)
    return results


def assert_all_equal(results: dict[str, np.ndarray], expected: np.ndarray) -> None:
    for name, value in results.items():
        assert value.dtype == np.int64, name
        assert value.shape == expected.shape, (name, value.shape, expected.shape)
        np.testing.assert_array_equal(value, expected, err_msg=f"library {name}")


pairs_same_shape = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5).flatmap(
    lambda shape: st.tuples(
        hnp.arrays(np.int64, shape, elements=RING_VALUES),
        hnp.arrays(np.int64, shape, elements=RING_VALUES),
    )
)


@SETTINGS
@given(pairs_same_shape)
def test_elementwise_arithmetic_matches_python_ints(pair):
    a, b = pair
    x, y = as_ints(a), as_ints(b)
    assert_all_equal(on_every_library(lambda k, p, q: k.add(p, q), a, b), wrap(x + y))
    assert_all_equal(on_every_library(lambda k, p, q: k.sub(p, q), a, b), wrap(x - y))
    assert_all_equal(on_every_library(lambda k, p, q: k.mul(p, q), a, b), wrap(x * y))
    assert_all_equal(on_every_library(lambda k, p: k.neg(p), a), wrap(-x))


@SETTINGS
@given(pairs_same_shape)
def test_bitwise_ops_match_python_ints(pair):
    a, b = pair
    x, y = as_ints(a), as_ints(b)
    assert_all_equal(on_every_library(lambda k, p, q: k.bitwise_and(p, q), a, b), wrap(x & y))
    assert_all_equal(on_every_library(lambda k, p, q: k.bitwise_or(p, q), a, b), wrap(x | y))
    assert_all_equal(on_every_library(lambda k, p, q: k.bitwise_xor(p, q), a, b), wrap(x ^ y))
    assert_all_equal(on_every_library(lambda k, p: k.bitwise_not(p), a), wrap(~x))


@SETTINGS
@given(ring_arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)), st.integers(0, 70))
def test_shifts_match_python_ints(a, bits):
    x = as_ints(a)
    unsigned = x % 2**64
    assert_all_equal(on_every_library(lambda k, p: k.shift_left(p, bits), a), wrap(x << bits))
    assert_all_equal(
        on_every_library(lambda k, p: k.shift_right_arithmetic(p, bits), a), wrap(x >> bits)
    )
    assert_all_equal(
        on_every_library(lambda k, p: k.shift_right_logical(p, bits), a), wrap(unsigned >> bits)
    )


@SETTINGS
@given(ring_arrays(hnp.array_shapes(min_dims=1, max_dims=2, max_side=6)), st.integers(0, 63))
def test_bit_extraction_matches_python_ints(a, index):
    expected = wrap((as_ints(a) >> index) & 1)
    assert_all_equal(on_every_library(lambda k, p: k.bit(p, index), a), expected)


def test_bit_extraction_of_every_bit_rebuilds_the_value():
    a = np.array(EDGE_VALUES, dtype=np.int64)
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name)
        t = k.from_numpy(a)
        rebuilt = sum(int(2**i) * k.to_numpy(k.bit(t, i)).astype(object) for i in range(64))
        np.testing.assert_array_equal(wrap(rebuilt), a, err_msg=name)


@SETTINGS
@given(
    ring_arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)),
    st.data(),
    st.booleans(),
)
def test_sum_matches_python_ints(a, data, keepdims):
    axis = data.draw(st.one_of(st.none(), st.integers(0, a.ndim - 1)))
    x = as_ints(a)
    expected = wrap(np.sum(x, axis=axis, keepdims=keepdims))
    results = on_every_library(lambda k, p: k.sum(p, axis=axis, keepdims=keepdims), a)
    assert_all_equal(results, expected)


def test_sum_over_several_axes_wraps():
    a = np.full((3, 4, 2), INT64_MAX, dtype=np.int64)
    expected = wrap(np.sum(as_ints(a), axis=(0, 2)))
    assert_all_equal(on_every_library(lambda k, p: k.sum(p, axis=(0, 2)), a), expected)


BATCH_SHAPES = [((), ()), ((2,), ()), ((), (2,)), ((2,), (2,)), ((3, 1), (2,))]
matmul_operands = st.tuples(
    st.integers(1, 6), st.integers(1, 9), st.integers(1, 6), st.sampled_from(BATCH_SHAPES)
).flatmap(
    lambda d: st.tuples(
        hnp.arrays(np.int64, (*d[3][0], d[0], d[1]), elements=RING_VALUES),
        hnp.arrays(np.int64, (*d[3][1], d[1], d[2]), elements=RING_VALUES),
    )
)


@SETTINGS
@given(matmul_operands, st.sampled_from(["auto", "native", "limbs"]))
def test_matmul_matches_python_ints(operands, method):
    a, b = operands
    expected = wrap(np.matmul(as_ints(a), as_ints(b)))
    results = on_every_library(lambda k, p, q: k.matmul(p, q), a, b, matmul_method=method)
    assert_all_equal(results, expected)


def test_matmul_extreme_operands_wrap():
    a = np.full((3, 40), INT64_MIN, dtype=np.int64)
    a[1] = INT64_MAX
    b = np.full((40, 2), INT64_MAX, dtype=np.int64)
    b[:, 1] = -1
    expected = wrap(np.matmul(as_ints(a), as_ints(b)))
    for method in ("native", "limbs"):
        results = on_every_library(lambda k, p, q: k.matmul(p, q), a, b, matmul_method=method)
        assert_all_equal(results, expected)


def test_matmul_rejects_mismatched_shapes():
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name)
        with pytest.raises(ValueError, match=r"Expected operands of shapes \(\.\.\., m, k\)"):
            k.matmul(k.zeros((2, 3)), k.zeros((4, 2)))
        with pytest.raises(ValueError, match="Expected operands"):
            k.matmul(k.zeros((3,)), k.zeros((3, 2)))


def conv2d_oracle(x, kernel, strides, padding) -> np.ndarray:
    """Direct NHWC/HWIO convolution on Python ints, padding as tf.nn.conv2d documents."""
    n, h, w, _ = x.shape
    kh, kw, _, c_out = kernel.shape
    sh, sw = strides
    if padding == "SAME":
        oh, ow = -(-h // sh), -(-w // sw)
        top = max((oh - 1) * sh + kh - h, 0) // 2
        left = max((ow - 1) * sw + kw - w, 0) // 2
    else:
        oh, ow, top, left = (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0
    xs, ks = as_ints(x), as_ints(kernel)
    out = np.zeros((n, oh, ow, c_out), dtype=object)
    for i in range(oh):
        for j in range(ow):
            for di in range(kh):
                for dj in range(kw):
                    r, s = i * sh + di - top, j * sw + dj - left
                    if 0 <= r < h and 0 <= s < w:
                        out[:, i, j, :] += xs[:, r, s, :] @ ks[di, dj]
    return wrap(out)


conv_cases = st.tuples(
    st.integers(1, 2),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.tuples(st.integers(1, 3), st.integers(1, 3)),
    st.sampled_from(["SAME", "VALID"]),
).filter(lambda d: d[8] == "SAME" or (d[4] <= d[1] and d[5] <= d[2]))


@SETTINGS
@given(conv_cases, st.data())
def test_conv2d_matches_python_ints(case, data):
    n, h, w, c, kh, kw, c_out, strides, padding = case
    x = data.draw(hnp.arrays(np.int64, (n, h, w, c), elements=RING_VALUES))
    kernel = data.draw(hnp.arrays(np.int64, (kh, kw, c, c_out), elements=RING_VALUES))
    expected = conv2d_oracle(x, kernel, strides, padding)
    results = on_every_library(lambda k, p, q: k.conv2d(p, q, strides, padding), x, kernel)
    assert_all_equal(results, expected)


@pytest.mark.parametrize("padding", ["SAME", "VALID", "same"])
@pytest.mark.parametrize("strides", [1, (2, 1), (3, 3)])
def test_conv2d_agrees_with_tf_nn_conv2d_on_small_values(padding, strides):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, (2, 7, 6, 3), dtype=np.int64)
    kernel = rng.integers(-1000, 1000, (3, 2, 3, 4), dtype=np.int64)
    reference = tf.nn.conv2d(
        tf.constant(x, tf.float64), tf.constant(kernel, tf.float64), strides, padding.upper()
    ).numpy()
    results = on_every_library(lambda k, p, q: k.conv2d(p, q, strides, padding), x, kernel)
    assert_all_equal(results, reference.astype(np.int64))


def test_conv2d_rejects_bad_arguments():
    k = get_kernels("numpy")
    x, kernel = k.zeros((1, 4, 4, 2)), k.zeros((2, 2, 3, 1))
    with pytest.raises(ValueError, match="matching channels"):
        k.conv2d(x, kernel)
    with pytest.raises(ValueError, match="Expected strides"):
        k.conv2d(x, k.zeros((2, 2, 2, 1)), strides=0)
    with pytest.raises(ValueError, match="Expected padding 'SAME' or 'VALID'"):
        k.conv2d(x, k.zeros((2, 2, 2, 1)), padding="FULL")
    with pytest.raises(ValueError, match="at least the kernel size"):
        k.conv2d(k.zeros((1, 1, 1, 2)), k.zeros((2, 2, 2, 1)))


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_constant_zeros_and_conversion_round_trip(name):
    k = get_kernels(name)
    assert k.to_numpy(k.constant(2**64 + 5, (2,))).tolist() == [5, 5]
    assert k.to_numpy(k.constant(-1)).tolist() == -1
    assert k.to_numpy(k.constant(2**63)).tolist() == INT64_MIN
    assert k.to_numpy(k.zeros((2, 3))).tolist() == [[0] * 3] * 2
    unsigned = np.array([2**64 - 1, 2**63], dtype=np.uint64)
    assert k.to_numpy(k.from_numpy(unsigned)).tolist() == [-1, INT64_MIN]
    assert library_of(k.from_numpy(np.zeros(2, np.int64))) == name
    assert kernels_for(k.from_numpy(np.zeros(2, np.int64))) is k


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_from_numpy_rejects_floats_and_copies(name):
    k = get_kernels(name)
    with pytest.raises(TypeError, match="Expected an integer array of ring elements"):
        k.from_numpy(np.array([1.5]))
    source = np.array([1, 2, 3], dtype=np.int64)
    tensor = k.from_numpy(source)
    source[0] = 99
    assert k.to_numpy(tensor).tolist() == [1, 2, 3]
    out = k.to_numpy(tensor)
    out[1] = 77
    assert k.to_numpy(tensor).tolist() == [1, 2, 3]


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_shift_and_bit_arguments_are_validated(name):
    k = get_kernels(name)
    a = k.from_numpy(np.array([1, -1], dtype=np.int64))
    for op in (k.shift_left, k.shift_right_arithmetic, k.shift_right_logical):
        with pytest.raises(ValueError, match=r"Expected a shift of bits >= 0"):
            op(a, -1)
        with pytest.raises(ValueError, match=r"Expected a shift of bits >= 0"):
            op(a, 1.5)
    with pytest.raises(ValueError, match=r"Expected a bit index in \[0, 63\]"):
        k.bit(a, 64)


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_shape_operations_agree(name):
    k = get_kernels(name)
    a = np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 12
    t = k.from_numpy(a)
    np.testing.assert_array_equal(k.to_numpy(k.reshape(t, (4, 6))), a.reshape(4, 6))
    np.testing.assert_array_equal(k.to_numpy(k.transpose(t)), a.T)
    np.testing.assert_array_equal(k.to_numpy(k.transpose(t, (1, 0, 2))), a.transpose(1, 0, 2))
    np.testing.assert_array_equal(k.to_numpy(k.concat([t, t], axis=1)), np.concatenate([a, a], 1))
    np.testing.assert_array_equal(k.to_numpy(k.stack([t, t], axis=0)), np.stack([a, a]))
    np.testing.assert_array_equal(
        k.to_numpy(k.pad(t, [(0, 0), (1, 2), (0, 1)])), np.pad(a, [(0, 0), (1, 2), (0, 1)])
    )
    np.testing.assert_array_equal(
        k.to_numpy(k.broadcast_to(t[:1], (3, 3, 4))), np.broadcast_to(a[:1], (3, 3, 4))
    )
    np.testing.assert_array_equal(k.to_numpy(k.getitem(t, (slice(None), 1))), a[:, 1])
    assert k.shape(t) == (2, 3, 4)
    assert k.is_tensor(t)


def test_get_kernels_rejects_unknown_library_and_method():
    with pytest.raises(
        ValueError, match=r"Expected a kernel library in \['numpy', 'torch', 'tensorflow'\]"
    ):
        get_kernels("jax")
    with pytest.raises(
        ValueError, match=r"Expected matmul_method in \['auto', 'native', 'limbs'\]"
    ):
        get_kernels("numpy", matmul_method="fast")
    assert get_kernels("numpy") is get_kernels("numpy")


@pytest.mark.parametrize(
    "key",
    [
        (0,),
        (slice(None), 1),
        (Ellipsis, slice(1, 3)),
        (Ellipsis, slice(0, 2), slice(None)),
        (1, Ellipsis, 2),
        (slice(0, None, 2),),
        1,
        (slice(5, 9),),
        (Ellipsis,),
        (-1,),
    ],
)
def test_getitem_agrees_on_every_library(key):
    a = np.arange(2 * 3 * 4 * 5, dtype=np.int64).reshape(2, 3, 4, 5) - 60
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name)
        np.testing.assert_array_equal(k.to_numpy(k.getitem(k.from_numpy(a), key)), a[key])


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1), (3, 3)])
def test_extract_patches_agree_on_every_library(padding, strides):
    x = np.random.default_rng(1).integers(INT64_MIN, INT64_MAX, (2, 7, 6, 3), dtype=np.int64)
    results = on_every_library(lambda k, p: k.extract_patches(p, (3, 2), strides, padding), x)
    assert_all_equal(results, get_kernels("numpy").extract_patches(x, (3, 2), strides, padding))
