"""SecretFlow-SPU side of the mpc-compare suite, run by its own interpreter (see mpc_compare.py).

Compiles the MLP once per protocol (SEMI2K with 2 parties, ABY3 with 3; ring
FM64; weights and inputs secret), runs the parties of SPU's in-process
simulator on threads (one compute thread each), prints "ready", then
answers each "run N" line on stdin with one JSON line of timings.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def _mlp(relu: bool):
    import jax

    def mlp(x, w0, b0, w1, b1, w2, b2):
        h = x @ w0 + b0
        h = jax.nn.relu(h) if relu else h
        h = h @ w1 + b1
        h = jax.nn.relu(h) if relu else h
        return h @ w2 + b2

    return mlp


def _runner(protocol: str, parties: int, relu: bool, args: list[np.ndarray]):
    import spu
    import spu.utils.frontend as spu_fe
    import spu.utils.simulation as spsim

    config = spu.RuntimeConfig(
        protocol=getattr(spu.ProtocolKind, protocol), field=spu.FieldType.FM64
    )
    simulator = spsim.Simulator(parties, config)
    fn = _mlp(relu)
    executable, _ = spu_fe.compile(
        spu_fe.Kind.JAX,
        fn,
        args,
        {},
        [f"in{i}" for i in range(len(args))],
        [spu.Visibility.VIS_SECRET] * len(args),  # weights and inputs secret
        lambda out: [f"out{i}" for i in range(len(out))],
    )
    return lambda: simulator(executable, *args)[0]


def main() -> None:
    data = np.load(sys.argv[1])
    args = [data["x"]] + [data[f"{p}{i}"] for i in range(3) for p in ("w", "b")]
    expected = {True: data["expected_relu"], False: data["expected_linear"]}
    runners, errors = {}, {}
    for protocol, parties in (("SEMI2K", 2), ("ABY3", 3)):
        for relu in (True, False):
            key = f"{protocol.lower()}/{'relu' if relu else 'linear'}"
            runners[key] = _runner(protocol, parties, relu, args)
            errors[key] = float(np.max(np.abs(np.asarray(runners[key]()) - expected[relu])))
    print("ready", flush=True)
    import spu

    for line in sys.stdin:
        count = int(line.split()[1])
        out = {}
        for key, run in runners.items():
            samples = []
            for _ in range(count):
                start = time.perf_counter()
                run()
                samples.append(time.perf_counter() - start)
            out[key] = samples
        out["errors"] = errors
        out["version"] = getattr(spu, "__version__", "?")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
