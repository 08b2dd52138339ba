"""`privkeras certs DIR --parties p0,p1,dealer`: a development CA and a certificate per party.

Development only: the keys are made on this machine, unencrypted, and the CA
key stays next to the certificates it signed. See docs/deployment.md for
what to do across organisations.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
writes DIR/ca.pem, DIR/ca.key, DIR/NAME.pem and DIR/NAME.key for every party and
the driver, and DIR/token (a random shared token for token authentication).
Each certificate's CN and DNS name is the party's name: a party proves it is
'p0' by presenting DIR/p0.pem. Keys are written with mode 0600.

DEVELOPMENT ONLY: one machine makes every key and keeps the CA key; use your
organisation's CA (one certificate per party name) for real deployments.

example:
  privkeras certs certs --parties p0,p1,dealer
  privkeras party --id p0 --listen 127.0.0.1:7100 --cluster cluster.json --certs certs
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "certs",
        help="make a development CA and one certificate + key per party (development only)",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "directory", metavar="DIR", help="folder to write into (created if missing)"
    )
    parser.add_argument(
        "--parties",
        required=True,
        metavar="NAMES",
        help="comma-separated party names (p0,p1,dealer for pond; p0,p1,p2 for aby3; workers...)",
    )
    parser.add_argument(
        "--driver",
        default="driver",
        metavar="NAME",
        help="name of the driver's (model owner's) certificate (default: driver; '' for none)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    parser.add_argument("--force", action="store_true", help="replace certificates that exist")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from privkeras.errors import PrivkerasError
    from privkeras.net.certs import make_dev_certs

    names = [name.strip() for name in args.parties.split(",") if name.strip()]
    if args.driver and args.driver not in names:
        names.append(args.driver)
    try:
        written = make_dev_certs(args.directory, names, overwrite=args.force, valid_days=args.days)
    except (PrivkerasError, ValueError) as error:
        print(f"privkeras certs: error: {error}", file=sys.stderr)
        return 2
    print(f"development CA: {written['ca'].cert} (key {written['ca'].key})")
    for name in names:
        print(f"  {name:<12} {written[name].cert}  {written[name].key}")
    print(f"  shared token {written['ca'].cert.parent / 'token'}")
    print("DEVELOPMENT ONLY: every key was made here; see docs/deployment.md.")
    return 0
