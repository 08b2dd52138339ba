"""The low-level API with every party on its own thread: a session equals the in-process runtime.

A `MPCSession` over a `ThreadCluster` runs each compute party (and Pond's
dealer) on a thread of its own with a runtime that holds only that role,
exactly as a `privkeras party` process does; the test thread is the driver.
The same program of low-level operations, written once against the
`pk.mpc` API, must reveal bit for bit what the in-process runtime with the
same seed reveals, with the same rounds, bytes and reveal log, while the
driver holds no share component and each party only its own.
"""

from __future__ import annotations

import contextlib
import gc
import time

import numpy as np
import pytest
import torch

import privkeras as pk
from privkeras.backends.mpc import session as session_module
from privkeras.backends.mpc.cluster import ThreadCluster
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.runtime import MPCRuntime
from privkeras.backends.mpc.session import (
    COMMAND_FORMAT,
    MPCSession,
    SessionCommandError,
    SessionTensor,
    decode_message,
    encode_message,
)
from privkeras.errors import (
    CapabilityError,
    PartyError,
    PrecisionOverflowError,
    PrivacyPolicyError,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEED = 11
RNG = np.random.default_rng(3)
X = RNG.normal(size=(5, 4))
W = RNG.normal(size=(4, 3)) * 0.5
IMAGES = RNG.normal(size=(2, 5, 5, 2))
KERNEL = RNG.normal(size=(3, 3, 2, 2)) * 0.3


def program(rt) -> dict:
    """Low-level operations of every kind, through `pk.mpc` as a user writes them."""
    x = pk.mpc.share(X, owner="alice", runtime=rt)  # an outside owner
    w = pk.mpc.share(W, owner="bob", runtime=rt)
    images = pk.mpc.share(IMAGES, owner="p1", runtime=rt)  # a compute party's input
    kernel = rt.share(KERNEL, owner="bob")
    h = (x @ w).relu()
    h = h * h + 0.5 * h - (h > 0.25)
    conv = images.conv2d(kernel, padding="SAME")
    pooled = conv.max_pool2d((2, 2)).reshape((2, -1)).max(axis=-1)
    values, onehot = h.max_with_argmax(axis=0)
    (negative,) = x.negative_bit().times(x)
    public = (
        (2.0 - x) * np.float64(0.5)  # rsub, a numpy scalar
        + x * [1.0, 2.0, 3.0, 4.0]  # a list
        + x * torch.tensor([0.5, 1.0, 2.0, 3.0])  # a torch tensor: encoded, as in one process
        + x * 3  # an exact integer product
        + (np.ones((5, 5)) * 0.1) @ x  # numpy defers to __rmatmul__
    ) / 4.0
    sliced = h[1:4, ::2].T
    relu, derivative = (x - 0.2).relu_with_derivative()
    pooled_mask = images.max_pool2d_with_mask((2, 2))[1]
    positive = (x * x + 0.5).with_bound(20.0)
    stacked = (
        pk.mpc.SessionTensor.concat if isinstance(rt, MPCSession) else pk.mpc.SharedTensor.concat
    )
    return {
        "h": h.reveal(to="alice"),
        "pooled": pk.mpc.reveal(pooled),
        "sigmoid": h.sum(axis=0).sigmoid().reveal(to="bob"),
        "softmax": (x * 0.5).softmax(axis=-1).reveal(),
        "exp": (x * 0.25).exp().reveal(),
        "values": values.reveal(),
        "onehot": onehot.reveal(),
        "argmax": h.argmax(axis=-1).reveal(to="p0"),  # None in a session: p0 got it
        "negative": negative.reveal(),
        "compare": ((x <= 0.1) * x + (x >= 0.5)).reveal(),
        "public": public.reveal(),
        "sliced": sliced.reveal(to="carol"),
        "concat": stacked([x, x[:2]], axis=0).abs().reveal(),
        "mean": images.mean(axis=(1, 2)).reveal(to="p1"),
        "avg": images.avg_pool2d((2, 2), padding="SAME").reveal(),
        "bit": x.positive_bit().reveal(to="alice"),
        "relu": (relu + derivative).reveal(),
        "mask": pooled_mask.reveal(),
        "tanh": (x * 0.5).tanh().reveal(),
        "reciprocal": positive.reciprocal().reveal(),
        "where": x.where(x > 0, -x.div_power_of_two(2)).reveal(),
        "shapes": (
            x.expand_dims(0).broadcast_to((2, 5, 4)).pad([(0, 0), (1, 0), (0, 1)]).sum(axis=0)
            - x.reshape(-1).reshape(4, 5).T.pad([(1, 0), (0, 1)])
        ).reveal(),
        "drelu": x.drelu().mean(axis=0, keepdims=True).reveal(),
    }


def _session(protocol, seed=SEED, **kwargs):
    return MPCSession(ThreadCluster(timeout=20), protocol, kernels="numpy", seed=seed, **kwargs)


def _stats_match(got, expected):
    assert got.rounds == expected.rounds
    assert got.bytes_per_party == expected.bytes_per_party
    assert got.messages == expected.messages
    assert got.offline_bytes == expected.offline_bytes


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_a_session_reveals_the_in_process_values_bit_for_bit(protocol):
    reference = MPCRuntime(protocol, kernels="numpy", seed=SEED, track_bounds=True)
    expected = program(reference)
    with _session(protocol) as session:
        got = program(session)
        stats = session.stats()
        log = [(r.what, r.to, r.shape) for r in session.reveal_log]
    for name, value in expected.items():
        if name in ("argmax", "mean"):  # revealed to a compute party: not to the driver
            assert got[name] is None
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    _stats_match(stats, reference.communicator.snapshot())
    assert log == [(r.what, r.to, r.shape) for r in reference.reveal_log]
    report = session.report  # counted by every process, added up when the session closed
    _stats_match(report.stats, reference.communicator.snapshot())
    assert {r.to for r in report.reveal_logs["p0"]} == {r.to for r in reference.reveal_log}


def test_bounds_and_clean_failures_match_one_process_and_keep_the_session():
    reference = MPCRuntime("pond", kernels="numpy", seed=SEED, track_bounds=True)
    with _session("pond") as session:
        bounds, squares = {}, {}
        for name, rt in (("one process", reference), ("session", session)):
            big = rt.share([2.0**16])
            with pytest.raises(PrecisionOverflowError, match="could reach"):
                big * big  # refused before any party works: here and on every party
            with pytest.raises(MPCInputError, match="inner dimensions"):
                rt.share(np.ones((2, 3))) @ rt.share(np.ones((2, 3)))
            with pytest.raises(PrecisionOverflowError, match="finite"):
                rt.share([np.nan])  # refused by its owner before any party hears of it
            x = rt.share(X, bound=4.0)
            y = x @ W
            bounds[name] = (big.bound, x.bound, y.bound, y.relu().bound)
            squares[name] = (x * x).reveal()
        # The session went on: every process skipped the same failed operations.
        assert bounds["session"] == bounds["one process"]
        np.testing.assert_array_equal(squares["session"], squares["one process"])
        _stats_match(session.stats(), reference.communicator.snapshot())


def test_what_cannot_travel_is_refused_before_any_party_hears_of_it():
    with _session("pond") as session:
        x = session.share(X)
        before = session.stats()
        with pytest.raises(TypeError, match="public values"):
            x * object()
        with pytest.raises(TypeError, match="dtype"):
            x * np.array(["a"] * 4)
        with pytest.raises(CapabilityError, match="map_linear"):
            x.map_linear(lambda k, s: s)
        with pytest.raises(MPCInputError, match="owner"):
            session.share(X, owner="p2")  # no such process under pond
        with pytest.raises(MPCInputError, match="role name"):
            session.share(X, owner="a/b")
        with pytest.raises(MPCInputError, match="same runtime"):
            x + pk.mpc.MPCRuntime("pond", seed=1).share(X)
        with _session("pond") as other, pytest.raises(MPCInputError, match="same runtime"):
            x + other.share(X)
        assert session.stats() == before
        np.testing.assert_allclose((x + 1).reveal(), X + 1, atol=1e-4)
    with pytest.raises(MPCInputError, match="open session"):
        x + 1


def test_the_driver_holds_no_share_and_each_party_only_its_own(monkeypatch):
    servers = []

    class Recording(session_module.SessionServer):
        def __init__(self, runtime):
            super().__init__(runtime)
            servers.append(self)

    monkeypatch.setattr(session_module, "SessionServer", Recording)
    for protocol in ("pond", "aby3"):
        servers.clear()
        with _session(protocol) as session:
            x = session.share(X, owner="alice")
            y = (x @ W).relu()
            bit = y.positive_bit()
            session.stats()  # a round trip with every party: they are done with the above
            assert all(part is None for part in y._value.shares)
            for server in servers:
                held = server.values[y._id]
                holders = [
                    server.runtime.protocol.component_holders(c) for c in range(len(held.shares))
                ]
                for component, part in enumerate(held.shares):
                    assert (part is not None) == (server.role in holders[component])
                assert server.values[bit._id].shape == y.shape
            del x, y, bit
            gc.collect()
            fresh = session.share([1.0])  # what the driver freed is freed with this command
            session.stats()
            for server in servers:
                assert set(server.values) == {fresh._id}


def test_unseeded_sessions_agree_keys_even_for_owners_met_late():
    for protocol in ("pond", "aby3"):
        with _session(protocol, seed=None) as session:
            x = session.share(X, owner="dave")  # first seen here: its keys are agreed now
            w = session.share(W, owner="erin")
            images = session.share(IMAGES, owner="p0")
            y = (x @ w).relu().reveal(to="dave")
            z = images.sum(axis=(1, 2, 3)).reveal()
        np.testing.assert_allclose(y, np.maximum(X @ W, 0), atol=2e-3)
        np.testing.assert_allclose(z, IMAGES.sum(axis=(1, 2, 3)), atol=1e-3)


def test_set_runtime_makes_a_session_the_default():
    with _session("aby3") as session:
        pk.mpc.set_runtime(session)
        try:
            assert pk.mpc.get_runtime() is session
            x = pk.mpc.share(X)
            assert isinstance(x, SessionTensor) and x.runtime is session
            np.testing.assert_allclose(pk.mpc.reveal(x > 0), (X > 0).astype(float))
        finally:
            pk.mpc.set_runtime(None)
    assert isinstance(pk.mpc.get_runtime(), MPCRuntime)
    with pytest.raises(TypeError, match="MPCSession"):
        pk.mpc.set_runtime("pond")


def test_bad_settings_are_refused_before_any_party_is_contacted():
    with pytest.raises(PrivacyPolicyError, match="parties"):
        pk.mpc.connect("pond")
    with pytest.raises(PrivacyPolicyError, match="parties"):
        pk.mpc.connect("aby3", {"p0": "127.0.0.1:1", "p1": "127.0.0.1:2"})
    with pytest.raises(PrivacyPolicyError, match="idle_timeout"):
        MPCSession(ThreadCluster(), "pond", idle_timeout=0)
    with pytest.raises(PrivacyPolicyError, match="kernels"):
        MPCSession(ThreadCluster(), "pond", kernels="cuda")
    with pytest.raises(PrivacyPolicyError, match="protocol"):
        MPCSession(ThreadCluster(), "spdz")


def test_a_malformed_command_fails_the_session_on_the_party_with_a_typed_error():
    session = _session("pond", idle_timeout=5)
    x = session.share(X)
    bad = {"format": COMMAND_FORMAT, "op": "tensor.__class__", "self": {"tensor": x._id}}
    session._send(encode_message(bad))  # what a broken or hostile driver might send
    with pytest.raises(PartyError, match="allowlist"):
        session.close()


def test_an_idle_session_is_dropped_by_the_parties():
    session = _session("pond", idle_timeout=0.3)
    session.share(X)
    time.sleep(1.0)
    with pytest.raises(PartyError, match=r"idle timeout 0\.3 s"):
        session.close()


def test_malformed_bytes_are_refused_with_one_typed_error():
    header = {
        "format": COMMAND_FORMAT,
        "op": "tensor.__mul__",
        "self": {"tensor": 0},
        "args": [{"array": 0}],
        "kwargs": {},
        "out": 1,
        "free": [],
    }
    good = bytes(encode_message(header, [np.arange(6.0).reshape(2, 3)]))
    decoded, arrays = decode_message(np.frombuffer(good, np.uint8))
    assert decoded["op"] == "tensor.__mul__" and arrays[0].shape == (2, 3)
    rng = np.random.default_rng(0)
    for trial in range(300):
        data = bytearray(good)
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        elif trial % 3 == 1:
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
                data[position] ^= 1 << int(rng.integers(0, 8))
        else:
            data = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8))
        with contextlib.suppress(SessionCommandError):  # any other error fails the test
            decode_message(np.frombuffer(bytes(data), np.uint8))
    with pytest.raises(SessionCommandError):
        decode_message(np.zeros((2, 2), np.int64))


def test_the_drivers_placement_holds_every_role_but_the_compute_processes():
    from privkeras.backends.mpc.placement import Placement
    from privkeras.backends.mpc.protocols.streams import PartyStreams

    driver = Placement.all_but(session_module.COMPUTE_ROLES)
    assert driver.here("alice") and driver.here("caller") and not driver.here("p2")
    assert driver.any_here({"p0", "bob"}) and not driver.any_here({"p0", "p1", "p2"})
    assert not driver.everywhere and driver.roles is None
    assert Placement(driver) == driver and hash(Placement(driver)) == hash(driver)
    assert driver != Placement() and driver != Placement({"alice"})
    streams = PartyStreams(2, None, driver)
    assert streams.common() is None and streams.party(0) is None  # the parties' keys stay theirs
    streams.add_keys({"owner/alice/0": bytes(32)})
    assert streams.owner("alice", 0) is not None
    with pytest.raises(ValueError, match="drawn"):
        streams.add_keys({"owner/alice/0": bytes(32)})  # a key in use is never replaced
