"""MPC bundles and the servers' computation, without processes.

- `model.export(dir, format="mpc")` writes one folder per server role and a
  public manifest with a digest of every file; a single party's file is
  uniform random whatever the weights (statistical test, as for shares); a
  tampered, missing or pickled file is refused before anything is loaded.
- Every server role, each on its own thread with a runtime that holds only
  that role (as in its own process), serves a batch of several clients'
  requests: each client's reconstructed outputs equal `model.predict` under
  the same policy within the engine's tolerance, each role holds only its own
  components, and each output component a client receives alone is uniform.
"""

from __future__ import annotations

import json
import os
import threading

import keras
import numpy as np
import pytest
from scipy import stats

from privkeras.backends.mpc.bundles import ServedModel
from privkeras.backends.mpc.communicator import ChannelHub, ThreadedCommunicator
from privkeras.backends.mpc.placement import Placement
from privkeras.backends.mpc.serving import reconstruct, run_batch, serving_runtime, share_rows
from privkeras.core.fixed_point import FixedPointCodec
from privkeras.core.kernels import get_kernels
from privkeras.errors import CapabilityError, PrecisionOverflowError
from privkeras.models import PrivateSequential
from privkeras.policies import MPC
from privkeras.serving.bundle import BundleError, read_manifest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PROTOCOLS = ("pond", "aby3")


def _mlp(protocol: str, scale: float = 1.0) -> PrivateSequential:
    keras.utils.set_random_seed(3)
    model = PrivateSequential(
        [keras.Input((8,)), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(3)]
    )
    if scale != 1.0:
        model.set_weights([w * scale for w in model.get_weights()])
    model.compile(loss="mse", privacy=MPC(protocol=protocol))
    return model


def _cnn(protocol: str) -> PrivateSequential:
    keras.utils.set_random_seed(4)
    model = PrivateSequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    model.compile(loss="mse", privacy=MPC(protocol=protocol))
    return model


def _uniform(samples: np.ndarray) -> tuple[float, float]:
    """KS p-value against U[0,1) and chi-square p-value of the top byte."""
    unit = samples.view(np.uint64).astype(np.float64) / 2.0**64
    top = (samples.view(np.uint64) >> np.uint64(56)).astype(np.int64)
    return stats.kstest(unit, "uniform").pvalue, stats.chisquare(
        np.bincount(top, minlength=256)
    ).pvalue


# -- the bundle -----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_export_writes_one_folder_per_role_and_a_public_manifest(protocol, tmp_path):
    model = _mlp(protocol)
    manifest = model.export(str(tmp_path / "credit_model"), format="mpc")
    roles = ["p0", "p1", "dealer"] if protocol == "pond" else ["p0", "p1", "p2"]
    assert list(manifest.roles) == roles
    data = manifest.data
    assert (data["format"], data["format_version"], data["kind"]) == ("privkeras-bundle", 1, "mpc")
    assert data["mpc"]["protocol"] == protocol and data["mpc"]["precision_bits"] == 16
    assert data["input"]["shape"] == [8] and data["output"]["shape"] == [3]
    assert data["input"]["bound"] >= 1.0
    assert json.loads(data["model"])["class_name"] == "PrivateSequential"
    for role in roles:
        copy = tmp_path / "credit_model" / role / "manifest.json"
        assert copy.read_bytes() == (tmp_path / "credit_model" / "manifest.json").read_bytes()
    shares = sorted(data["files"])
    assert shares == sorted(f"{r}/shares.npz" for r in roles if r != "dealer")
    for name in shares:
        path = tmp_path / "credit_model" / name
        assert os.stat(path).st_mode & 0o077 == 0, "a party's shares are readable by it alone"
    # Components per role: pond p0 {0}, p1 {1}; aby3 party i {i, i+1}.
    components = {r: e["components"] for r, e in data["mpc"]["parties"].items()}
    expected = (
        {"p0": [0], "p1": [1], "dealer": []}
        if protocol == "pond"
        else {"p0": [0, 1], "p1": [1, 2], "p2": [2, 0]}
    )
    assert {r: sorted(c) for r, c in components.items()} == {
        r: sorted(c) for r, c in expected.items()
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_parties_components_add_up_to_the_weights(protocol, tmp_path):
    model = _mlp(protocol)
    manifest = model.export(str(tmp_path / "m"), format="mpc")
    served = {r: ServedModel(read_manifest(tmp_path / "m" / r), r) for r in manifest.roles}
    codec = FixedPointCodec()
    kernel = model.get_weights()[0]
    pieces = {}
    for model_part in served.values():
        for c in model_part.components:
            pieces[c] = model_part.arrays[f"L0.kernel.c{c}"]
    total = np.zeros_like(pieces[0])
    for c in sorted(pieces):
        total += pieces[c]
    np.testing.assert_allclose(codec.decode(total), kernel, atol=2**-16)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_single_partys_bundle_depends_on_the_weights(protocol, tmp_path):
    """Each party's file is uniform over the ring for zero weights and for large ones, and
    the two distributions are indistinguishable (p = 1e-4 thresholds)."""
    n = 20000
    keras.utils.set_random_seed(0)
    rows = n // 10
    files = {}
    for name, scale in (("zero", 0.0), ("large", 1e4)):
        model = PrivateSequential([keras.Input((rows,)), keras.layers.Dense(10, use_bias=False)])
        model.set_weights([np.full((rows, 10), scale, np.float32)])
        model.compile(loss="mse", privacy=MPC(protocol=protocol))
        manifest = model.export(str(tmp_path / name), format="mpc")
        files[name] = {
            r: ServedModel(read_manifest(tmp_path / name / r), r).arrays
            for r in manifest.roles
            if r != "dealer"
        }
    for role, arrays in files["zero"].items():
        for key, zero in arrays.items():
            large = files["large"][role][key].ravel()
            for sample in (zero.ravel(), large):
                ks, chi = _uniform(sample)
                assert ks > 1e-4 and chi > 1e-4, (role, key)
            unit = [a.astype(np.float64) for a in (zero.ravel(), large)]
            assert stats.ks_2samp(*unit).pvalue > 1e-4, (role, key)


def test_exports_of_the_same_model_share_it_afresh(tmp_path):
    model = _mlp("pond")
    a = model.export(str(tmp_path / "a"), format="mpc")
    b = model.export(str(tmp_path / "b"), format="mpc")
    first = ServedModel(read_manifest(tmp_path / "a" / "p0"), "p0").arrays["L0.kernel.c0"]
    second = ServedModel(read_manifest(tmp_path / "b" / "p0"), "p0").arrays["L0.kernel.c0"]
    assert not np.array_equal(first, second), "shares come from os.urandom, not a seed"
    assert a.digest != b.digest


def test_a_tampered_missing_or_pickled_file_is_refused_before_loading(tmp_path):
    model = _mlp("aby3")
    model.export(str(tmp_path / "m"), format="mpc")
    shares = tmp_path / "m" / "p1" / "shares.npz"
    original = shares.read_bytes()

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 1
    shares.write_bytes(bytes(flipped))
    with pytest.raises(BundleError, match=r"p1/shares.npz.*digest.*not loaded"):
        ServedModel(read_manifest(tmp_path / "m" / "p1"), "p1")

    shares.unlink()
    with pytest.raises(BundleError, match=r"Expected bundle file 'p1/shares.npz'"):
        ServedModel(read_manifest(tmp_path / "m" / "p1"), "p1")

    # A pickled object array whose digest an attacker also put in the manifest: np.load
    # with allow_pickle=False refuses it (nothing is unpickled).
    import hashlib
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{"L0.kernel.c1": np.array([{"x": 1}], dtype=object)})
    shares.write_bytes(buffer.getvalue())
    manifest_path = tmp_path / "m" / "p1" / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["files"]["p1/shares.npz"] = {
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "bytes": len(buffer.getvalue()),
    }
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="plain arrays"):
        ServedModel(read_manifest(tmp_path / "m" / "p1"), "p1")

    data["format_version"] = 2
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version 1"):
        read_manifest(tmp_path / "m" / "p1")
    with pytest.raises(BundleError, match="Expected a privkeras bundle"):
        read_manifest(tmp_path / "nowhere")


def test_export_refuses_what_it_cannot_serve(tmp_path):
    model = _mlp("pond")
    with pytest.raises(CapabilityError, match="cannot export format='he'"):
        model.export(str(tmp_path / "x"), format="he")
    with pytest.raises(PrecisionOverflowError):
        model.export(str(tmp_path / "y"), format="mpc", input_bound=1e12)
    model.export(str(tmp_path / "z"), format="mpc")
    with pytest.raises(BundleError, match="overwrite=True"):
        model.export(str(tmp_path / "z"), format="mpc")
    model.export(str(tmp_path / "z"), format="mpc", overwrite=True)


# -- the servers' computation, each role on its own thread ----------------------------------------
def _serve_on_threads(bundle, requests, kernels="numpy"):
    """Runs one batch of `requests` on every role (own thread, own runtime); returns what
    each client reconstructs, each role's output parts and each role's input shares."""
    manifest = read_manifest(bundle)
    roles = manifest.roles
    served = {r: ServedModel(read_manifest(bundle / r), r) for r in roles}
    codec = FixedPointCodec(precision_bits=manifest.data["mpc"]["precision_bits"])
    n = manifest.data["mpc"]["components"]
    components = [share_rows(codec.encode(x), n) for x in requests]
    hub, parties = ChannelHub(), [r for r in roles if r != "dealer"]
    outputs, inputs, errors = {}, {}, []
    ring = get_kernels(kernels)

    def run(role):
        try:
            model = served[role]
            comm = ThreadedCommunicator(parties, Placement({role}), hub, timeout=60)
            runtime = serving_runtime(model, ring, comm)
            parts = [[c[k] for k in model.components] for c in components]
            if model.components:
                inputs[role] = model.inputs(runtime, parts, sum(len(x) for x in requests)).shares
            outputs[role] = run_batch(model, runtime, parts, [len(x) for x in requests])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in roles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    results = [reconstruct([outputs[r][k] for r in parties], codec) for k in range(len(requests))]
    return results, outputs, inputs


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_a_batch_of_clients_gets_what_model_predict_gives(protocol, architecture, tmp_path):
    model = (_mlp if architecture == "mlp" else _cnn)(protocol)
    model.export(str(tmp_path / "m"), format="mpc")
    rng = np.random.default_rng(5)
    shape = model.input_shape[1:]
    requests = [rng.uniform(-1, 1, (rows, *shape)) for rows in (3, 1, 4)]
    results, _, inputs = _serve_on_threads(tmp_path / "m", requests)
    for x, got in zip(requests, results):
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(got, expected, atol=5e-3)
    # Each role holds only the components the manifest gives it.
    for role, shares in inputs.items():
        mine = read_manifest(tmp_path / "m").data["mpc"]["parties"][role]["components"]
        assert [i for i, s in enumerate(shares) if s is not None] == sorted(mine)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_output_component_a_client_receives_is_uniform(protocol, tmp_path):
    """The parties re-randomize their output components: each alone is uniform even for
    outputs that are all zero (a model with zero weights)."""
    keras.utils.set_random_seed(0)
    model = PrivateSequential([keras.Input((4,)), keras.layers.Dense(500)])
    model.set_weights([np.zeros((4, 500), np.float32), np.zeros(500, np.float32)])
    model.compile(loss="mse", privacy=MPC(protocol=protocol))
    model.export(str(tmp_path / "m"), format="mpc")
    results, outputs, _ = _serve_on_threads(tmp_path / "m", [np.ones((20, 4))])
    np.testing.assert_allclose(results[0], 0.0, atol=1e-3)
    for role, parts in outputs.items():
        if parts[0] is None:
            continue
        ks, chi = _uniform(parts[0].ravel())
        assert ks > 1e-4 and chi > 1e-4, role


@pytest.mark.parametrize("engine, kernels", [("tfe", "tensorflow"), ("torch", "torch")])
def test_both_kernel_engines_serve_their_bundles(engine, kernels, tmp_path):
    keras.utils.set_random_seed(6)
    model = PrivateSequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(loss="mse", privacy=MPC(protocol="aby3", engine=engine))
    manifest = model.export(str(tmp_path / "m"), format="mpc")
    assert manifest.engine == f"mpc-{engine}"
    x = np.random.default_rng(7).uniform(-1, 1, (6, 5))
    results, _, _ = _serve_on_threads(tmp_path / "m", [x[:2], x[2:]], kernels=kernels)
    np.testing.assert_allclose(np.concatenate(results), model.predict(x, verbose=0), atol=5e-3)
