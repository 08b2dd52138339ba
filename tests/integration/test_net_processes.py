"""The transport between real processes on 127.0.0.1: `privkeras net-echo` children.

Every child is started by the test and stopped in `finally` (the clusters'
context managers), SIGKILLed ones included; each wait has a deadline.
"""

import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from privkeras.errors import AuthenticationError, PartyError
from privkeras.net import wire
from privkeras.net.certs import make_dev_certs
from privkeras.net.client import Client
from privkeras.net.credentials import Credentials
from privkeras.net.processes import LocalCluster, LocalProcesses

pytestmark = pytest.mark.slow

ECHO = ["net-echo"]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(["p0", "p1"], ECHO) as running:
        yield running


def _ping_pong(client, pinger, mirror, job, rounds, nbytes=8, timeout=5.0):
    """Runs `pinger.ping` against `mirror.mirror`; returns the ping reply."""
    with ThreadPoolExecutor(1) as pool:
        mirrored = pool.submit(
            client.call, mirror, "mirror", (), {"peer": pinger, "job": job, "rounds": rounds, "timeout": timeout},
            timeout=60,
        )  # fmt: skip
        reply = client.call(
            pinger, "ping", (), {"peer": mirror, "job": job, "rounds": rounds, "bytes": nbytes, "timeout": timeout},
            timeout=60,
        )  # fmt: skip
        assert mirrored.result(60).meta == {"rounds": rounds}
    return reply


def test_two_processes_ping_pong_over_mutual_tls(cluster):
    client = cluster.client()
    try:
        reply = _ping_pong(client, "p0", "p1", "job-1", rounds=50, nbytes=64 << 10)
        assert reply.meta == {"rounds": 50} and reply.tensors[0].shape == (50,)
        assert client.call("p0", "echo", [np.arange(5)], {"k": "v"}).meta == {"k": "v"}
    finally:
        client.close()


def test_the_driver_exchanges_with_a_child_bit_for_bit(cluster):
    node = cluster.node()
    try:
        values = np.random.default_rng(3).integers(-(2**63), 2**63 - 1, (64, 128), dtype=np.int64)
        with ThreadPoolExecutor(1) as pool:
            mirrored = pool.submit(
                node.call, "p1", "mirror", (), {"peer": "driver", "job": "bits", "rounds": 3}
            )
            for round_ in range(3):
                inbox = node.exchange("bits", round_, {"p1": [values, values > 0]}, ["p1"])
                np.testing.assert_array_equal(inbox["p1"].tensors[0], values)
                np.testing.assert_array_equal(inbox["p1"].tensors[1], values > 0)
            mirrored.result(30)
    finally:
        node.stop(grace=1.0)


def _foreign_certificate(cluster, tmp_path):
    """The driver's name, a certificate from another CA, and the cluster's CA to trust the server."""
    make_dev_certs(tmp_path, ["driver"])
    return Credentials(
        ca_cert=(cluster.certs_dir / "ca.pem").read_bytes(),
        cert_chain=(tmp_path / "driver.pem").read_bytes(),
        private_key=(tmp_path / "driver.key").read_bytes(),
        identity="driver",
    )


def test_a_certificate_from_another_ca_is_refused_logged_and_the_cluster_goes_on(cluster, tmp_path):
    intruder = Client(
        "driver", dict(cluster.addresses), credentials=_foreign_certificate(cluster, tmp_path)
    )
    start = time.monotonic()
    try:
        with pytest.raises(AuthenticationError, match="refused our certificate"):
            intruder.call("p0", "echo", timeout=10)
        with pytest.raises(AuthenticationError, match="refused our certificate"):
            intruder.send("p0", "j", 0, [np.zeros(1)], timeout=10)
    finally:
        intruder.close()
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while (
        "CERTIFICATE_VERIFY_FAILED" not in cluster.children["p0"].log_tail()
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert "Handshake failed" in cluster.children["p0"].log_tail()  # gRPC logs it on the server
    client = cluster.client()
    try:
        assert client.call("p0", "echo", [np.ones(2)]).tensors[0].tolist() == [1.0, 1.0]
    finally:
        client.close()


def test_a_server_outside_our_ca_is_refused(cluster, tmp_path):
    make_dev_certs(tmp_path, ["driver"])
    outsider = Client(
        "driver",
        dict(cluster.addresses),
        credentials=Credentials.mutual_tls(
            tmp_path / "ca.pem", tmp_path / "driver.pem", tmp_path / "driver.key"
        ),
    )
    try:
        with pytest.raises(AuthenticationError, match="TLS handshake failed"):
            outsider.call("p0", "echo", timeout=5)
    finally:
        outsider.close()


def test_an_impersonating_peer_is_refused_and_logged(cluster):
    liar = cluster.client("p1")  # p1's real certificate, claiming to be p0 below
    forged = wire.encode(wire.Frame(wire.MESSAGE, "j", 0, "p0", "p0", "", {}, [np.zeros(1)]))[0]
    try:
        with pytest.raises(grpc.RpcError) as refused:
            liar._stubs_for("p0").deliver(forged, timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        liar.close()
    assert "sender='p0'" in cluster.children["p0"].log_tail()


def test_token_authentication_between_processes():
    with LocalCluster(["p0", "p1"], ECHO, auth="token") as running:
        client = running.client()
        token = (running.certs_dir / "token").read_text()
        wrong = Client(
            "driver",
            dict(running.addresses),
            credentials=Credentials.token_tls("x" * 43, running.certs_dir / "ca.pem"),
        )
        try:
            assert _ping_pong(client, "p0", "p1", "t", rounds=5).meta == {"rounds": 5}
            with pytest.raises(AuthenticationError, match="missing or wrong token"):
                wrong.call("p0", "echo", timeout=5)
            assert "missing or wrong token" in running.children["p0"].log_tail()
            assert token.strip() not in running.children["p0"].log_tail()
        finally:
            client.close()
            wrong.close()


def test_a_peer_killed_mid_exchange_is_named_within_the_deadline_and_the_survivor_serves_on():
    timeout = 3.0
    with LocalCluster(["p0", "p1"], ECHO) as running:
        client = running.client()
        node = running.node()
        try:
            with ThreadPoolExecutor(2) as pool:
                meta = {"job": "long", "rounds": 100_000, "timeout": timeout}
                mirrored = pool.submit(
                    client.call, "p1", "mirror", (), {**meta, "peer": "p0"}, timeout=60
                )
                pinged = pool.submit(
                    client.call, "p0", "ping", (), {**meta, "peer": "p1"}, timeout=60
                )
                time.sleep(1.0)
                assert not pinged.done()
                killed_at = time.monotonic()
                running.children["p1"].kill()
                with pytest.raises(PartyError, match="'p1'") as failure:
                    pinged.result(timeout + 10)
                assert time.monotonic() - killed_at < timeout + 5
                assert "ping" in str(failure.value)  # the step
                with pytest.raises(PartyError):
                    mirrored.result(10)
            # the survivor serves the next job, with another partner
            assert client.call("p0", "echo", [np.arange(2)]).tensors[0].tolist() == [0, 1]
            with ThreadPoolExecutor(1) as pool:
                pinged = pool.submit(
                    client.call,
                    "p0",
                    "ping",
                    (),
                    {"peer": "driver", "job": "next", "rounds": 5, "timeout": 5},
                )
                for round_ in range(5):
                    frame = node.recv("p0", "next", round_, timeout=10)
                    node.send("p0", "next", round_, frame.tensors)
                assert pinged.result(30).meta == {"rounds": 5}
        finally:
            client.close()
            node.stop(grace=1.0)


def test_fuzzed_frames_over_a_live_socket_never_crash_a_child(cluster):
    client = cluster.client()
    rng = random.Random(2024)
    valid = wire.encode(
        wire.Frame(wire.MESSAGE, "fz", 0, "driver", "p0", "", {"a": 1}, [np.arange(16)])
    )
    valid_call = wire.encode(
        wire.Frame(wire.REQUEST, "", 0, "driver", "p0", "echo", {}, [np.arange(4)])
    )
    try:
        stubs = client._stubs_for("p0")
        codes = {}
        for i in range(300):
            data = bytearray((valid if i % 2 else valid_call)[0])
            kind = i % 4
            if kind == 0:
                data = bytearray(rng.randbytes(rng.randint(0, 300)))
            elif kind == 1:
                del data[rng.randrange(len(data)) :]
            elif kind == 2:
                for _ in range(rng.randint(1, 6)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                at = rng.randrange(len(data))
                data[at : at + 4] = b"\xff\xff\xff\xff"
            method = [stubs.deliver, stubs.call, stubs.call, stubs.deliver][i % 4]
            try:
                method(bytes(data), timeout=5)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as error:
                codes[error.code().name] = codes.get(error.code().name, 0) + 1
        for stream_of_garbage in (
            [b"x"],
            [valid[0][:30], b"PKC1" + bytes(40)],
            [rng.randbytes(50)] * 3,
        ):
            try:
                stubs.deliver_stream(iter(stream_of_garbage), timeout=5)
            except grpc.RpcError as error:
                codes[error.code().name] = codes.get(error.code().name, 0) + 1
        good = wire.encode(wire.Frame(wire.MESSAGE, "fz2", 0, "driver", "p0", "", {}, [np.ones(2)]))
        dup = wire.encode(wire.Frame(wire.MESSAGE, "fz2", 0, "driver", "p0", "", {}, [np.ones(2)]))
        acks = []
        with pytest.raises(grpc.RpcError) as ended:
            for ack in stubs.messages(
                iter([good[0], dup[0], rng.randbytes(40), good[0]]), timeout=5
            ):
                acks.append(ack)
        assert [(ack[:8], ack[8]) for ack in acks] == [
            (bytes(8), 0),
            ((1).to_bytes(8, "little"), 1),
        ]
        assert b"duplicated or replayed" in acks[1]
        assert (
            ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        )  # boundaries lost: stream ends
        assert codes.get("INVALID_ARGUMENT", 0) > 100
        assert "UNKNOWN" not in codes and "INTERNAL" not in codes
        assert cluster.children["p0"].alive()
        assert _ping_pong(client, "p0", "p1", "after-fuzz", rounds=10).meta == {"rounds": 10}
    finally:
        client.close()


def test_sigterm_lets_an_in_flight_call_finish_then_the_process_exits_cleanly():
    with LocalCluster(["p0"], ECHO) as running:
        client = running.client()
        try:
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(client.call, "p0", "sleep", (), {"seconds": 1.0}, timeout=10)
                time.sleep(0.3)
                running.children["p0"].popen.send_signal(signal.SIGTERM)
                assert slow.result(10).meta == {"slept": True}
            assert running.children["p0"].popen.wait(10) == 0
        finally:
            client.close()


@pytest.fixture
def processes(tmp_path):
    make_dev_certs(tmp_path / "certs", ["p0"])
    with LocalProcesses(tmp_path) as group:
        yield group


def _start_failure(processes, *flags):
    argv = [*ECHO, "--name", "p0", *flags]
    start = time.monotonic()
    with pytest.raises(PartyError) as failure:
        processes.start("p0", argv, ready_timeout=30)
    assert time.monotonic() - start < 30
    assert processes.children == {}
    return str(failure.value)


def test_startup_errors_are_clear_and_come_before_serving(processes, tmp_path):
    certs = ["--certs", str(tmp_path / "certs")]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        message = _start_failure(processes, "--listen", f"127.0.0.1:{port}", *certs)
        assert "exited with code 2" in message and "free address to listen on" in message
        assert "in use" in message
    finally:
        busy.close()
    message = _start_failure(
        processes,
        "--ca",
        str(tmp_path / "certs/ca.pem"),
        "--cert",
        "/nonexistent.pem",
        "--key",
        "k",
    )
    assert "readable file for cert" in message and "/nonexistent.pem" in message
    (tmp_path / "bad.json").write_text("{not json")
    assert "cluster file" in _start_failure(
        processes, *certs, "--cluster", str(tmp_path / "bad.json")
    )
    assert "explicit --insecure" in _start_failure(processes)
    assert "specific host" in _start_failure(processes, *certs, "--listen", "0.0.0.0:0")


def test_children_are_stopped_even_when_the_test_fails_inside():
    holder = {}
    with pytest.raises(RuntimeError, match="boom"), LocalCluster(["p0"], ECHO) as running:
        holder["child"] = running.children["p0"]
        raise RuntimeError("boom")
    assert not holder["child"].alive()


def test_parallel_jobs_between_processes_stay_apart(cluster):
    client = cluster.client()
    try:
        results = []
        threads = [
            threading.Thread(
                target=lambda j=j: results.append(_ping_pong(client, "p0", "p1", f"par-{j}", 20))
            )
            for j in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [r.meta for r in results] == [{"rounds": 20}] * 3
    finally:
        client.close()
