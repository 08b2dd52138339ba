"""`privkeras net-echo`: a node that only talks, for transport tests and benchmarks.

Hidden from `privkeras --help`. It serves these methods:

- `echo`: returns the request's tensors and metadata.
- `fail`: raises the error named by `meta["error"]` ("value" -> ValueError,
  "budget" -> PrivacyBudgetExceededError) with `meta["message"]`.
- `sleep`: sleeps `meta["seconds"]` (at most 60), then answers.
- `mirror`: for rounds 0..`meta["rounds"]`-1 of `meta["job"]`, receives a
  message from `meta["peer"]` and sends it back (a ping-pong partner).
- `ping`: the other side: sends `meta["bytes"]` of int64 zeros to
  `meta["peer"]` and waits for them back, per round; returns the round times.
- `sink`: receives rounds 0..`meta["rounds"]`-1 of `meta["job"]` from
  `meta["peer"]` and answers with the bytes received (one-way throughput).

Example:

    privkeras net-echo --name p1 --listen 127.0.0.1:0 --certs certs --cluster cluster.json
"""

from __future__ import annotations

import argparse
import time

from privkeras.net import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("net-echo", description=__doc__)  # no help=: hidden from the list
    parser.add_argument("--name", required=True, help="this node's peer name")
    options.add_transport_arguments(parser)
    parser.set_defaults(run=lambda args: options.run_command(run, args))


def run(args: argparse.Namespace) -> int:
    node = options.node_from_args(args, name=args.name)
    register_methods(node)
    return options.serve(args, node)


def register_methods(node) -> None:
    """Registers echo, fail, sleep, mirror, ping and sink on `node`."""
    import numpy as np

    from privkeras import errors
    from privkeras.net.client import Reply

    def echo(request):
        return Reply(request.tensors, request.meta)

    def fail(request):
        kinds = {"value": ValueError, "budget": errors.PrivacyBudgetExceededError}
        raise kinds[request.meta.get("error", "value")](request.meta.get("message", "failed"))

    def sleep(request):
        deadline = time.monotonic() + min(float(request.meta.get("seconds", 0)), 60.0)
        while time.monotonic() < deadline and request.is_active():
            time.sleep(0.01)
        return Reply(meta={"slept": True})

    def mirror(request):
        peer, job, timeout = request.meta["peer"], request.meta["job"], request.meta.get("timeout")
        for round_ in range(int(request.meta["rounds"])):
            frame = node.recv(peer, job, round_, timeout=timeout, step="mirror")
            node.send(peer, job, round_, frame.tensors, frame.meta, timeout=timeout)
        node.close_job(job)
        return Reply(meta={"rounds": int(request.meta["rounds"])})

    def ping(request):
        peer, job, timeout = request.meta["peer"], request.meta["job"], request.meta.get("timeout")
        payload = np.zeros(int(request.meta.get("bytes", 8)) // 8, np.int64)
        seconds = []
        for round_ in range(int(request.meta["rounds"])):
            start = time.perf_counter()
            node.exchange(job, round_, {peer: [payload]}, [peer], timeout=timeout, step="ping")
            seconds.append(time.perf_counter() - start)
        node.close_job(job)
        return Reply([np.asarray(seconds)], {"rounds": len(seconds)})

    def sink(request):
        peer, job, timeout = request.meta["peer"], request.meta["job"], request.meta.get("timeout")
        received = 0
        for round_ in range(int(request.meta["rounds"])):
            received += node.recv(peer, job, round_, timeout=timeout, step="sink").nbytes
        node.close_job(job)
        return Reply(meta={"bytes": received})

    methods = {
        "echo": echo,
        "fail": fail,
        "sleep": sleep,
        "mirror": mirror,
        "ping": ping,
        "sink": sink,
    }
    for name, handler in methods.items():
        node.register(name, handler)
