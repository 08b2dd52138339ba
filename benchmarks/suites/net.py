"""The transport: ping-pong latency and throughput between two processes over TLS on loopback.

Rows:
- `ping-pong <size> privkeras.net mTLS`: one protocol round between this
  process (a `Node` named "driver") and a `privkeras net-echo` child: the
  driver's `exchange` sends `size` bytes of int64 to the child, whose
  `mirror` handler receives them (`recv`) and sends them back (`send`);
  median ms per round over every round of every block. `baseline` is a
  bare gRPC unary echo of the same bytes over the same kind of TLS channel
  to a bare gRPC server in another child process (no frames, no mailbox,
  no acks): what gRPC itself costs. Blocks of the two alternate.
- `throughput ping-pong <size>`: MB per second moved both ways in the
  ping-pong rows (2 x size / round), against the bare gRPC echo.
- `throughput one-way 16 MiB messages`: `send_async` of 16 MiB messages
  back to back (chunked) into the child's `sink`, MB/s; baseline: a bare
  gRPC client stream of the same bytes in 1 MiB messages.

Every process runs on the same 2-core box as the benchmark itself, and the
box is shared with other work: `load_1min_before` says how busy it was.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.rows import cpu, row

SUITE = "net"
SIZES = {"8 B": 8, "64 KiB": 64 << 10, "1 MiB": 1 << 20}

_RAW_SERVER = textwrap.dedent(
    """
    import sys, time, grpc
    from concurrent import futures
    certs = sys.argv[1]
    read = lambda name: open(f"{certs}/{name}", "rb").read()
    def echo(request, context):
        return request
    def drain(requests, context):
        return str(sum(len(r) for r in requests)).encode()
    handler = grpc.method_handlers_generic_handler("bench.Raw", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Drain": grpc.stream_unary_rpc_method_handler(drain),
    })
    size = 64 << 20
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[
        ("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)])
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(read("p1.key"), read("p1.pem"))], read("ca.pem"), require_client_auth=True)
    print(server.add_secure_port("127.0.0.1:0", credentials), flush=True)
    server.start()
    sys.stdin.read()
    """
)


class _RawEcho:
    """A bare gRPC echo server in a child process, and a channel to it."""

    def __init__(self, certs: Path):
        import grpc

        self.process = subprocess.Popen(
            [sys.executable, "-c", _RAW_SERVER, str(certs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        port = int(self.process.stdout.readline())
        read = lambda name: (certs / name).read_bytes()  # noqa: E731
        credentials = grpc.ssl_channel_credentials(
            read("ca.pem"), read("driver.key"), read("driver.pem")
        )
        size = 64 << 20
        self.channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            credentials,
            options=[
                ("grpc.ssl_target_name_override", "p1"),
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ],
        )
        self.echo = self.channel.unary_unary("/bench.Raw/Echo")
        self.drain = self.channel.stream_unary("/bench.Raw/Drain")

    def close(self) -> None:
        self.channel.close()
        self.process.stdin.close()
        self.process.kill()
        self.process.wait(10)


def _privkeras_block(node, size: int, rounds: int, job: str) -> list[float]:
    payload = np.zeros(size // 8, np.int64)
    mirror = {}
    thread = threading.Thread(
        target=lambda: mirror.update(
            reply=node.call(
                "p1", "mirror", (), {"peer": "driver", "job": job, "rounds": rounds}, timeout=300
            )
        )
    )
    thread.start()
    seconds = []
    for round_ in range(rounds):
        start = time.perf_counter()
        inbox = node.exchange(job, round_, {"p1": [payload]}, ["p1"], timeout=30)
        seconds.append(time.perf_counter() - start)
        if inbox["p1"].tensors[0].nbytes != payload.nbytes:
            raise RuntimeError("the mirror sent back another payload")
    thread.join(300)
    node.close_job(job)
    return seconds


def _raw_block(raw: _RawEcho, size: int, rounds: int) -> list[float]:
    payload = bytes(size)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        raw.echo(payload, timeout=30)
        seconds.append(time.perf_counter() - start)
    return seconds


def _one_way(node, raw: _RawEcho, total: int, message: int, job: str) -> tuple[float, float]:
    payload = np.zeros(message // 8, np.int64)
    count = total // message
    done = {}
    sink = threading.Thread(
        target=lambda: done.update(
            reply=node.call(
                "p1", "sink", (), {"peer": "driver", "job": job, "rounds": count}, timeout=300
            )
        )
    )
    start = time.perf_counter()
    sink.start()
    sends = [node.send_async("p1", job, r, [payload], timeout=120) for r in range(count)]
    for send in sends:
        send.result()
    sink.join(300)
    ours = total / (time.perf_counter() - start) / 1e6
    chunk = bytes(1 << 20)
    start = time.perf_counter()
    raw.drain(iter([chunk] * (total // len(chunk))), timeout=120)
    bare = total / (time.perf_counter() - start) / 1e6
    return ours, bare


def run(quick: bool = False) -> list[dict]:
    from privkeras.net.processes import LocalCluster

    blocks, rounds = (3, 50) if quick else (8, 250)
    big_rounds = max(10, rounds // 5)
    load = os.getloadavg()[0]
    common = {
        "cpu": cpu(),
        "cores": os.cpu_count(),
        "box": "shared with other work while measured",
        "load_1min_before": round(load, 2),
        "transport": "gRPC over TLS 1.3 on 127.0.0.1, mutual TLS with development certificates",
    }
    rows = []
    with (
        tempfile.TemporaryDirectory() as workdir,
        LocalCluster(["p1"], ["net-echo"], workdir=workdir) as cluster,
    ):
        node = cluster.node(timeout=30)
        raw = _RawEcho(cluster.certs_dir)
        try:
            for _ in range(20):  # warm both paths up
                _raw_block(raw, 8, 1)
            _privkeras_block(node, 8, 20, "warmup")
            for label, size in SIZES.items():
                n = big_rounds if size >= (1 << 20) else rounds
                ours, bare = [], []
                for block in range(blocks):
                    ours += _privkeras_block(node, size, n, f"pp-{size}-{block}")
                    bare += _raw_block(raw, size, n)
                median, baseline = statistics.median(ours), statistics.median(bare)
                rows.append(
                    row(
                        SUITE, f"ping-pong {label} privkeras.net mTLS", "round latency",
                        median * 1e3, "ms", baseline * 1e3,
                        rounds=len(ours), p90_ms=float(np.percentile(ours, 90) * 1e3),
                        baseline_what="bare gRPC unary echo of the same bytes, same TLS",
                        **common,
                    )
                )  # fmt: skip
                rows.append(
                    row(
                        SUITE, f"throughput ping-pong {label}", "both ways",
                        2 * size / median / 1e6, "MB/s", 2 * size / baseline / 1e6,
                        **common,
                    )
                )  # fmt: skip
            total = (64 if quick else 256) << 20
            ours, bare = _one_way(node, raw, total, 16 << 20, "one-way")
            rows.append(
                row(
                    SUITE, "throughput one-way 16 MiB messages", "send_async into sink",
                    ours, "MB/s", bare, total_bytes=total,
                    baseline_what="bare gRPC client stream of 1 MiB messages, same TLS",
                    **common,
                )
            )  # fmt: skip
        finally:
            raw.close()
            node.stop(grace=1.0)
    return rows
