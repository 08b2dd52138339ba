"""HE bundles and the HE server's methods, without processes.

- `model.export(dir, format="he")` writes the server bundle (weights,
  CKKS parameters, packings) and the client spec, and nothing else: no key
  of any kind; a tampered weight file is refused before it is read.
- The server's methods, called as the transport calls them: a client's
  session (public context, encrypted rows) gives what `model.predict` under
  HE gives (argmax agreement); the server never holds a secret key (an
  object walk finds none) and refuses a context that carries one.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tenseal.sealapi as sealapi

from privkeras import datasets
from privkeras.backends.he import HEClient, HEInputError, PackingSpec
from privkeras.backends.he.bundles import ServedHEModel
from privkeras.backends.he.serving import HEModelServer
from privkeras.errors import InvalidInputError, PartyError
from privkeras.layers import PolynomialActivation
from privkeras.models import PrivateSequential
from privkeras.net import Request
from privkeras.serving.bundle import BundleError, read_manifest
from privkeras.serving.limits import ServingLimits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    data = datasets.digits()
    keras.utils.set_random_seed(0)
    model = PrivateSequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16),
            PolynomialActivation("square"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(
        data.x_train[:256], keras.utils.to_categorical(data.y_train[:256]), epochs=2, verbose=0
    )
    model.compile(loss="mse", privacy="he")
    root = tmp_path_factory.mktemp("he") / "digits_he"
    manifest = model.export(str(root), format="he", blocks=[1, 64])
    return model, root, manifest, data.x_test


def test_the_bundle_holds_the_model_and_public_set_up_and_no_key(exported):
    model, root, manifest, _ = exported
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [
        "client/spec.json", "manifest.json", "server/manifest.json", "server/weights.npz",
    ]  # fmt: skip
    assert sorted(manifest.data["files"]) == ["client/spec.json", "server/weights.npz"]
    with np.load(root / "server" / "weights.npz", allow_pickle=False) as archive:
        arrays = [archive[f"w{i}"] for i in range(len(archive.files))]
    for saved, weight in zip(arrays, model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, weight)  # the weights, nothing else
    spec = json.loads((root / "client" / "spec.json").read_text())
    assert sorted(spec) == ["input", "output", "packings", "parameters", "rotation_steps"]
    he = manifest.data["he"]
    assert sorted(he) == ["depth", "packings", "parameters", "policy", "weights"]
    assert [p["block"] for p in he["packings"]] == [1, 64]
    assert spec["rotation_steps"] == sorted(
        {s for p in he["packings"] for s in p["rotation_steps"]}
    )


def test_a_tampered_weight_file_is_refused_before_it_is_read(exported, tmp_path):
    model, _, _, _ = exported
    root = tmp_path / "copy"
    model.export(str(root), format="he", blocks=[1])
    weights = root / "server" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"server/weights.npz.*not loaded"):
        ServedHEModel(read_manifest(root / "server"))


class _Node:
    """What `HEModelServer` needs of a node, for calling its methods directly."""

    name, address = "server", "127.0.0.1:0"

    def __init__(self):
        self.handlers = {}

    def register(self, method, handler):
        self.handlers[method] = handler


def _request(method, peer="client", meta=None, tensors=()):
    return Request(method, peer, "", meta or {}, list(tensors))


def _secret_keys(obj, seen=None):
    """Every SEAL SecretKey reachable from an object's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, sealapi.SecretKey):
        return [obj]
    if isinstance(obj, dict):
        children = list(obj.values()) + list(obj.keys())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        children = list(getattr(obj, "__dict__", {}).values()) + [
            getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s)
        ]
    else:
        children = []
    return [key for child in children for key in _secret_keys(child, seen)]


def test_a_session_predicts_as_model_predict_and_the_server_never_holds_a_secret_key(exported):
    model, root, _, x = exported
    node = _Node()
    server = HEModelServer(ServedHEModel(read_manifest(root / "server")), node, ServingLimits(), 30)
    call = node.handlers
    spec = PackingSpec.from_bytes(
        call["serve.spec"](_request("serve.spec", meta={"block": 64})).tensors[0].tobytes()
    )
    client = HEClient(spec.parameters)
    context = client.public_context(rotation_steps=server.model.rotation_steps).to_bytes()
    reply = call["serve.register"](
        _request("serve.register", tensors=[np.frombuffer(context, np.uint8)])
    )
    session = reply.meta["session"]
    rows = x[:40]
    data = client.encrypt_to_bytes(rows, spec)
    reply = call["serve.predict"](
        _request(
            "serve.predict",
            meta={"session": session, "block": 64},
            tensors=[np.frombuffer(data, np.uint8)],
        )
    )
    from privkeras.backends.he.context import EncryptedBatch

    outputs = client.decrypt(EncryptedBatch.from_bytes(reply.tensors[0].tobytes(), client), spec)
    expected = model.predict(rows, verbose=0)
    assert (outputs.argmax(1) == expected.argmax(1)).all()
    assert _secret_keys(client), "the walk finds a key where there is one"
    assert not _secret_keys(server), "the server holds no secret key"

    secret = client.to_bytes(include_secret_key=True)
    with pytest.raises(HEInputError, match="public-context"):
        call["serve.register"](
            _request("serve.register", tensors=[np.frombuffer(secret, np.uint8)])
        )
    assert not _secret_keys(server)

    with pytest.raises(PartyError, match="register again"):  # another client's session
        call["serve.predict"](
            _request(
                "serve.predict", peer="mallory", meta={"session": session, "block": 64},
                tensors=[np.frombuffer(data, np.uint8)],
            )
        )  # fmt: skip
    with pytest.raises(InvalidInputError, match="block in"):
        call["serve.spec"](_request("serve.spec", meta={"block": 3}))
    with pytest.raises(HEInputError):
        call["serve.predict"](
            _request(
                "serve.predict", meta={"session": session, "block": 64},
                tensors=[np.frombuffer(data[:-50], np.uint8)],
            )
        )  # fmt: skip


def test_sessions_are_bounded_and_idle_ones_make_room():
    from privkeras.backends.he.serving import HESessions

    sessions = HESessions("server", max_sessions=2, max_bytes=100, idle_ttl=0.2)
    a = sessions.add("alice", object(), 10)
    b = sessions.add("bob", object(), 10)
    sessions.get(a, "alice")  # alice was used last: bob's is the one to go
    c = sessions.add("carol", object(), 10)
    with pytest.raises(PartyError, match="register again"):
        sessions.get(b, "bob")
    busy = pytest.raises(PartyError, match="busy")
    with sessions.get(a, "alice").lock, sessions.get(c, "carol").lock, busy:  # both evaluating
        sessions.add("dave", object(), 10)
    with pytest.raises(PartyError, match="register again"):
        sessions.get(a, "mallory")  # a session is its client's only
    big = sessions.add("erin", object(), 95)  # bytes bound too: everyone idle goes
    assert sessions.stats() == {"sessions": 1, "session_bytes": 95}
    sessions.drop(big, "erin")
    sessions.add("frank", object(), 1)
    import time

    time.sleep(0.3)
    sessions.sweep()  # a client that went away without closing: gone after the idle TTL
    assert sessions.stats()["sessions"] == 0
