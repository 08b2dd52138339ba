"""SharedTensor API against numpy / TensorFlow on the decoded inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import privkeras as pk
from privkeras.backends.mpc.runtime import MPCRuntime
from privkeras.backends.mpc.tensor import SharedBit, SharedTensor

pytestmark = pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer")

F = 16
ULP = 2.0**-F


def _quantized(x):
    return np.rint(np.asarray(x) * 2**F) / 2**F


@pytest.fixture(params=["pond", "aby3"])
def rt(request):
    return MPCRuntime(request.param, kernels="numpy", seed=11)


def test_linear_operations_and_shapes(rt):
    rng = np.random.default_rng(0)
    a, b = _quantized(rng.normal(size=(2, 3, 4))), _quantized(rng.normal(size=(2, 3, 4)))
    x, y = rt.share(a), rt.share(b)
    exact = {
        "add": ((x + y), a + b),
        "sub_public": (x - 1.5, a - 1.5),
        "rsub": (2.0 - x, 2.0 - a),
        "neg": (-x, -a),
        "radd_array": (b + x, a + b),
        "sum": (x.sum(), a.sum()),
        "sum_axes": (x.sum(axis=(0, 2), keepdims=True), a.sum(axis=(0, 2), keepdims=True)),
        "reshape": (x.reshape(6, -1), a.reshape(6, -1)),
        "transpose": (x.transpose((2, 0, 1)), a.transpose((2, 0, 1))),
        "T": (x[0].T, a[0].T),
        "slice": (x[1, ::2, 1:3], a[1, ::2, 1:3]),
        "expand_dims": (x.expand_dims(1), a[:, None]),
        "broadcast": (x[:, :1].broadcast_to((2, 5, 4)), np.broadcast_to(a[:, :1], (2, 5, 4))),
        "concat": (SharedTensor.concat([x, y], axis=1), np.concatenate([a, b], axis=1)),
        "stack": (SharedTensor.stack([x, y], axis=-1), np.stack([a, b], axis=-1)),
        "pad": (x.pad([(0, 0), (1, 0), (0, 2)]), np.pad(a, [(0, 0), (1, 0), (0, 2)])),
        "int_mul": (x * 3, 3 * a),
        "map_linear": (x.map_linear(lambda k, s: k.sub(k.shift_left(s, 1), s)), a),
    }
    for name, (shared, expected) in exact.items():
        np.testing.assert_array_equal(shared.reveal(), expected, err_msg=name)
    assert x.shape == (2, 3, 4) and x.ndim == 3 and len(x) == 2 and x.size == 24
    assert "SharedTensor(shape=(2, 3, 4)" in repr(x)
    assert np.max(np.abs(x.mean(axis=1).reveal() - a.mean(axis=1))) <= 2 * ULP
    assert np.max(np.abs(x.div_public(3.0).reveal() - a / 3.0)) <= 2 * ULP
    assert np.max(np.abs((x / 4.0).reveal() - a / 4.0)) <= 2 * ULP
    with pytest.raises(ZeroDivisionError):
        x.div_public(0.0)
    with pytest.raises(ValueError, match="24 elements"):
        x.reshape(5, 5)


@settings(max_examples=15, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
)
def test_reshape_transpose_slice_commute_with_sharing(shape, data):
    rt = MPCRuntime("aby3", kernels="numpy", seed=0)
    a = _quantized(np.arange(np.prod(shape)).reshape(shape) * 0.37 - 1)
    x = rt.share(a)
    perm = data.draw(st.permutations(range(len(shape))))
    np.testing.assert_array_equal(x.transpose(perm).reveal(), a.transpose(perm))
    stop = data.draw(st.integers(1, shape[0]))
    np.testing.assert_array_equal(x[:stop].reveal(), a[:stop])
    np.testing.assert_array_equal(x.reshape(-1).reveal(), a.reshape(-1))


def test_where_max_argmax(rt):
    rng = np.random.default_rng(1)
    a = _quantized(rng.normal(size=(3, 7)) * 10)
    a[0, 2] = a[0, 5]  # a tie: the first index wins, as in numpy
    x = rt.share(a)
    np.testing.assert_array_equal(x.max(axis=1).reveal(), a.max(axis=1))
    np.testing.assert_array_equal(
        x.max(axis=0, keepdims=True).reveal(), a.max(axis=0, keepdims=True)
    )
    np.testing.assert_array_equal(x.argmax(axis=1).reveal(), np.eye(7)[a.argmax(axis=1)])
    np.testing.assert_array_equal(x.argmax(axis=0).reveal(), np.eye(3)[a.argmax(axis=0)].T)
    values, onehot = x.max_with_argmax(axis=-1)
    np.testing.assert_array_equal(values.reveal(), a.max(axis=-1))
    np.testing.assert_array_equal(onehot.reveal(), np.eye(7)[a.argmax(axis=-1)])
    condition = x > 0
    chosen = x.where(condition, -1.0)
    np.testing.assert_array_equal(chosen.reveal(), np.where(a > 0, a, -1.0))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_pooling_matches_tensorflow(rt, padding):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    images = _quantized(rng.normal(size=(2, 5, 6, 3)) - 2.0)  # mostly negative: padding matters
    x = rt.share(images)
    for pool, strides in [((2, 2), None), ((3, 3), (2, 2))]:
        s = strides or pool
        expected = tf.nn.max_pool2d(images, pool, s, padding).numpy()
        np.testing.assert_array_equal(x.max_pool2d(pool, strides, padding).reveal(), expected)
        out, mask = x.max_pool2d_with_mask(pool, strides, padding)
        np.testing.assert_array_equal(out.reveal(), expected)
        mask = mask.reveal()
        assert mask.shape == (*expected.shape[:3], pool[0] * pool[1], 3)
        np.testing.assert_array_equal(mask.sum(axis=3), np.ones_like(expected))
        windows = x.extract_patches(pool, s, padding).reveal()
        if padding == "VALID":  # the mask selects each window's maximum
            np.testing.assert_array_equal((windows * mask).sum(axis=3), expected)
        # Dividing a window sum S by a public count multiplies by 1/count encoded with
        # error <= 2^-(f+1): error <= |S| 2^-(f+1) + 1 ulp.
        average = tf.nn.avg_pool2d(images, pool, s, padding).numpy()
        bound = ULP * (1 + np.abs(windows).sum(axis=3).max() / 2)
        assert np.max(np.abs(x.avg_pool2d(pool, strides, padding).reveal() - average)) <= bound


def test_public_operands_and_matmul_orientation(rt):
    a = _quantized(np.arange(6.0).reshape(2, 3) / 7)
    w = _quantized(np.linspace(-1, 1, 12).reshape(3, 4))
    x = rt.share(a)
    assert np.max(np.abs((x @ w).reveal() - a @ w)) <= 2 * ULP
    assert np.max(np.abs((w.T @ x.T).reveal() - w.T @ a.T)) <= 2 * ULP
    assert np.max(np.abs((x * w[:, :2].T).reveal() - a * w[:, :2].T)) <= 2 * ULP
    assert np.max(np.abs(rt.share_public(w).reveal() - w)) == 0
    assert rt.communicator.snapshot().rounds > 0


def test_mismatched_operands_are_refused_before_any_communication(rt):
    x, y, z = rt.share(np.ones((2, 3))), rt.share(np.ones((2, 3))), rt.share(np.ones((3, 2)))
    images = rt.share(np.ones((1, 4, 4, 3)))
    before = rt.communicator.snapshot()
    with pytest.raises(ValueError, match="inner dimensions"):
        x @ y
    with pytest.raises(ValueError, match="inner dimensions"):
        x @ np.ones((4, 1))
    with pytest.raises(ValueError, match="broadcast"):
        x * z
    with pytest.raises(ValueError, match="input channels"):
        images.conv2d(np.ones((2, 2, 2, 1)))
    with pytest.raises(ValueError, match="rank 4"):
        x.conv2d(np.ones((2, 2, 2, 1)))
    assert rt.communicator.snapshot() == before


def test_reveal_is_logged_with_what_and_to(rt):
    x = rt.share(np.ones((2, 3)), owner="alice")
    x.reveal(to="alice", what="predictions")
    rt.reveal(x.sum(), to="model-owner", what="total")
    assert [(r.what, r.to, r.shape) for r in rt.reveal_log] == [
        ("predictions", "alice", (2, 3)),
        ("total", "model-owner", ()),
    ]


@pytest.mark.multi_backend
def test_low_level_api_follows_the_keras_backend(keras_backend):
    pk.mpc.set_runtime(None)
    try:
        x = pk.mpc.share(np.array([[1.0, -2.0], [3.0, 0.5]]))
        w = pk.mpc.share(np.eye(2) * 0.5, owner="bob")
        y = (x @ w).relu()
        np.testing.assert_allclose(pk.mpc.reveal(y), [[0.5, 0.0], [1.5, 0.25]], atol=1e-4)
        expected = "torch" if keras_backend == "torch" else "tensorflow"
        assert pk.mpc.get_runtime().kernels.name == expected
        assert (x > 0).reveal().tolist() == [[1.0, 0.0], [1.0, 1.0]]
        rt = MPCRuntime("aby3", kernels="numpy", seed=0)
        pk.mpc.set_runtime(rt)
        assert pk.mpc.share([1.0]).runtime is rt
        with pytest.raises(TypeError):
            pk.mpc.set_runtime("aby3")
    finally:
        pk.mpc.set_runtime(None)


def test_sign_bits_multiply_exactly_and_convert_to_fixed_point(rt):
    a = _quantized(np.array([[-2.5, 0.0, 3.25], [1e-3, -1e-3, 7.0]]))
    b = _quantized(np.linspace(-1, 1, 6).reshape(2, 3))
    x, y = rt.share(a), rt.share(b)
    negative, positive = x.negative_bit(), x.positive_bit()
    assert isinstance(negative, SharedBit) and negative.shape == (2, 3)
    assert "SharedBit(shape=(2, 3)" in repr(negative)
    np.testing.assert_array_equal(negative.to_tensor().reveal(), (a < 0).astype(float))
    np.testing.assert_array_equal(positive.reveal(what="sign"), (a > 0).astype(float))
    assert rt.reveal_log[-1].what == "sign"
    x_neg, y_neg = negative.times(x, y)  # exact: no truncation
    np.testing.assert_array_equal(x_neg.reveal(), a * (a < 0))
    np.testing.assert_array_equal(y_neg.reveal(), b * (a < 0))
    (row,) = negative.times(y[:1])  # broadcasts like a product
    np.testing.assert_array_equal(row.reveal(), b[:1] * (a < 0))
    with pytest.raises(TypeError, match="no truth value"):
        bool(negative)
    with pytest.raises(ValueError, match="broadcast"):
        negative.times(rt.share(np.ones((3, 2))))
    other = MPCRuntime(rt.protocol_name, kernels="numpy", seed=1)
    with pytest.raises(ValueError, match="another runtime"):
        negative.times(other.share(a))
    with pytest.raises(ValueError, match="SharedTensors"):
        negative.times(np.ones((2, 3)))


def test_division_by_a_power_of_two_is_a_truncation(rt):
    a = _quantized(np.array([-1000.0, -1.5, 0.0, 0.75, 123.456]))
    x = rt.share(a)
    for bits in (0, 1, 6, 16):
        assert np.max(np.abs(x.div_power_of_two(bits).reveal() - a / 2**bits)) <= 2 * ULP
    for bad in (-1, 63, 1.5, True):
        with pytest.raises(ValueError, match=r"bits to be an integer in \[0, 62\]"):
            x.div_power_of_two(bad)


def test_approximations_use_only_the_public_interface_of_shared_tensors():
    import ast
    import inspect

    from privkeras.backends.mpc import approximations

    tree = ast.parse(inspect.getsource(approximations))
    private = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        }
    )
    assert private == []
    assert "protocol" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
