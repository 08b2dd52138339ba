"""One protocol code: every role on its own thread, holding only its own keys and shares.

Each role (the data owner, every compute party, Pond's dealer) runs its own
`MPCRuntime` whose placement holds only that role, exactly as a party process
does, and the roles talk over in-memory channels. The results must be bit for
bit those of the in-process runtime with the same seed, with the same rounds
and bytes, and no role may ever hold a share component or a key that is not
its own.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from privkeras.backends.mpc.communicator import ChannelHub, ThreadedCommunicator
from privkeras.backends.mpc.placement import Placement, Remote
from privkeras.backends.mpc.protocols.aby3 import ABY3Protocol
from privkeras.backends.mpc.protocols.streams import holders_of
from privkeras.backends.mpc.runtime import MPCRuntime
from privkeras.errors import PartyError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROLES = {"pond": ("p0", "p1", "dealer"), "aby3": ("p0", "p1", "p2")}
SEED = 21
RNG = np.random.default_rng(4)
X = RNG.normal(size=(6, 5))
W = RNG.normal(size=(5, 4)) * 0.5
K = RNG.normal(size=(3, 3, 2, 3)) * 0.3
IMAGES = RNG.normal(size=(2, 6, 6, 2))


def job(rt: MPCRuntime, held: dict) -> dict:
    """A little of everything: sharing by outsiders and parties, products, comparisons, reveals."""

    def value(owner, array):
        return array if rt.here(owner) else Remote(np.shape(array))

    x = rt.share(value("alice", X), owner="alice")
    w = rt.share(value("bob", W), owner="bob")
    h = (x @ w).relu()
    h = h * h + 0.5 * h - (h > 0.25)
    pooled = rt.share(value("p1", IMAGES), owner="p1").conv2d(
        rt.share(value("bob", K), owner="bob"), padding="SAME"
    )
    m = pooled.max_pool2d((2, 2)).reshape((2, -1)).max(axis=-1)
    a = h.argmax(axis=-1)
    out = {
        "h": rt.reveal(h, to="alice"),
        "m": rt.reveal(m, to="alice"),
        "a": rt.reveal(a, to="p0"),
        "s": rt.reveal(h.sum(axis=0).sigmoid(), to="alice"),
    }
    held["h"] = h.shares
    return out


def run_threads(protocol: str, roles: tuple[str, ...]) -> dict:
    hub = ChannelHub()
    results, errors, runtimes, held = {}, {}, {}, {}

    def worker(role: str) -> None:
        try:
            comm = ThreadedCommunicator(
                [f"p{i}" for i in range(3 if protocol == "aby3" else 2)],
                Placement({role}),
                hub,
                timeout=20,
            )
            rt = runtimes[role] = MPCRuntime(
                protocol, kernels="numpy", seed=SEED, communicator=comm
            )
            held[role] = {}
            results[role] = job(rt, held[role])
        except BaseException as error:  # reported by the main thread
            errors[role] = error

    threads = [threading.Thread(target=worker, args=(role,)) for role in roles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return {"results": results, "runtimes": runtimes, "held": held}


@pytest.mark.parametrize("helper", [True, False], ids=["helper", "replicated"])
@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_threads_give_the_in_process_results_bit_for_bit(protocol, helper, monkeypatch):
    monkeypatch.setattr(ABY3Protocol, "helper_comparisons", helper)
    if protocol == "pond" and not helper:
        pytest.skip("only ABY3 has two comparison circuits")
    reference = MPCRuntime(protocol, kernels="numpy", seed=SEED)
    expected = job(reference, {})
    roles = ("alice", "bob", *ROLES[protocol])
    run = run_threads(protocol, roles)
    alice, p0 = run["results"]["alice"], run["results"]["p0"]
    for name in ("h", "m", "s"):
        np.testing.assert_array_equal(alice[name], expected[name])
    np.testing.assert_array_equal(p0["a"], expected["a"])
    # Only the role a value is revealed to gets it.
    assert run["results"]["p1"]["h"] is None and run["results"]["bob"]["a"] is None

    # Rounds agree everywhere; bytes and messages add up to the in-process counts.
    ref = reference.communicator.snapshot()
    stats = [rt.communicator.snapshot() for rt in run["runtimes"].values()]
    assert {s.rounds for s in stats} == {ref.rounds}
    assert sum(s.bytes_sent for s in stats) == ref.bytes_sent
    assert sum(s.messages for s in stats) == ref.messages
    assert sum(s.offline_bytes for s in stats) == ref.offline_bytes
    for party in reference.parties:
        assert sum(s.bytes_per_party.get(party, 0) for s in stats) == ref.bytes_per_party[party]


@pytest.mark.parametrize("protocol", ["pond", "aby3"])
def test_each_role_holds_only_its_own_components_and_keys(protocol):
    roles = ("alice", "bob", *ROLES[protocol])
    run = run_threads(protocol, roles)
    for role in roles:
        rt = run["runtimes"][role]
        shares = run["held"][role]["h"]
        holders = [rt.protocol.component_holders(c) for c in range(len(shares))]
        for component, part in enumerate(shares):
            assert (part is not None) == (role in holders[component]), (role, component)
        for label, stream in rt.streams._cache.items():
            assert (stream is not None) == (role in holders_of(label)), (role, label)
    assert all(part is None for part in run["held"]["alice"]["h"])


def test_a_silent_party_is_a_party_error_naming_it():
    hub = ChannelHub()
    comm = ThreadedCommunicator(["p0", "p1"], Placement({"p1"}), hub, timeout=0.2)
    rt = MPCRuntime("pond", kernels="numpy", seed=1, communicator=comm)
    with pytest.raises(PartyError, match="'alice'"):
        rt.share(Remote((2, 2)), owner="alice")
