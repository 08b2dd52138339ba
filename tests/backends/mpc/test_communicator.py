"""Communication counts: the communicator's bookkeeping, and exact costs derived on paper.

Conventions: a ring element is 8 bytes; a message of bits is packed eight to
a byte; sharing by a compute party ("p0") costs nothing for Pond; dealer
messages are offline (bytes counted apart, no rounds).
"""

import math

import numpy as np
import pytest

from privkeras.backends.mpc.communicator import (
    CommunicationStats,
    Communicator,
    InProcessCommunicator,
    Message,
)
from privkeras.backends.mpc.protocols.binary import popcount, prefix_schedule
from privkeras.backends.mpc.runtime import MPCRuntime

pytestmark = pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer")


def _runtime(protocol):
    return MPCRuntime(protocol, kernels="numpy", seed=3)


def test_exchange_counts_rounds_bytes_and_messages():
    comm = InProcessCommunicator(["p0", "p1"])
    inbox = comm.exchange(
        [
            Message("p0", "p1", np.zeros((2, 3), np.int64)),
            Message("p1", "p0", (np.ones(4, np.int64), np.ones(16, np.int64)), bits=(64, 1)),
        ]
    )
    assert inbox["p0", "p1"].shape == (2, 3)
    assert comm.rounds == 1
    assert comm.bytes_sent_per_party == {"p0": 48, "p1": 32 + 2}
    assert comm.bytes_sent == 82
    comm.exchange([Message("dealer", "p1", np.zeros(5, np.int64))], offline=True)
    snap = comm.snapshot()
    assert (snap.rounds, snap.messages, snap.offline_bytes) == (1, 2, 40)
    comm.exchange([Message("p0", "p1", np.zeros(1, np.int64))])
    delta = comm.snapshot() - snap
    assert isinstance(delta, CommunicationStats)
    assert (delta.rounds, delta.bytes_sent, delta.bytes_per_party["p0"]) == (1, 8, 8)
    comm.reset()
    assert (comm.rounds, comm.bytes_sent, comm.offline_bytes) == (0, 0, 0)


def test_exchange_refuses_two_messages_on_one_link_and_is_abstract():
    comm = InProcessCommunicator(["p0", "p1"])
    with pytest.raises(ValueError, match="at most one message"):
        comm.exchange([Message("p0", "p1", np.zeros(1)), Message("p0", "p1", np.zeros(1))])
    with pytest.raises(TypeError):
        Communicator(["p0"])  # abstract: a networked one implements _deliver


def test_pond_beaver_multiplication_costs_one_round_and_two_ring_elements_per_element():
    # x * y with fresh x, y of n elements: each party sends its shares of e = x - a and
    # f = y - b (2n ring elements = 16n bytes) in one round; truncation is local. The
    # dealer sends party 1 its share of c = a * b (8n bytes, offline).
    rt, n = _runtime("pond"), 10
    x = rt.share(np.linspace(-3, 3, n), owner="p0")
    y = rt.share(np.linspace(1, 2, n), owner="p1")
    before = rt.communicator.snapshot()
    x * y
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 1
    assert cost.bytes_per_party == {"p0": 16 * n, "p1": 16 * n}
    assert cost.offline_bytes == 8 * n


def test_pond_matmul_costs_one_round_and_reuses_the_opened_weights():
    # (m, k) @ (k, p): each party sends e (m k) and f (k p) ring elements in one round.
    # A second product with the same weights opens only the new left operand.
    rt, m, k, p = _runtime("pond"), 4, 6, 3
    x = rt.share(np.ones((m, k)), owner="p0")
    w = rt.share(np.full((k, p), 0.5), owner="p1")
    before = rt.communicator.snapshot()
    x @ w
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 1
    assert cost.bytes_per_party == {"p0": 8 * (m * k + k * p), "p1": 8 * (m * k + k * p)}
    assert cost.offline_bytes == 8 * m * p  # party 1's share of c = a @ b
    x2 = rt.share(np.ones((m, k)), owner="p0")
    before = rt.communicator.snapshot()
    x2 @ w
    again = rt.communicator.snapshot() - before
    assert again.rounds == 1 and again.bytes_per_party["p0"] == 8 * m * k


def test_aby3_multiplication_and_matmul_cost_one_round_with_truncation():
    # Each party i opens d_i = z_i - r_i to p0 and p1 (p2 sends its d_2 to both): one
    # round; p0 and p1 send one ring element per output element, p2 two. Offline, the
    # helper p2 sends s1 (its share of r >> f) to p0 and p1: two ring elements.
    rt, n = _runtime("aby3"), 7
    x = rt.share(np.linspace(-3, 3, n), owner="p0")
    y = rt.share(np.linspace(1, 2, n), owner="p1")
    before = rt.communicator.snapshot()
    x * y
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 1
    assert cost.bytes_per_party == {"p0": 8 * n, "p1": 8 * n, "p2": 16 * n}
    assert cost.offline_bytes == 16 * n
    a = rt.share(np.ones((3, 5)), owner="p0")
    b = rt.share(np.ones((5, 2)), owner="p2")
    before = rt.communicator.snapshot()
    a @ b
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 1
    assert cost.bytes_per_party == {"p0": 8 * 6, "p1": 8 * 6, "p2": 16 * 6}


def _prefix_bytes(n, protocol, skip=0):
    """Bytes one party sends in the carry levels (after `skip` local ones), from the schedule."""
    total = 0
    for level in prefix_schedule()[skip:]:
        if protocol == "pond":  # P and G masked, only the scheduled positions
            widths = [popcount(level.open_p), popcount(level.open_g)]
        else:  # ABY3 re-shares the needed AND outputs
            widths = [popcount(level.and_g)] + ([popcount(level.and_p)] if level.and_p else [])
        total += sum(math.ceil(n * w / 8) for w in widths)
    return total


def test_relu_rounds_and_bytes():
    n = 16
    # Pond: open x + r (8n), 5 carry levels (the first is local with the dealer's
    # r & (r << 1)), then one round opening d = bit ^ b (n bits) and nothing else: the
    # mask of x is the one the comparison opened.
    rt = _runtime("pond")
    x = rt.share(np.linspace(-4, 4, n), owner="p0")
    before = rt.communicator.snapshot()
    x.relu()
    cost = rt.communicator.snapshot() - before
    assert rt.protocol.local_levels == 1
    assert cost.rounds == 7
    assert cost.bytes_per_party["p0"] == 8 * n + _prefix_bytes(n, "pond", 1) + math.ceil(n / 8)
    # ABY3 (default): the same circuit run by p0 and p1 with p2 dealing (x is a 2-out-of-2
    # sharing of p0 and p1 for free), then one round back to replicated shares: p0 and p1
    # each send p2 one ring element per element.
    rt = _runtime("aby3")
    x = rt.share(np.linspace(-4, 4, n), owner="p0")
    before = rt.communicator.snapshot()
    x.relu()
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 8
    pond_like = 8 * n + _prefix_bytes(n, "pond", 1) + math.ceil(n / 8)
    assert cost.bytes_per_party == {"p0": pond_like + 8 * n, "p1": pond_like + 8 * n, "p2": 0}
    # ABY3 without a helper: majority (63 bits) and generate rounds, 6 levels, then
    # x * bit in 2 rounds (p0 shares u = b0 ^ b1 while x * b2 is re-shared; one product).
    rt = _runtime("aby3")
    rt.protocol.helper_comparisons = False
    x = rt.share(np.linspace(-4, 4, n), owner="p0")
    before = rt.communicator.snapshot()
    x.relu()
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 10
    # p1 sends: 63 majority bits, 62 generate bits, the levels, its share of x * b2 and
    # its share of (x - 2 x b2) * u: two ring elements. p0 also sends its share of u.
    comparison = math.ceil(63 * n / 8) + math.ceil(62 * n / 8) + _prefix_bytes(n, "aby3")
    assert cost.bytes_per_party["p1"] == comparison + 16 * n
    assert cost.bytes_per_party["p0"] == comparison + 24 * n
    print(f"ReLU on {n} elements: Pond 7 rounds, ABY3 8 (10 without the helper)")


def test_reveal_counts_one_round_and_logs():
    rt = _runtime("aby3")
    x = rt.share(np.zeros((2, 2)), owner="alice")
    before = rt.communicator.snapshot()
    rt.reveal(x, to="p1", what="x")
    cost = rt.communicator.snapshot() - before
    assert cost.rounds == 1 and cost.bytes_sent == 8 * 4  # p2 sends the missing component
    assert rt.reveal_log[-1].to == "p1" and rt.reveal_log[-1].shape == (2, 2)
