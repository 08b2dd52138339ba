"""Nodes over real gRPC on 127.0.0.1 (in one process): messages, calls, auth, faults."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from privkeras.errors import (
    AuthenticationError,
    PartyError,
    PrivacyBudgetExceededError,
    RemoteCallError,
    WireError,
)
from privkeras.net import wire
from privkeras.net.client import Client, Reply
from privkeras.net.credentials import InsecureTransportWarning
from privkeras.net.node import Node, new_job_id
from privkeras.net.wire import WireLimits


def test_exchange_delivers_tensors_and_meta_both_ways(pair):
    p0, p1 = pair
    job = new_job_id()
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            p1.exchange(job, 0, {"p0": Reply([np.ones(3, bool)], {"from": "p1"})}, ["p0"])
        )
    )
    thread.start()
    got = p0.exchange(job, 0, {"p1": [np.arange(4), wire.bits(np.array([1, 0, 1]))]}, ["p1"])
    thread.join(5)
    np.testing.assert_array_equal(result["p0"].tensors[0], np.arange(4))
    np.testing.assert_array_equal(result["p0"].tensors[1], [1, 0, 1])
    assert got["p1"].meta == {"from": "p1"} and got["p1"].sender == "p1"
    np.testing.assert_array_equal(got["p1"].tensors[0], [True, True, True])


def test_early_messages_are_buffered_and_received_in_any_order(pair):
    p0, p1 = pair
    for round_ in range(5):
        p0.send("p1", "j", round_, [np.array([round_])])
    assert [int(p1.recv("p0", "j", r).tensors[0][0]) for r in (4, 2, 0, 1, 3)] == [4, 2, 0, 1, 3]


def test_a_duplicated_message_is_refused_at_the_sender_and_logged_at_the_receiver(pair, caplog):
    p0, p1 = pair
    p0.send("p1", "j", 0, [np.zeros(1)])
    with (
        caplog.at_level("WARNING", "privkeras.net"),
        pytest.raises(PartyError, match="duplicated or replayed"),
    ):
        p0.send("p1", "j", 0, [np.zeros(1)])
    assert "refused a message" in caplog.text
    assert p1.recv("p0", "j", 0).tensors[0].shape == (1,)


def test_a_silent_peer_is_a_party_error_naming_it_and_the_step_at_the_deadline(pair):
    p0, _ = pair
    start = time.monotonic()
    with pytest.raises(PartyError, match=r"from 'p1' for job 'j', round 3 \(open\)"):
        p0.recv("p1", "j", 3, timeout=0.3, step="open")
    assert time.monotonic() - start < 2.0
    with pytest.raises(PartyError, match="from 'p1'"):
        p0.exchange("k", 0, {"p1": [np.zeros(1)]}, ["p1"], timeout=0.3, step="open")


def test_a_large_message_goes_in_chunks(certs, creds, start):
    limits = WireLimits(chunk_bytes=64 << 10)
    with start(
        Node("p0", credentials=creds("p0"), limits=limits),
        Node("p1", credentials=creds("p1"), limits=limits),
    ) as (p0, p1):
        big = np.arange(300_000, dtype=np.int64)  # 2.4 MB: 37 chunks
        p0.send("p1", "j", 0, [big])
        np.testing.assert_array_equal(p1.recv("p0", "j", 0).tensors[0], big)
        p1.register("echo", lambda request: Reply(request.tensors))
        np.testing.assert_array_equal(p0.call("p1", "echo", [big]).tensors[0], big)


def test_a_message_over_the_receivers_budget_is_refused_and_the_stream_stays_in_step(creds, start):
    limits = WireLimits(chunk_bytes=64 << 10)
    with start(
        Node("p0", credentials=creds("p0"), limits=limits),
        Node("p1", credentials=creds("p1"), limits=limits, max_buffered_bytes=200_000),
    ) as (p0, p1):
        with pytest.raises(PartyError, match="buffer budget of 200000 bytes"):
            p0.send("p1", "j", 0, [np.zeros(40_000)])  # 320 kB in 5 chunks
        p0.send("p1", "j", 1, [np.arange(3)])  # the next message on the same stream
        assert p1.recv("p0", "j", 1).tensors[0].tolist() == [0, 1, 2]
        assert p1.budget.used == 0


def test_jobs_run_concurrently_and_apart(pair):
    p0, p1 = pair

    def run(job, side, peer, value):
        out = []
        for round_ in range(20):
            inbox = side.exchange(job, round_, {peer: [np.array([value + round_])]}, [peer])
            out.append(int(inbox[peer].tensors[0][0]))
        return out

    with ThreadPoolExecutor(6) as pool:
        futures = {
            job: (
                pool.submit(run, job, p0, "p1", 100 * i),
                pool.submit(run, job, p1, "p0", 100 * i + 50),
            )
            for i, job in enumerate(["a", "b", "c"])
        }
        for i, (on_p0, on_p1) in enumerate(futures.values()):
            assert on_p0.result(10) == [100 * i + 50 + r for r in range(20)]
            assert on_p1.result(10) == [100 * i + r for r in range(20)]


def test_abort_tells_the_peers_and_other_jobs_go_on(pair):
    p0, p1 = pair
    errors = []
    waiter = threading.Thread(target=lambda: _catch(errors, p1.recv, "p0", "doomed", 0, timeout=5))
    waiter.start()
    time.sleep(0.1)
    start = time.monotonic()
    p0.abort("doomed", "p2 died", peers=["p1"])
    waiter.join(3)
    assert time.monotonic() - start < 2.0
    assert "aborted by 'p0'" in str(errors[0]) and "p2 died" in str(errors[0])
    p0.send("p1", "fine", 0, [np.zeros(1)])
    assert p1.recv("p0", "fine", 0).tensors[0].shape == (1,)


def _catch(errors, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except PartyError as error:
        errors.append(error)


# ----------------------------------------------------------------------------- calls


def test_calls_return_replies_and_handlers_see_the_authenticated_caller(pair):
    p0, p1 = pair
    p1.register(
        "whoami",
        lambda request: Reply([request.tensors[0] * 2], {"peer": request.peer, "job": request.job}),
    )
    reply = p0.call("p1", "whoami", [np.arange(3)], job="j9")
    np.testing.assert_array_equal(reply.tensors[0], [0, 2, 4])
    assert reply.meta == {"peer": "p0", "job": "j9"}


def test_handler_errors_come_back_typed_with_the_remote_message(pair):
    p0, p1 = pair

    def over_budget(request):
        raise PrivacyBudgetExceededError("epsilon 3.2 would exceed the owner's 3.0")

    def broken(request):
        raise KeyError("no such column")

    p1.register("train", over_budget)
    p1.register("broken", broken)
    with pytest.raises(
        PrivacyBudgetExceededError, match=r"Peer 'p1' \(call 'train'\): epsilon 3.2"
    ):
        p0.call("p1", "train")
    with pytest.raises(RemoteCallError, match=r"raised KeyError in call 'broken'.*no such column"):
        p0.call("p1", "broken")
    with pytest.raises(
        RemoteCallError, match=r"one of \['broken', 'train'\]. Received: method='nope'"
    ):
        p0.call("p1", "nope")
    p1.register("bad reply", lambda request: 42)
    with pytest.raises(RemoteCallError, match="return a Reply or None"):
        p0.call("p1", "bad reply")


def test_a_slow_handler_hits_the_callers_deadline_not_a_hang(pair):
    p0, p1 = pair
    p1.register("slow", lambda request: time.sleep(1.0))
    start = time.monotonic()
    with pytest.raises(PartyError, match=r"did not answer call 'slow' within 0.3 s"):
        p0.call("p1", "slow", timeout=0.3)
    assert time.monotonic() - start < 1.0


def test_busy_nodes_say_so(certs, creds, start):
    with start(
        Node("p0", credentials=creds("p0")),
        Node("p1", credentials=creds("p1"), max_concurrent_calls=1),
    ) as (p0, p1):
        p1.register("slow", lambda request: time.sleep(0.5))
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(p0.call, "p1", "slow")
            time.sleep(0.2)
            with pytest.raises(PartyError, match="busy"):
                p0.call("p1", "slow")
            first.result(5)


def test_health_checks_report_serving(pair):
    p0, _ = pair
    assert p0.health("p1") == "SERVING"
    p0.wait_healthy(["p1"], timeout=2)


# ----------------------------------------------------------------------------- authentication


def test_a_peer_with_a_certificate_from_another_ca_is_refused(pair, rogue_certs, creds):
    p0, p1 = pair
    rogue = Client("driver", {"p1": p1.address}, credentials=creds("driver", folder=rogue_certs))
    start = time.monotonic()
    with pytest.raises(AuthenticationError, match="TLS handshake failed"):
        rogue.call("p1", "anything", timeout=5)
    with pytest.raises(AuthenticationError):
        rogue.send("p1", "j", 0, [np.zeros(1)], timeout=5)
    assert time.monotonic() - start < 4.0
    rogue.close()
    p0.send("p1", "j", 0, [np.zeros(1)])  # the others go on
    assert p1.recv("p0", "j", 0).tensors[0].shape == (1,)


def test_a_client_certificate_from_another_ca_is_refused_fast(pair, certs, rogue_certs):
    from privkeras.net.credentials import Credentials, tls_refusal

    _, p1 = pair
    foreign = Credentials(
        ca_cert=(certs / "ca.pem").read_bytes(),  # trusts the cluster's servers
        cert_chain=(rogue_certs / "driver.pem").read_bytes(),  # but is signed by another CA
        private_key=(rogue_certs / "driver.key").read_bytes(),
        identity="driver",
    )
    intruder = Client("driver", {"p1": p1.address}, credentials=foreign)
    start = time.monotonic()
    with pytest.raises(AuthenticationError, match="refused our certificate"):
        intruder.call("p1", "x", timeout=10)
    assert time.monotonic() - start < 3.0
    intruder.close()
    good = Credentials.mutual_tls(certs / "ca.pem", certs / "driver.pem", certs / "driver.key")
    assert tls_refusal(p1.address, "p1", good) is None  # the probe does not accuse good peers
    assert tls_refusal(p1.address, "p1", foreign) is not None


def test_a_server_with_another_name_is_refused(pair, creds):
    p0, _p1 = pair
    confused = Client("driver", {"p1": p0.address}, credentials=creds("driver"))  # p0 answers as p1
    with pytest.raises(AuthenticationError, match="TLS handshake failed"):
        confused.call("p1", "x", timeout=5)
    confused.close()


def test_a_peer_claiming_another_name_than_its_certificate_is_refused(pair, creds, caplog):
    _p0, p1 = pair
    liar = Client("p2", {"p1": p1.address}, credentials=creds("p2"))
    forged = wire.encode(wire.Frame(wire.MESSAGE, "j", 0, "p0", "p1", "", {}, [np.zeros(1)]))[0]
    with caplog.at_level("WARNING", "privkeras.net"), pytest.raises(grpc.RpcError) as refused:
        liar._stubs_for("p1").deliver(forged, timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate's own name ['p2']" in refused.value.details()
    assert "sender='p0'" in caplog.text
    liar.close()
    with pytest.raises(PartyError, match="before the deadline"):
        p1.recv("p0", "j", 0, timeout=0.2)


def test_a_client_must_use_its_own_certificate(creds):
    with pytest.raises(
        AuthenticationError, match=r"certificate of 'p0'. Received: a certificate for 'p1'"
    ):
        Client("p0", credentials=creds("p1"))


def test_token_authentication(certs, creds, start):
    token = (certs / "token").read_text()
    with start(
        Node("p0", credentials=creds("p0", "token")), Node("p1", credentials=creds("p1", "token"))
    ) as (p0, p1):
        p0.send("p1", "j", 0, [np.arange(2)])
        np.testing.assert_array_equal(p1.recv("p0", "j", 0).tensors[0], [0, 1])
        p1.register("echo", lambda request: Reply(request.tensors))
        client = Client("driver", {"p1": p1.address}, credentials=creds("driver", "token"))
        assert client.call("p1", "echo", [np.ones(1)]).tensors[0][0] == 1
        wrong = Client(
            "driver", {"p1": p1.address}, credentials=creds("driver", "token", token="w" * 32)
        )
        with pytest.raises(AuthenticationError, match="missing or wrong token"):
            wrong.call("p1", "echo")
        with pytest.raises(AuthenticationError, match="missing or wrong token"):
            wrong.send("p1", "j", 1, [np.ones(1)])
        assert token.strip() not in repr(wrong.credentials)
        for c in (client, wrong):
            c.close()


def test_insecure_nodes_work_and_warn(creds, start):
    with pytest.warns(InsecureTransportWarning, match="INSECURE"):
        nodes = (
            Node("p0", credentials=creds("p0", "insecure")),
            Node("p1", credentials=creds("p1", "insecure")),
        )
    with start(*nodes) as (p0, p1):
        p0.send("p1", "j", 0, [np.arange(2)])
        assert p1.recv("p0", "j", 0).tensors[0].tolist() == [0, 1]


def test_allowed_peers_refuse_everyone_else(certs, creds, start):
    with start(
        Node("p0", credentials=creds("p0")),
        Node("p1", credentials=creds("p1"), allowed_peers=["driver"]),
    ) as (p0, p1):
        p1.register("echo", lambda request: Reply())
        with pytest.raises(
            AuthenticationError, match=r"sender in \['driver'\]. Received: sender='p0'"
        ):
            p0.call("p1", "echo")


# ----------------------------------------------------------------------------- addresses and life cycle


def test_listening_on_every_interface_is_refused(creds):
    for address in ("0.0.0.0:7100", "[::]:7100", ":7100"):
        with pytest.raises(PartyError, match="specific host"):
            Node("p0", listen=address, credentials=creds("p0"))
    with pytest.raises(PartyError, match="'host:port'"):
        Node("p0", listen="localhost", credentials=creds("p0"))


def test_a_port_in_use_is_a_clear_error_before_serving(pair, creds):
    p0, _ = pair
    with pytest.raises(PartyError, match=f"free address to listen on.*{p0.address}.*in use"):
        Node("p2", listen=p0.address, credentials=creds("p2")).start()


def test_an_unreachable_peer_is_a_party_error_within_the_deadline(creds):
    client = Client("driver", {"p1": "127.0.0.1:1"}, credentials=creds("driver"))
    start = time.monotonic()
    with pytest.raises(PartyError, match=r"'p1' at 127.0.0.1:1"):
        client.send("p1", "j", 0, [np.zeros(1)], timeout=0.5)
    with pytest.raises(PartyError, match="'p1'"):
        client.call("p1", "x", timeout=0.5)
    assert time.monotonic() - start < 3.0
    with pytest.raises(PartyError, match=r"peer 'p7' in the cluster map"):
        client.send("p7", "j", 0, [np.zeros(1)])
    client.close()


def test_a_peer_started_late_is_reached_by_retrying(creds, start):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with start(Node("p0", credentials=creds("p0"))) as (p0,):
        p0.peers.add("p1", f"127.0.0.1:{port}")
        pending = p0.send_async("p1", "j", 0, [np.arange(3)], timeout=10)
        time.sleep(0.3)
        with start(Node("p1", listen=f"127.0.0.1:{port}", credentials=creds("p1"))) as (p1,):
            pending.result()
            assert p1.recv("p0", "j", 0).tensors[0].tolist() == [0, 1, 2]


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones(pair, creds):
    p0, p1 = pair
    p1.register("slow", lambda request: (time.sleep(0.5), Reply(meta={"done": True}))[1])
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(p0.call, "p1", "slow")
        time.sleep(0.2)
        p1.stop(grace=3.0)
        assert in_flight.result(5).meta == {"done": True}
    with pytest.raises(PartyError):
        p0.call("p1", "slow", timeout=1.0)


def test_serve_forever_stops_when_its_parent_is_gone(creds):
    node = Node("p0", credentials=creds("p0"))
    start = time.monotonic()
    node.serve_forever(grace=0.5, parent_pid=-1)  # not our parent: as if it had died
    assert time.monotonic() - start < 3.0
    assert node._stopped.is_set()


def test_messages_still_flow_when_the_peer_serves_no_message_streams(certs, creds, start):
    with start(
        Node("p0", credentials=creds("p0")),
        Node("p1", credentials=creds("p1"), max_message_streams=0),
    ) as (p0, p1):
        for round_ in range(3):
            p0.send("p1", "j", round_, [np.array([round_])])
        assert [int(p1.recv("p0", "j", r).tensors[0][0]) for r in range(3)] == [0, 1, 2]


# ----------------------------------------------------------------------------- bad bytes on a live socket


def test_fuzzed_frames_over_the_socket_never_crash_the_node(pair, caplog):
    import random

    p0, p1 = pair
    p1.register("echo", lambda request: Reply(request.tensors))
    stubs = p0._stubs_for("p1")
    rng = random.Random(7)
    valid = wire.encode(wire.Frame(wire.MESSAGE, "fuzz", 0, "p0", "p1", "", {}, [np.arange(8)]))[0]
    codes = set()
    with caplog.at_level("ERROR"):
        for i in range(200):
            data = bytearray(valid)
            if i % 3 == 0:
                data = bytearray(rng.randbytes(rng.randint(0, 120)))
            elif i % 3 == 1:
                del data[rng.randrange(len(data)) :]
            else:
                for _ in range(4):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            method = [stubs.deliver, stubs.call][i % 2]
            try:
                method(bytes(data), timeout=5)
            except grpc.RpcError as error:
                codes.add(error.code())
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    assert grpc.StatusCode.UNKNOWN not in codes and grpc.StatusCode.INTERNAL not in codes
    with pytest.raises(WireError, match="malformed message"):  # the sender learns why
        _deliver_raw(stubs, b"PKC1" + bytes(30))
    got = p0.call("p1", "echo", [np.arange(3)])  # still serving
    assert got.tensors[0].tolist() == [0, 1, 2]
    p0.send("p1", "after", 0, [np.ones(2)])
    assert p1.recv("p0", "after", 0).tensors[0].tolist() == [1.0, 1.0]


def _deliver_raw(stubs, data):
    from privkeras.net.client import rpc_error

    try:
        stubs.deliver(data, timeout=5)
    except grpc.RpcError as error:
        raise rpc_error(error, "p1", "raw delivery", 5.0) from None
