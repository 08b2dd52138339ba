"""Routes decided by measurement: timed once per shape class, cached, explained,
forced or switched off by environment variables, kept on disk per machine; every
route of matmul and conv2d gives the same bits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privkeras.core.kernels import KERNEL_LIBRARIES, get_kernels
from privkeras.core.kernels.numpy import NumpyKernels
from privkeras.core.kernels.routes import (
    RouteChoice,
    RouteTable,
    cpu_info,
    machine_fingerprint,
    route_cache_path,
    shape_class,
)
from privkeras.core.kernels.torch import TorchKernels

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def ring(rng, shape):
    return rng.integers(INT64_MIN, INT64_MAX, shape, dtype=np.int64, endpoint=True)


def test_route_choice_is_a_str_that_says_why():
    choice = RouteChoice("limbs", "measured", "fastest", {"limbs": 1.0, "native": 9.0}, ("k",))
    assert choice == "limbs" and hash(choice) == hash("limbs") and f"{choice}" == "limbs"
    assert {"limbs": 1}[choice] == 1
    assert choice.cached().source == "cached" and choice.cached().timings_ms == choice.timings_ms
    assert "measured" in repr(choice)


def test_shape_classes_round_up_to_powers_of_two():
    assert shape_class(64, 784, 128, 1, 0) == (64, 1024, 128, 1, 0)
    assert shape_class(65) == (128,)


def test_measured_route_is_timed_once_per_shape_class_and_cached():
    k = NumpyKernels()
    rng = np.random.default_rng(0)
    a, b = ring(rng, (64, 40)), ring(rng, (40, 32))
    first = k.matmul_route(a, b)
    assert first.source == "measured" and first in ("native", "limbs")
    assert set(first.timings_ms) == {"native", "limbs"}
    assert all(t > 0 for t in first.timings_ms.values())
    assert "fastest when timed here" in first.reason
    again = k.matmul_route(ring(rng, (50, 60)), ring(rng, (60, 30)))  # same class
    assert again == first and again.source == "cached"
    assert len(k.routes.decisions()) == 1
    other = k.matmul_route(ring(rng, (200, 40)), b)
    assert other.source == "measured" and len(k.routes.decisions()) == 2
    assert k.routes.seconds_measuring > 0
    tiny = k.matmul_route(ring(rng, (3, 5)), ring(rng, (5, 2)))  # not worth timing
    assert tiny.source == "static" and "multiply-adds" in tiny.reason
    assert len(k.routes.decisions()) == 2


def test_slow_candidates_stop_after_the_warm_up():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        import time

        time.sleep(0.02)

    table = RouteTable("test")
    choice = table.choose(("x",), lambda: {"fast": fast, "slow": slow}, "fast")
    assert choice == "fast" and calls["slow"] == 1 and calls["fast"] == 1
    assert "slow dropped" in choice.reason


def test_forced_route_and_measurement_off(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = ring(rng, (8, 8)), ring(rng, (8, 8))
    monkeypatch.setenv("PRIVKERAS_KERNEL_ROUTE", "limbs")
    for name in KERNEL_LIBRARIES:
        k = get_kernels(name)
        ta, tb = k.from_numpy(a), k.from_numpy(b)
        choice = k.matmul_route(ta, tb)
        assert choice == "limbs" and choice.source == "forced", name
        np.testing.assert_array_equal(k.to_numpy(k.matmul(ta, tb)), np.matmul(a, b))
    monkeypatch.setenv("PRIVKERAS_KERNEL_ROUTE", "fast")
    with pytest.raises(
        ValueError, match=r"Expected PRIVKERAS_KERNEL_ROUTE in \['native', 'limbs'\]"
    ):
        NumpyKernels().matmul_route(a, b)
    monkeypatch.delenv("PRIVKERAS_KERNEL_ROUTE")
    monkeypatch.setenv("PRIVKERAS_ROUTE_CACHE", "off")
    k = NumpyKernels()
    assert k.matmul_route(a, b).source == "static" and not k.routes.decisions()
    monkeypatch.setenv("PRIVKERAS_ROUTE_CACHE", "sometimes")
    with pytest.raises(
        ValueError, match=r"Expected PRIVKERAS_ROUTE_CACHE in \['memory', 'disk', 'off'\]"
    ):
        NumpyKernels().matmul_route(a, b)


def test_disk_cache_is_kept_per_machine_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVKERAS_ROUTE_CACHE", "disk")
    monkeypatch.setenv("PRIVKERAS_ROUTE_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(2)
    a, b = ring(rng, (64, 40)), ring(rng, (40, 32))
    measured = NumpyKernels().matmul_route(a, b)
    assert measured.source == "measured"
    path = route_cache_path("numpy", np.__version__)
    assert path.parent == tmp_path and machine_fingerprint(np.__version__) in path.name
    entries = json.loads(path.read_text())
    assert [e["route"] for e in entries] == [str(measured)]
    fresh = NumpyKernels()  # another process would start like this
    again = fresh.matmul_route(a, b)
    assert again == measured and again.source == "disk"
    assert again.timings_ms == pytest.approx(measured.timings_ms)
    path.write_text("not json")  # a damaged file is ignored, then rewritten
    assert NumpyKernels().matmul_route(a, b).source == "measured"
    assert json.loads(path.read_text())


def test_cpu_info_names_the_model_and_vector_extensions():
    info = cpu_info()
    assert info["model"] and info["cores"] >= 1
    assert isinstance(info["vector_extensions"], list)


def test_torch_routes_depend_on_threads_and_device():
    k = TorchKernels()
    a = k.from_numpy(np.ones((64, 64), np.int64))
    k.matmul_route(a, a)
    (key,) = k.routes.decisions()
    assert "cpu" in key and "matmul" in key


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_conv2d_routes_give_the_same_bits(name):
    rng = np.random.default_rng(3)
    x, kernel = ring(rng, (2, 7, 6, 3)), ring(rng, (3, 2, 3, 4))
    results = {}
    for method in ("auto", "native", "limbs"):
        k = get_kernels(name, matmul_method=method)
        tx, tk = k.from_numpy(x), k.from_numpy(kernel)
        for _ in range(3):  # the kernel's split is kept from the second call on
            results[method] = k.to_numpy(k.conv2d(tx, tk, (2, 1), "SAME"))
        route = k.conv2d_route(tx, tk, (2, 1), "SAME")
        assert route in ("native", "limbs", "bytes"), route
    np.testing.assert_array_equal(results["auto"], results["native"])
    np.testing.assert_array_equal(results["limbs"], results["native"])
    reference = get_kernels("numpy", matmul_method="native")
    np.testing.assert_array_equal(results["native"], reference.conv2d(x, kernel, (2, 1), "SAME"))


def test_conv2d_route_is_measured_per_configuration():
    k = NumpyKernels()
    rng = np.random.default_rng(4)
    x, kernel = ring(rng, (4, 16, 16, 4)), ring(rng, (3, 3, 4, 8))
    choice = k.conv2d_route(x, kernel, 1, "SAME")
    assert choice.source == "measured" and choice.shape_class[0] == "conv2d"
    assert k.conv2d_route(x, kernel, 1, "SAME").source == "cached"
    assert k.conv2d_route(x, kernel, 2, "SAME").source == "measured"  # another configuration


def test_tensorflow_graph_tensors_reuse_the_eager_decision():
    import tensorflow as tf

    from privkeras.core.kernels.tensorflow import TensorFlowKernels

    k = TensorFlowKernels()
    rng = np.random.default_rng(5)
    a, b = ring(rng, (64, 40)), ring(rng, (40, 32))
    ta, tb = k.from_numpy(a), k.from_numpy(b)
    eager = k.matmul_route(ta, tb)
    seen = []

    @tf.function(autograph=False)
    def product(x, y):
        seen.append(k.matmul_route(x, y))
        return k.matmul(x, y)

    np.testing.assert_array_equal(product(ta, tb).numpy(), np.matmul(a, b))
    assert seen[0] == eager and seen[0].source == "cached"


@pytest.mark.parametrize("name", KERNEL_LIBRARIES)
def test_empty_products_take_no_route(name):
    methods = ["auto", "native", "limbs"] + (["bytes"] if name == "torch" else [])
    for method in methods:
        k = get_kernels(name, matmul_method=method)
        for a_shape, b_shape in (((2, 0), (0, 3)), ((0, 4), (4, 3)), ((2, 4), (4, 0))):
            out = k.to_numpy(k.matmul(k.zeros(a_shape), k.zeros(b_shape)))
            assert out.shape == (a_shape[0], b_shape[1]) and not out.any(), (method, a_shape)
