"""The mailbox: early messages buffered; late, duplicated and replayed ones refused; jobs apart."""

import threading
import time

import numpy as np
import pytest

from privkeras.errors import PartyError
from privkeras.net import wire
from privkeras.net.mailbox import ByteBudget, Mailbox, MessageRefused


def frame(job="j", sender="p0", round_=0, value=0):
    return wire.Frame(wire.MESSAGE, job, round_, sender, "p1", "", {}, [np.array([value])])


def soon(seconds=2.0):
    return time.monotonic() + seconds


@pytest.fixture
def box():
    return Mailbox(ByteBudget(10_000))


def test_early_messages_wait_in_the_buffer_in_any_order(box):
    for round_ in range(3):
        box.put(frame(round_=round_, value=round_), 8)
    assert [box.get("j", "p0", r, soon()).tensors[0][0] for r in (2, 0, 1)] == [2, 0, 1]
    assert box.budget.used == 0


def test_a_waiting_receiver_wakes_when_its_message_arrives(box):
    threading.Timer(0.05, box.put, args=(frame(value=5), 8)).start()
    start = time.monotonic()
    assert box.get("j", "p0", 0, soon()).tensors[0][0] == 5
    assert time.monotonic() - start < 1.0


def test_duplicates_and_replays_are_refused_buffered_or_delivered(box):
    box.put(frame(), 8)
    with pytest.raises(MessageRefused, match="duplicated or replayed") as refused:
        box.put(frame(), 8)
    assert refused.value.reason == "duplicate"
    box.get("j", "p0", 0, soon())
    with pytest.raises(MessageRefused, match="duplicated or replayed"):
        box.put(frame(), 8)


def test_messages_after_the_receiver_gave_up_are_refused_as_late(box):
    with pytest.raises(PartyError, match=r"from 'p0' for job 'j', round 0 \(beaver mul\)"):
        box.get("j", "p0", 0, soon(0.05), step="beaver mul")
    with pytest.raises(MessageRefused, match="late") as refused:
        box.put(frame(), 8)
    assert refused.value.reason == "late"


def test_the_deadline_is_kept(box):
    start = time.monotonic()
    with pytest.raises(PartyError, match="before the deadline"):
        box.get("j", "p0", 0, soon(0.2))
    assert 0.19 < time.monotonic() - start < 1.0


def test_same_round_from_different_senders_and_jobs_are_different_messages(box):
    box.put(frame(sender="p0", value=1), 8)
    box.put(frame(sender="p2", value=2), 8)
    box.put(frame(job="k", sender="p0", value=3), 8)
    assert box.get("j", "p2", 0, soon()).tensors[0][0] == 2
    assert box.get("k", "p0", 0, soon()).tensors[0][0] == 3
    assert box.get("j", "p0", 0, soon()).tensors[0][0] == 1


def test_a_closed_job_refuses_messages_and_frees_its_buffer(box):
    box.budget.acquire(8, "a message")  # the node reserves a frame's bytes before it files it
    box.put(frame(round_=1), 8)
    assert box.budget.used == 8
    box.close_job("j")
    assert box.budget.used == 0
    with pytest.raises(MessageRefused, match="closed"):
        box.put(frame(round_=2), 8)
    with pytest.raises(PartyError, match="closed on this node"):
        box.get("j", "p0", 2, soon())


def test_abort_wakes_only_that_jobs_waiters_with_the_reason(box):
    errors = {}

    def wait(job):
        try:
            box.get(job, "p0", 0, soon(3))
        except PartyError as error:
            errors[job] = error

    threads = [threading.Thread(target=wait, args=(job,)) for job in ("a", "b")]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    box.abort("a", "p2", "p1 died")
    threads[0].join(1.0)
    assert "aborted by 'p2'" in str(errors["a"]) and "p1 died" in str(errors["a"])
    assert "b" not in errors
    box.put(frame(job="b"), 8)
    threads[1].join(1.0)
    assert "b" not in errors
    with pytest.raises(MessageRefused, match="aborted"):
        box.put(frame(job="a", round_=1), 8)


def test_receiving_one_message_twice_is_refused(box):
    box.put(frame(), 8)
    box.get("j", "p0", 0, soon())
    with pytest.raises(PartyError, match="received once"):
        box.get("j", "p0", 0, soon())


def test_the_budget_refuses_what_does_not_fit():
    budget = ByteBudget(100)
    budget.acquire(80, "a message")
    with pytest.raises(MessageRefused, match="buffer budget of 100 bytes") as refused:
        budget.acquire(30, "a message")
    assert refused.value.reason == "budget"
    budget.release(80)
    budget.acquire(100, "a message")


def test_stop_wakes_every_waiter_and_refuses_new_messages(box):
    threading.Timer(0.05, box.stop, args=("node stopping",)).start()
    with pytest.raises(PartyError, match="node stopping"):
        box.get("j", "p0", 0, soon(3))
    with pytest.raises(MessageRefused, match="node stopping"):
        box.put(frame(), 8)


def test_idle_jobs_are_dropped_after_their_ttl(caplog):
    box = Mailbox(ByteBudget(1000), job_ttl=0.0)
    box.budget.acquire(16, "two messages")
    box.put(frame(job="old"), 8)
    box._last_sweep = 0.0  # let the next put sweep
    time.sleep(0.01)
    with caplog.at_level("WARNING", "privkeras.net"):
        box.put(frame(job="new"), 8)
    assert box.jobs() == ["new"] and box.budget.used == 8
    assert "dropped job 'old'" in caplog.text
