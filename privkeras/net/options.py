"""Command-line flags every serving command shares (`party`, `worker`, `serve`, ...).

```python
from privkeras.net import options

def add_parser(sub):
    parser = sub.add_parser("party", help="...")
    parser.add_argument("--id", required=True)
    options.add_transport_arguments(parser)
    parser.set_defaults(run=run)

def run(args):
    node = options.node_from_args(args, name=args.id)   # every check before anything starts
    node.register("job", ...)
    return options.serve(args, node)                    # ready line/file, SIGTERM, exit code
```

This module imports nothing heavy at import time: `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "add_transport_arguments",
    "announce_ready",
    "configure_logging",
    "credentials_from_args",
    "node_from_args",
    "serve",
]

READY_PREFIX = "privkeras-ready "


def add_transport_arguments(
    parser: argparse.ArgumentParser, *, cluster: bool = True, listen: str = "127.0.0.1:0"
) -> None:
    """Adds --listen, --cluster, --certs, --ca, --cert, --key, --token-file, --insecure, --timeout."""
    group = parser.add_argument_group("transport and credentials (see docs/deployment.md)")
    group.add_argument(
        "--listen",
        default=listen,
        metavar="HOST:PORT",
        help=f"address to serve on; port 0 lets the OS pick (default {listen}); never 0.0.0.0",
    )
    if cluster:
        group.add_argument(
            "--cluster",
            metavar="FILE",
            help='JSON map of peer names to addresses: {"p1": "host:port"}',
        )
    group.add_argument(
        "--certs",
        metavar="DIR",
        help="a `privkeras certs` folder: --ca DIR/ca.pem --cert DIR/NAME.pem --key DIR/NAME.key",
    )
    group.add_argument("--ca", metavar="FILE", help="CA certificate every peer is checked against")
    group.add_argument("--cert", metavar="FILE", help="this process's certificate (mutual TLS)")
    group.add_argument("--key", metavar="FILE", help="this process's private key")
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help="shared token (or the PRIVKERAS_TOKEN variable); with --ca, token over TLS",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plain text, no TLS: for debugging on loopback only (warns)",
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="deadline of every network wait"
    )
    group.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)
    group.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    group.add_argument("--log-level", default="INFO", help=argparse.SUPPRESS)


def credentials_from_args(args: argparse.Namespace, name: str):
    """`Credentials` from the flags (raises `AuthenticationError` on unreadable files)."""
    from privkeras.net.credentials import Credentials

    ca, cert, key = args.ca, args.cert, args.key
    if args.certs:
        folder = Path(args.certs)
        ca = ca or folder / "ca.pem"
        cert = cert or folder / f"{name}.pem"
        key = key or folder / f"{name}.key"
    return Credentials.from_files(
        ca=ca, cert=cert, key=key, token_file=args.token_file, insecure=args.insecure
    )


def node_from_args(args: argparse.Namespace, name: str, **node_options: Any):
    """A `Node` from the flags; every check (address, cluster file, credentials) runs now.

    Raises:
        PartyError: A bad --listen address or an unreadable/invalid cluster file.
        AuthenticationError: Unreadable or invalid credentials.
    """
    from privkeras.net.cluster import ClusterMap
    from privkeras.net.node import Node

    peers = ClusterMap(getattr(args, "cluster", None))
    return Node(
        name,
        listen=args.listen,
        peers=peers,
        credentials=credentials_from_args(args, name),
        timeout=args.timeout,
        **node_options,
    )


def configure_logging(level: str = "INFO") -> None:
    """One log line per event on stderr: time, logger, level, message."""
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def announce_ready(args: argparse.Namespace, node) -> None:
    """Tells the world the node serves: a stdout line, and the ready file if asked.

    The ready file is written atomically (a parent polling it never reads half).
    """
    info = {"name": node.name, "address": node.address, "pid": os.getpid()}
    print(READY_PREFIX + json.dumps(info), flush=True)
    if getattr(args, "ready_file", None):
        path = Path(args.ready_file)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)


def serve(args: argparse.Namespace, node, *, grace: float = 5.0) -> int:
    """Starts `node`, announces it, serves until SIGTERM; returns the exit code."""
    node.start()
    announce_ready(args, node)
    node.serve_forever(grace=grace, parent_pid=getattr(args, "parent_pid", None))
    return 0


def run_command(run, args: argparse.Namespace) -> int:
    """Runs a serving command, turning privkeras errors into one line on stderr and exit 2."""
    from privkeras.errors import PrivkerasError

    configure_logging(getattr(args, "log_level", "INFO"))
    try:
        return int(run(args) or 0)
    except PrivkerasError as error:
        print(f"privkeras {args.command}: error: {error}", file=sys.stderr, flush=True)
        return 2
