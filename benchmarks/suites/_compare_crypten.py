"""CrypTen side of the mpc-compare suite, run by its own interpreter (see mpc_compare.py).

Reads the weights and inputs from the .npz named on the command line, encrypts
the weights once, prints "ready", then answers each "run N" line on stdin
with one JSON line: the seconds of N private inferences (input encrypted,
MLP with and without ReLU, output decrypted) and the largest error against
the plaintext MLP.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import crypten

    crypten.init()
    data = np.load(sys.argv[1])
    weights = [torch.from_numpy(data[f"w{i}"]).double().float() for i in range(3)]
    biases = [torch.from_numpy(data[f"b{i}"]).float() for i in range(3)]
    x = torch.from_numpy(data["x"]).float()
    expected = {True: data["expected_relu"], False: data["expected_linear"]}
    secret_w = [crypten.cryptensor(w) for w in weights]
    secret_b = [crypten.cryptensor(b) for b in biases]

    def infer(relu: bool) -> np.ndarray:
        h = crypten.cryptensor(x)
        for i in range(3):
            h = h.matmul(secret_w[i]) + secret_b[i]
            if relu and i < 2:
                h = h.relu()
        return h.get_plain_text().numpy()

    errors = {r: float(np.max(np.abs(infer(r) - expected[r]))) for r in (True, False)}
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line.split()[1])
        out = {}
        for relu in (True, False):
            samples = []
            for _ in range(count):
                start = time.perf_counter()
                infer(relu)
                samples.append(time.perf_counter() - start)
            out["relu" if relu else "linear"] = samples
        out["errors"] = {"relu": errors[True], "linear": errors[False]}
        out["version"] = getattr(crypten, "__version__", "0.4.1")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
