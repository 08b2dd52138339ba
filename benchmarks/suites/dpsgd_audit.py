"""An empirical lower bound on the epsilon of privkeras's DP-SGD, beside the claim.

The audit trains the real engine (`PrivateSequential.fit` under
`DPSGD`) and tries to tell, from the weights, which canaries were in the
training set. It follows the membership-inference audits of Jagielski, Ullman
and Oprea (NeurIPS 2020) and Nasr et al. (IEEE S&P 2021) with the white-box
canaries that make them tight:

- The model is a zero-initialized `Embedding(K + 1, 1)` read as the
  prediction, trained with SGD(learning_rate=1) on the squared error.
  Canary j is the token j with target -1000: its gradient is
  `2 (w_j + 1000)` on row j only, always clipped to exactly C. A hundred
  fillers (token K, target 0) keep batches from being empty and touch row
  K only.
- Each canary is in the training set with probability 1/2, independently.
  Weight j sees canary j alone, so the K coordinates are K independent
  trials of "dataset D versus D plus one example" in one training run.
- The auditor sees every step's weights (DP-SGD protects all iterates) and
  scores canary j with the Neyman-Pearson log-likelihood ratio of its
  per-step updates `u_t = s_t + N(0, sigma^2)`, `s_t ~ Bernoulli(q)` under
  "in" and `s_t = 0` under "out".
- A first run chooses the threshold; a second, independent run measures
  TPR and FPR with Clopper-Pearson bounds at 95% joint confidence, and
  `epsilon_lower = ln((TPR_low - delta) / FPR_high)` (or the same with the
  roles of "in" and "out" swapped, whichever the first run preferred).

If the engine clipped, noised, sampled or accounted wrongly (too little noise,
a larger sampling rate, an optimistic accountant), the lower bound could
exceed the claimed epsilon; the suite fails if it does. The lower bound is
only as tight as the auditor's power: with K canaries no FPR below about
3/K is observable, which caps it at about ln(K / 6).

Each Keras backend runs in its own interpreter (`python -m
benchmarks.suites.dpsgd_audit --backend torch` prints its rows as JSON).
The seeds fix the canaries and Keras's initialization; the noise and the
Poisson batches are keyed from `os.urandom` at every run (the engine's
exactly rounded Gaussian mechanism on CPU), so each run audits fresh noise.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from benchmarks.rows import print_backend_rows, rows_per_keras_backend

SUITE = "dpsgd-audit"
BACKENDS = ("tensorflow", "torch")
DELTA = 1e-5
CONFIDENCE = 0.95
FILLERS = 100


def _clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    from scipy.stats import beta

    low = 0.0 if successes == 0 else beta.ppf(alpha, successes, trials - successes + 1)
    high = 1.0 if successes == trials else beta.ppf(1 - alpha, successes + 1, trials - successes)
    return float(low), float(high)


def _train(canaries: int, batch_fraction: float, epochs: int, target_epsilon: float, seed: int):
    """One audited training run. Returns (member mask, scores, privacy report)."""
    import keras

    import privkeras as pk

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    member = rng.random(canaries) < 0.5
    ids = np.concatenate([np.flatnonzero(member), np.full(FILLERS, canaries)])
    y = np.where(ids < canaries, -1000.0, 0.0).astype("float32")[:, None]
    model = pk.PrivateSequential(
        [
            keras.Input((1,), dtype="int32"),
            keras.layers.Embedding(canaries + 1, 1, embeddings_initializer="zeros"),
            keras.layers.Flatten(),
        ]
    )
    policy = pk.DPSGD(l2_norm_clip=1.0, target_epsilon=target_epsilon, delta=DELTA)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", privacy=policy)
    auditor = _auditor_class()(canaries)
    batch_size = max(1, round(batch_fraction * len(ids)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(
            ids[:, None].astype("int32"),
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            callbacks=[auditor],
        )
    return member, auditor.scores, model.privacy_report()


def _auditor_class():
    import keras

    class Auditor(keras.callbacks.Callback):
        """Scores each canary with the log-likelihood ratio of 'in', step by step.

        SGD(lr=1) moves weight j by `-(s_t C + N(0, (sigma C)^2)) / B` (C = 1), so
        `u_t = -B * update` is `s_t + N(0, sigma^2)` with `s_t ~ Bernoulli(q)` if
        canary j is in and `s_t = 0` if it is out.
        """

        def __init__(self, canaries: int):
            super().__init__()
            self.canaries = canaries
            self.scores = np.zeros(canaries)

        def on_train_begin(self, logs=None):
            report = self.model.privacy_report()
            self.q, self.sigma = report["sample_rate"], report["noise_multiplier"]
            self.batch = report["batch_size"]
            self.previous = self._weights()

        def _weights(self):
            return self.model.get_weights()[0][: self.canaries, 0].astype("float64")

        def on_train_batch_end(self, batch, logs=None):
            current = self._weights()
            u = -(current - self.previous) * self.batch
            self.previous = current
            step = (2.0 * u - 1.0) / (2.0 * self.sigma**2)
            if self.q < 1.0:
                step = np.logaddexp(math.log1p(-self.q), math.log(self.q) + step)
            self.scores += step

    return Auditor


def _epsilon_point(scores, member, threshold, direction) -> float:
    guess_in = scores >= threshold if direction > 0 else scores < threshold
    tpr = np.mean(guess_in[member])
    fpr = np.mean(guess_in[~member])
    return -math.inf if tpr <= DELTA or fpr == 0 else math.log((tpr - DELTA) / fpr)


def _choose_test(scores, member) -> tuple[float, int]:
    best = (-math.inf, 0.0, 1)
    for threshold in np.quantile(scores, np.linspace(0.05, 0.995, 200)):
        for direction in (1, -1):
            # Direction -1 flips the roles: "guess out" must be rare among members.
            flipped = ~member if direction < 0 else member
            value = _epsilon_point(
                scores if direction > 0 else -scores,
                flipped,
                threshold if direction > 0 else -threshold,
                1,
            )
            if value > best[0]:
                best = (value, float(threshold), direction)
    return best[1], best[2]


def _lower_bound(scores, member, threshold, direction) -> float:
    positive = member if direction > 0 else ~member
    guess = scores >= threshold if direction > 0 else scores < threshold
    alpha = (1 - CONFIDENCE) / 2
    tpr_low, _ = _clopper_pearson(int(guess[positive].sum()), int(positive.sum()), alpha)
    _, fpr_high = _clopper_pearson(int(guess[~positive].sum()), int((~positive).sum()), alpha)
    if tpr_low <= DELTA:
        return 0.0
    return max(0.0, math.log((tpr_low - DELTA) / fpr_high))


CASES = {
    # name: (batch fraction q, epochs, target epsilon)
    "full-batch (q=1, 4 steps), eps 2": (1.0, 4, 2.0),
    "full-batch (q=1, 4 steps), eps 8": (1.0, 4, 8.0),
    "poisson (q=0.05, 100 steps), eps 2": (0.05, 5, 2.0),
}


def audit_backend(quick: bool) -> list[dict]:
    """Rows for the Keras backend of this interpreter."""
    import keras

    from benchmarks.rows import row

    backend = keras.backend.backend()
    canaries = 50_000 if quick else 500_000
    rows = []
    for seed, (name, (fraction, epochs, target)) in enumerate(CASES.items()):
        member, scores, report = _train(canaries, fraction, epochs, target, 2 * seed)
        threshold, direction = _choose_test(scores, member)
        member, scores, report = _train(canaries, fraction, epochs, target, 2 * seed + 1)
        bound = _lower_bound(scores, member, threshold, direction)
        claimed = report["epsilon"]
        rows.append(
            row(
                SUITE,
                f"{backend}/{name}",
                "epsilon_lower_bound",
                bound,
                "epsilon",
                baseline=claimed,
                claimed_epsilon=claimed,
                delta=DELTA,
                canaries=canaries,
                steps=report["steps"],
                noise_multiplier=report["noise_multiplier"],
                confidence=CONFIDENCE,
                holds=bound <= claimed,
            )
        )
    return rows


def run(quick: bool) -> list[dict]:
    """Both backends, each in its own interpreter; fails if a lower bound exceeds its claim."""
    rows = rows_per_keras_backend("benchmarks.suites.dpsgd_audit", BACKENDS, quick)
    failures = [
        f"{r['case']}: lower bound {r['value']:.3f} > claimed {r['baseline']:.3f}"
        for r in rows
        if not r["holds"]
    ]
    if failures:
        raise AssertionError("DP-SGD audit failed: " + "; ".join(failures))
    return rows


if __name__ == "__main__":
    print_backend_rows(BACKENDS, audit_backend)
