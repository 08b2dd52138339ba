"""The low-level API across real processes: `pk.mpc.connect` to `privkeras party` processes.

Both clusters (pond: p0, p1 and the dealer; aby3: p0, p1, p2) start once, in
parallel, on loopback with mutual TLS, and are always stopped here. A
session must reveal bit for bit what the in-process runtime with the same
seed reveals, with the same rounds and bytes; a malformed command must fail
the session with a typed error and leave the parties serving; a party killed
mid-session must be a `PartyError` naming it within the deadline.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.mpc.runtime import MPCRuntime
from privkeras.backends.mpc.session import COMMAND_FORMAT, encode_message
from privkeras.errors import PartyError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

#: The parties' deadline (the first job of a party imports torch: generous on a loaded machine).
TIMEOUT = 20.0
#: The driver's deadline in the kill test: how soon a dead party must be named.
KILL_TIMEOUT = 5.0
SEED = 5
RNG = np.random.default_rng(7)
X = RNG.normal(size=(4, 3))
W = RNG.normal(size=(3, 2)) * 0.5
IMAGES = RNG.normal(size=(1, 4, 4, 2))
KERNEL = RNG.normal(size=(2, 2, 2, 2)) * 0.3


@pytest.fixture(scope="module")
def clusters():
    """Both clusters, started at the same time (each start is mostly imports)."""
    contexts = {p: pk.mpc.local_cluster(p, tls=True, timeout=TIMEOUT) for p in ("pond", "aby3")}
    running, errors = {}, []

    def start(protocol):
        try:
            running[protocol] = contexts[protocol].__enter__()
        except BaseException as error:  # reported below, after every start ended
            errors.append(error)

    threads = [threading.Thread(target=start, args=(p,)) for p in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        yield running
    finally:
        for protocol in running:
            contexts[protocol].__exit__(None, None, None)


def program(rt) -> dict:
    x = pk.mpc.share(X, owner="alice", runtime=rt)
    w = rt.share(W, owner="bob")
    images = rt.share(IMAGES, owner="p1")  # a compute party's input
    h = (x @ w).relu()
    h = h * h - (h > 0.2) + 0.5 * x[:, :2]
    conv = images.conv2d(rt.share(KERNEL, owner="bob"), padding="SAME").max_pool2d((2, 2))
    values, onehot = h.max_with_argmax(axis=-1)
    return {
        "h": h.reveal(to="alice"),
        "conv": conv.reveal(),
        "sigmoid": h.sigmoid().reveal(to="bob"),
        "values": values.reveal(),
        "onehot": onehot.reveal(to="p0"),  # None on the driver
        "sum": (h.sum(axis=0) / 3.0).reveal(),
    }


#: The kernels each cluster's sessions use (the parties follow the driver's library):
#: bit-identical by design, so one protocol runs on each.
KERNELS = {"pond": "numpy", "aby3": "torch"}


def _connect(cluster, **kwargs):
    options = {"seed": SEED, "timeout": TIMEOUT, "kernels": KERNELS[cluster.protocol], **kwargs}
    return pk.mpc.connect(cluster.protocol, cluster.parties, **options)


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_a_session_across_processes_equals_one_process(clusters, protocol):
    cluster = clusters[protocol]
    reference = MPCRuntime(protocol, kernels="numpy", seed=SEED, track_bounds=True)
    expected = program(reference)
    with _connect(cluster) as session:
        got = program(session)
        stats = session.stats()
    for name, value in expected.items():
        if name == "onehot":
            assert got[name] is None
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    ref = reference.communicator.snapshot()
    for counts in (stats, session.report.stats):
        assert counts.rounds == ref.rounds
        assert counts.bytes_per_party == ref.bytes_per_party
        assert counts.offline_bytes == ref.offline_bytes
    logs = session.report.reveal_logs
    assert [(r.what, r.to) for r in logs["driver"]] == [
        (r.what, r.to) for r in reference.reveal_log
    ]
    for role in cluster.parties:  # every party kept its own log of the same reveals
        assert [r.to for r in logs[role]] == [r.to for r in reference.reveal_log]


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_an_unseeded_session_agrees_keys_for_every_owner(clusters, protocol):
    with _connect(clusters[protocol], seed=None) as session:
        pk.mpc.set_runtime(session)
        try:
            x = pk.mpc.share(X, owner="zoe")  # an owner no one knew when the session began
            y = pk.mpc.reveal((x @ W).relu(), to="zoe")
        finally:
            pk.mpc.set_runtime(None)
    np.testing.assert_allclose(y, np.maximum(X @ W, 0), atol=2e-3)


def test_a_malformed_command_is_a_typed_error_and_the_parties_keep_serving(clusters):
    cluster = clusters["pond"]
    session = _connect(cluster)
    x = session.share(X)
    # What a broken or hostile driver might send: every party refuses it and ends the session,
    # and the driver hears why at its next message to one of them.
    with pytest.raises(PartyError, match="allowlist"):
        session._send(encode_message({"format": COMMAND_FORMAT, "op": "tensor.__reduce__"}))
        (x * x).reveal()
    session.close()
    with _connect(cluster) as fresh:
        np.testing.assert_allclose(fresh.share(X).relu().reveal(), np.maximum(X, 0), atol=1e-4)
    del x


@pytest.mark.parametrize(("protocol", "victim"), [("pond", "dealer"), ("aby3", "p2")])
def test_a_party_killed_mid_session_is_a_party_error_naming_it(clusters, protocol, victim):
    cluster = clusters[protocol]
    session = _connect(cluster, seed=None, timeout=KILL_TIMEOUT)
    x = session.share(X, owner="alice")
    np.testing.assert_allclose((x * x).reveal(to="alice"), X * X, atol=1e-3)
    cluster.processes.children[victim].kill()
    killed = time.monotonic()
    with pytest.raises(PartyError, match=victim):
        (x * x).relu().reveal()
    assert time.monotonic() - killed < KILL_TIMEOUT + 5
    with pytest.raises(PartyError, match="failed earlier"):
        x + 1  # the session refuses to go on
    session.close()  # tells the survivors; quiet: the error was raised already
    client = cluster.processes.client()
    try:
        for name in cluster.parties:
            if name != victim:
                assert client.health(name) == "SERVING"
    finally:
        with contextlib.suppress(Exception):
            client.close()
