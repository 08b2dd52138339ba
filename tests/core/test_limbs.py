"""The exact float64-limb matmul: bit-identical to int64 matmul on every library,
at the float64 exactness bounds (schoolbook and Karatsuba), across depth chunks,
with kept (prepared) splits, and on every matmul route."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privkeras.core.kernels import KERNEL_LIBRARIES, MAX_EXACT_DEPTH, get_kernels
from privkeras.core.kernels.limbs import (
    GEMM_TERMS,
    KARATSUBA_MAX_DEPTH,
    LIMB_BITS,
    LIMB_SHIFTS,
    check_exact_depth,
    limb_matmul_exact,
    signed_limbs,
    split_limbs,
)
from privkeras.core.kernels.tensorflow import TensorFlowKernels
from privkeras.core.kernels.torch import TorchKernels

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
RING_VALUES = st.one_of(
    st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX, -1, 0, 2**62])
)


def wrap(values) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    flat = [((int(v) + 2**63) % 2**64) - 2**63 for v in values.ravel()]
    return np.array(flat, dtype=np.int64).reshape(values.shape)


def python_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return wrap(np.matmul(a.astype(object), b.astype(object)))


def limb_value(limbs: tuple[int, int, int]) -> int:
    """The int64 whose signed limbs are `limbs`."""
    total = sum(limb << shift for limb, shift in zip(limbs, LIMB_SHIFTS))
    return int(wrap(total))


def matmul_limbs_everywhere(a, b, depth_chunk=MAX_EXACT_DEPTH) -> dict[str, np.ndarray]:
    out = {}
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name)
        out[name] = k.to_numpy(k.matmul_limbs(k.from_numpy(a), k.from_numpy(b), depth_chunk))
    return out


def test_limb_bound_constants():
    assert sum(LIMB_BITS) == 64
    assert LIMB_SHIFTS == (0, 22, 43)
    # (1, 2) has weight 2^(22 + 43) = 2^65: it vanishes mod 2^64, (1, 1) at 2^44 does not.
    assert LIMB_SHIFTS[1] + LIMB_SHIFTS[2] >= 64 > 2 * LIMB_SHIFTS[1]
    assert MAX_EXACT_DEPTH * 2 ** (2 * (LIMB_BITS[0] - 1)) == 2**53
    # Karatsuba's (A0 + A1)(B0 + B1) reaches (2^21 + 2^20)^2 = 9 * 2^40 per step of depth.
    assert max(GEMM_TERMS["karatsuba"].values()) == 9 * 2**40
    assert KARATSUBA_MAX_DEPTH == 910
    assert KARATSUBA_MAX_DEPTH * 9 * 2**40 <= 2**53 < (KARATSUBA_MAX_DEPTH + 1) * 9 * 2**40


def test_exact_depth_is_checked_before_a_route_runs():
    check_exact_depth(KARATSUBA_MAX_DEPTH)
    check_exact_depth(MAX_EXACT_DEPTH, "schoolbook")
    with pytest.raises(ValueError, match=r"Expected a limb GEMM depth of at most 910"):
        check_exact_depth(KARATSUBA_MAX_DEPTH + 1)
    with pytest.raises(ValueError, match=r"at most 2048 for the schoolbook route"):
        check_exact_depth(MAX_EXACT_DEPTH + 1, "schoolbook")
    k = get_kernels("numpy")
    with pytest.raises(ValueError, match="at most 2048"):
        limb_matmul_exact(k, k.zeros((1, MAX_EXACT_DEPTH + 1)), k.zeros((MAX_EXACT_DEPTH + 1, 1)))


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_split_limbs_rebuilds_values_within_limb_ranges(name):
    rng = np.random.default_rng(1)
    a = np.concatenate(
        [
            rng.integers(INT64_MIN, INT64_MAX, 200, dtype=np.int64, endpoint=True),
            np.array([INT64_MIN, INT64_MAX, -1, 0, 1, 2**21, -(2**21), 2**43 - 1], dtype=np.int64),
        ]
    )
    k = get_kernels(name)
    limbs = [np.array(limb, dtype=np.float64) for limb in split_limbs(k, k.from_numpy(a))]
    fused = k._split_for_limbs(k.from_numpy(a.reshape(1, -1)), "left", KARATSUBA_MAX_DEPTH)
    batched = np.array(fused.batched[0], dtype=np.float64)[:, 0]
    np.testing.assert_array_equal(batched[0], limbs[0])  # the library's fused split agrees
    np.testing.assert_array_equal(batched[1], limbs[1])
    np.testing.assert_array_equal(batched[2], limbs[0] + limbs[1])
    ints = [np.array(k.to_numpy(limb)) for limb in signed_limbs(k, k.from_numpy(a))]
    np.testing.assert_array_equal(np.stack(ints).astype(np.float64), np.stack(limbs))
    for limb, width in zip(limbs, LIMB_BITS):
        assert np.all(limb == np.round(limb))
        assert limb.min() >= -(2 ** (width - 1)) and limb.max() < 2 ** (width - 1)
    rebuilt = sum(
        limb.astype(np.int64).astype(object) * 2**shift for limb, shift in zip(limbs, LIMB_SHIFTS)
    )
    np.testing.assert_array_equal(wrap(rebuilt), a)


@SETTINGS
@given(
    st.tuples(st.integers(1, 3), st.integers(1, 5000), st.integers(1, 3)).flatmap(
        lambda d: st.tuples(
            hnp.arrays(np.int64, (d[0], d[1]), elements=RING_VALUES),
            hnp.arrays(np.int64, (d[1], d[2]), elements=RING_VALUES),
        )
    )
)
def test_limbs_match_python_ints_for_deep_products(operands):
    a, b = operands
    expected = python_matmul(a, b)
    for name, value in matmul_limbs_everywhere(a, b).items():
        np.testing.assert_array_equal(value, expected, err_msg=name)


@pytest.mark.parametrize("depth", [2047, 2048, 2049, 4097, 6000])
def test_limbs_match_python_ints_around_chunk_boundaries(depth):
    rng = np.random.default_rng(depth)
    a = rng.integers(INT64_MIN, INT64_MAX, (2, depth), dtype=np.int64, endpoint=True)
    b = rng.integers(INT64_MIN, INT64_MAX, (depth, 2), dtype=np.int64, endpoint=True)
    expected = python_matmul(a, b)
    for name, value in matmul_limbs_everywhere(a, b).items():
        np.testing.assert_array_equal(value, expected, err_msg=name)


@SETTINGS
@given(
    st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.integers(1, 9)).flatmap(
        lambda d: st.tuples(
            hnp.arrays(np.int64, (2, d[0], d[1]), elements=RING_VALUES),
            hnp.arrays(np.int64, (d[1], d[2]), elements=RING_VALUES),
            st.just(d[3]),
        )
    )
)
def test_limbs_across_depth_chunks_match_python_ints(operands):
    a, b, depth_chunk = operands
    expected = python_matmul(a, b)
    for name, value in matmul_limbs_everywhere(a, b, depth_chunk).items():
        np.testing.assert_array_equal(value, expected, err_msg=f"{name}, depth_chunk={depth_chunk}")


@pytest.mark.parametrize(
    "a_limbs, b_limbs",
    [
        ((-(2**21), -(2**20), -(2**20)), (-(2**21), -(2**20), -(2**20))),  # every sum = +2^53
        ((-(2**21), -(2**20), -(2**20)), (2**21 - 1, 2**20 - 1, 2**20 - 1)),  # about -2^53
    ],
)
def test_limbs_are_exact_at_the_float64_bound(a_limbs, b_limbs):
    depth = MAX_EXACT_DEPTH
    a = np.full((2, depth), limb_value(a_limbs), dtype=np.int64)
    b = np.full((depth, 3), limb_value(b_limbs), dtype=np.int64)
    b[:, 1] = INT64_MIN
    expected = python_matmul(a[:, :8], b[:8]).astype(object) * (depth // 8)
    expected = wrap(expected)
    np.testing.assert_array_equal(np.matmul(a, b), expected)  # numpy's int64 loop agrees
    for name, value in matmul_limbs_everywhere(a, b).items():
        np.testing.assert_array_equal(value, expected, err_msg=name)
    deeper_a, deeper_b = np.tile(a, (1, 2)), np.tile(b, (2, 1))  # two chunks at the bound
    for name, value in matmul_limbs_everywhere(deeper_a, deeper_b).items():
        np.testing.assert_array_equal(value, wrap(expected.astype(object) * 2), err_msg=name)


def test_limbs_chunk_where_one_float64_gemm_would_round():
    # 2048 products of 2^42 reach 2^53 exactly; one more product of 1 makes 2^53 + 1,
    # which float64 cannot hold: only chunking at MAX_EXACT_DEPTH keeps it exact.
    value = limb_value((-(2**21), 0, 0))
    a = np.full((1, MAX_EXACT_DEPTH + 1), value, dtype=np.int64)
    a[0, -1] = 1
    expected = np.array([[2**53 + 1]], dtype=np.int64)
    np.testing.assert_array_equal(np.matmul(a, a.T), expected)
    for name, result in matmul_limbs_everywhere(a, np.ascontiguousarray(a.T)).items():
        np.testing.assert_array_equal(result, expected, err_msg=name)


def test_karatsuba_chunks_where_one_gemm_would_round():
    # (A0 + A1) = -(2^21 + 2^20) in every element: 910 steps of 9 * 2^40 stay within 2^53,
    # one more step of depth and an odd product would not be exact in one GEMM.
    value = limb_value((-(2**21), -(2**20), 0))
    depth = KARATSUBA_MAX_DEPTH + 1
    a = np.full((2, depth), value, dtype=np.int64)
    a[1, -1] = 1
    b = np.ascontiguousarray(a.T)
    expected = python_matmul(a, b)
    np.testing.assert_array_equal(np.matmul(a, b), expected)
    for name, result in matmul_limbs_everywhere(a, b).items():
        np.testing.assert_array_equal(result, expected, err_msg=name)
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name)
        schoolbook = k.to_numpy(limb_matmul_exact(k, k.from_numpy(a), k.from_numpy(b)))
        np.testing.assert_array_equal(schoolbook, expected, err_msg=f"schoolbook {name}")


def test_depth_chunk_is_validated():
    k = get_kernels("numpy")
    a = k.zeros((2, 2))
    for bad in (0, MAX_EXACT_DEPTH + 1):
        with pytest.raises(ValueError, match=rf"Expected depth_chunk in \[1, {MAX_EXACT_DEPTH}\]"):
            k.matmul_limbs(a, a, depth_chunk=bad)


def test_numpy_limb_results_do_not_alias_kept_buffers():
    k = get_kernels("numpy", matmul_method="limbs")
    rng = np.random.default_rng(2)
    a, b = (rng.integers(INT64_MIN, INT64_MAX, (40, 40), dtype=np.int64) for _ in range(2))
    first = k.matmul(a, b)
    kept = first.copy()
    second = k.matmul(b, a)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(second, np.matmul(b, a))


def test_numpy_limbs_are_thread_safe():
    k = get_kernels("numpy", matmul_method="limbs")
    rng = np.random.default_rng(3)
    jobs = [
        tuple(rng.integers(INT64_MIN, INT64_MAX, (48, 48), dtype=np.int64) for _ in range(2))
        for _ in range(4)
    ]
    results = [None] * len(jobs)

    def work(index):
        a, b = jobs[index]
        for _ in range(5):
            results[index] = k.matmul(a, b)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (a, b), result in zip(jobs, results):
        np.testing.assert_array_equal(result, np.matmul(a, b))


def test_static_routes_apply_when_measurement_is_off(monkeypatch):
    monkeypatch.setenv("PRIVKERAS_ROUTE_CACHE", "off")
    numpy_kernels = get_kernels("numpy")

    def route(m, k, n):
        return numpy_kernels.matmul_route(np.zeros((m, k), np.int64), np.zeros((k, n), np.int64))

    assert route(512, 512, 512) == route(128, 784, 128) == "limbs"
    assert route(8, 8, 8) == "native"  # too small for the GEMMs to pay
    assert route(12544, 27, 16) == "native"  # im2col of 3 channels: too thin to split
    assert route(8, 8, 8).source == "static"
    assert (
        get_kernels("numpy", matmul_method="native").matmul_route(
            np.zeros((512, 512), np.int64), np.zeros((512, 512), np.int64)
        )
        == "native"
    )


def test_torch_cpu_limb_route_matches_native():
    rng = np.random.default_rng(4)
    a = rng.integers(INT64_MIN, INT64_MAX, (3, 17, 2100), dtype=np.int64)
    b = rng.integers(INT64_MIN, INT64_MAX, (2100, 5), dtype=np.int64)
    limbs, native = TorchKernels(matmul_method="limbs"), TorchKernels(matmul_method="native")
    out = limbs.to_numpy(limbs.matmul(limbs.from_numpy(a), limbs.from_numpy(b)))
    np.testing.assert_array_equal(
        out, native.to_numpy(native.matmul(native.from_numpy(a), native.from_numpy(b)))
    )
    auto = TorchKernels()
    choice = auto.matmul_route(limbs.from_numpy(a), limbs.from_numpy(b))
    assert choice in ("native", "limbs", "bytes") and choice.source == "measured"


def test_kept_splits_give_the_same_bits_and_follow_in_place_writes():
    rng = np.random.default_rng(7)
    a = rng.integers(INT64_MIN, INT64_MAX, (5, 40), dtype=np.int64)
    b = rng.integers(INT64_MIN, INT64_MAX, (40, 3), dtype=np.int64)
    k = TorchKernels(matmul_method="limbs")
    ta, tb = k.from_numpy(a), k.from_numpy(b)
    for _ in range(3):  # first product splits, the second keeps, the third reuses
        np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), np.matmul(a, b))
    assert k.prepared.hits >= 2 and len(k.prepared) == 2
    tb.add_(1)  # an in-place write: the kept split must not be used
    np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), np.matmul(a, b + 1))
    np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), np.matmul(a, b + 1))
    tb[..., :2].mul_(-3)  # through a view
    expected = np.matmul(a, k.to_numpy(tb))
    np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), expected)
    del tb
    import gc

    gc.collect()
    assert len(k.prepared) == 1  # the dead tensor's split went with it; ta's stays


def test_numpy_keeps_splits_of_read_only_arrays_only():
    rng = np.random.default_rng(8)
    a = rng.integers(INT64_MIN, INT64_MAX, (4, 30), dtype=np.int64)
    b = rng.integers(INT64_MIN, INT64_MAX, (30, 6), dtype=np.int64)
    k = get_kernels("numpy", matmul_method="limbs")
    k.prepared.clear()
    for _ in range(3):
        k.matmul(a, b)
    assert len(k.prepared) == 0  # writeable arrays could change under a kept split
    b.flags.writeable = False
    for _ in range(3):
        np.testing.assert_array_equal(k.matmul(a, b), np.matmul(a, b))
    assert len(k.prepared) == 1
    base_writeable = np.arange(6, dtype=np.int64)
    read_only_view = base_writeable[:]
    read_only_view.flags.writeable = False
    assert k._operand_version(read_only_view) is None  # its base can still be written


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_prepare_keeps_the_split_from_the_first_product(name):
    rng = np.random.default_rng(9)
    a = rng.integers(INT64_MIN, INT64_MAX, (2, 3, 50), dtype=np.int64)
    w = rng.integers(INT64_MIN, INT64_MAX, (50, 7), dtype=np.int64)
    k = get_kernels(name, matmul_method="limbs")
    tw = k.from_numpy(w)
    if name == "numpy":
        tw.flags.writeable = False
    k.prepared.clear()
    assert k.prepare(tw) is tw
    out = k.matmul(k.from_numpy(a), tw)
    assert len(k.prepared) == 1  # kept on first use
    np.testing.assert_array_equal(k.to_numpy(out), np.matmul(a, w))
    np.testing.assert_array_equal(k.to_numpy(k.matmul(k.from_numpy(a), tw)), np.matmul(a, w))


def test_limbs_module_uses_only_the_public_kernel_interface():
    import ast
    import inspect

    from privkeras.core.kernels import limbs

    tree = ast.parse(inspect.getsource(limbs))
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("k", "kernels")
        and node.attr.startswith("_")
    ]
    assert private == []


@SETTINGS
@given(
    st.tuples(st.integers(1, 5), st.integers(1, 60), st.integers(1, 5), st.booleans()).flatmap(
        lambda d: st.tuples(
            hnp.arrays(np.int64, ((2,) if d[3] else ()) + (d[0], d[1]), elements=RING_VALUES),
            hnp.arrays(np.int64, (d[1], d[2]), elements=RING_VALUES),
        )
    )
)
def test_int8_byte_route_matches_python_ints(operands):
    a, b = operands
    k = TorchKernels(matmul_method="bytes")
    out = k.to_numpy(k.matmul(k.from_numpy(a), k.from_numpy(b)))
    np.testing.assert_array_equal(out, python_matmul(a, b))


def test_int8_byte_route_at_its_depth_bound_and_cuda_padding_on_cpu():
    import torch

    from privkeras.core.kernels.bytes import BYTES_MAX_DEPTH, check_byte_depth, int8_gemm

    assert 8 * BYTES_MAX_DEPTH * 2**14 < 2**31 <= 8 * (BYTES_MAX_DEPTH + 1) * 2**14
    with pytest.raises(ValueError, match="at most 16383"):
        check_byte_depth(BYTES_MAX_DEPTH + 1)
    k = TorchKernels(matmul_method="bytes")
    # zeros have every byte digit at -128: one unchunked GEMM of this depth would wrap int32
    depth = BYTES_MAX_DEPTH + 1
    zeros = k.matmul(k.zeros((2, depth)), k.zeros((depth, 3)))
    assert k.to_numpy(zeros).tolist() == [[0] * 3] * 2
    rng = np.random.default_rng(11)
    a = rng.integers(INT64_MIN, INT64_MAX, (2, depth + 5), dtype=np.int64, endpoint=True)
    b = rng.integers(INT64_MIN, INT64_MAX, (depth + 5, 2), dtype=np.int64, endpoint=True)
    np.testing.assert_array_equal(k.to_numpy(k.matmul(k.from_numpy(a), k.from_numpy(b))), a @ b)
    left = torch.randint(-128, 128, (3, 13), dtype=torch.int8)
    right = torch.randint(-128, 128, (13, 16), dtype=torch.int8)
    exact = left.long() @ right.long()
    assert torch.equal(int8_gemm(left, right, pad=True).long(), exact)  # CUDA's padded shapes
    assert torch.equal(int8_gemm(left, right, pad=False).long(), exact)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")
def test_torch_cuda_uses_exact_limbs():  # pragma: no cover - runs only where CUDA exists
    rng = np.random.default_rng(5)
    a = rng.integers(INT64_MIN, INT64_MAX, (64, 3000), dtype=np.int64)
    b = rng.integers(INT64_MIN, INT64_MAX, (3000, 32), dtype=np.int64)
    k = TorchKernels("cuda")
    ta, tb = k.from_numpy(a), k.from_numpy(b)
    assert ta.device.type == "cuda" and k.matmul_route(ta, tb) in ("limbs", "bytes")
    np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), np.matmul(a, b))
    for method in ("limbs", "bytes"):
        routed = TorchKernels("cuda", matmul_method=method)
        np.testing.assert_array_equal(routed.to_numpy(routed.matmul(ta, tb)), np.matmul(a, b))
    x = rng.integers(INT64_MIN, INT64_MAX, (2, 9, 9, 3), dtype=np.int64)
    w = rng.integers(INT64_MIN, INT64_MAX, (3, 3, 3, 4), dtype=np.int64)
    cpu = get_kernels("numpy")
    np.testing.assert_array_equal(
        k.to_numpy(k.conv2d(k.from_numpy(x), k.from_numpy(w), 2, "SAME")),
        cpu.conv2d(x, w, 2, "SAME"),
    )


def test_tensorflow_routes_agree_in_eager_and_graph_mode():
    import tensorflow as tf

    rng = np.random.default_rng(6)
    a = rng.integers(INT64_MIN, INT64_MAX, (2, 9, 30), dtype=np.int64)
    b = rng.integers(INT64_MIN, INT64_MAX, (30, 4), dtype=np.int64)
    expected = np.matmul(a, b)
    auto = TensorFlowKernels()
    ta, tb = auto.from_numpy(a), auto.from_numpy(b)
    assert auto.matmul_route(ta, tb) in ("native", "limbs")  # TensorFlow's own ops only
    for method in ("auto", "native", "limbs", "torch"):
        k = TensorFlowKernels(matmul_method=method)
        np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), expected, err_msg=method)
    for method in ("auto", "native", "limbs"):
        k = auto if method == "auto" else TensorFlowKernels(matmul_method=method)
        graph_matmul = tf.function(k.matmul, autograph=False)
        np.testing.assert_array_equal(
            graph_matmul(ta, tb).numpy(), expected, err_msg=f"graph {method}"
        )
    torch_route = TensorFlowKernels(matmul_method="torch")
    with pytest.raises(ValueError, match="Expected non-empty eager CPU tensors"):
        tf.function(torch_route.matmul, autograph=False)(ta, tb)
    # DLPack is not used for empty tensors
    empty = auto.matmul(auto.zeros((2, 0)), auto.zeros((0, 3)))
    assert auto.to_numpy(empty).tolist() == [[0, 0, 0], [0, 0, 0]]
    variable = tf.Variable(a)
    np.testing.assert_array_equal(auto.to_numpy(auto.matmul(variable, tb)), expected)
    np.testing.assert_array_equal(variable.numpy(), a)
