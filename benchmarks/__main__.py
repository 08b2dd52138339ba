"""The benchmark runner.

    python -m benchmarks                    # every suite
    python -m benchmarks kernels --quick    # one suite, small sizes
    python -m benchmarks --json out.json    # write rows as JSON

A suite named `dpsgd-audit` lives in `benchmarks/suites/dpsgd_audit.py`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

from benchmarks.rows import cpu

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SUITES_DIR = Path(__file__).parent / "suites"


def available_suites() -> list[str]:
    return sorted(
        info.name.replace("_", "-")
        for info in pkgutil.iter_modules([str(SUITES_DIR)])
        if not info.name.startswith("_")
    )


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    suites = available_suites()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"any of {suites} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", metavar="PATH", help="write the rows to PATH as JSON")
    args = parser.parse_args(argv)
    chosen = args.suites or suites
    unknown = [name for name in chosen if name not in suites]
    if unknown:
        parser.error(f"expected suites from {suites}. Received: {unknown}")

    rows = []
    for name in chosen:
        module = importlib.import_module(f"benchmarks.suites.{name.replace('-', '_')}")
        start = time.perf_counter()
        suite_rows = module.run(quick=args.quick)
        print(f"== {name} ({time.perf_counter() - start:.1f} s)")
        for r in suite_rows:
            print(
                f"  {r['case']:<40} {r['metric']:<22} {_format(r['value']):>12} {r['unit']:<8}"
                f" baseline {_format(r['baseline']):>10}  ratio {_format(r['ratio'])}"
            )
        rows.extend(suite_rows)
    if args.json:
        import keras

        meta = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "cpu": cpu(),
            "keras_backend": keras.backend.backend(),
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d"),
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
