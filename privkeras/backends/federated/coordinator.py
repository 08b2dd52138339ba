"""The coordinator's rounds: sample, train, aggregate, add noise, step, account.

One round of `FederatedRound.run`:

1. Poisson sampling: each owner joins with probability `fraction_fit`,
   decided by the core's `SecureStream` (keyed from `os.urandom`).
2. The aggregator's `prepare` (setup messages for secure aggregation).
3. The cohort trains from the global weights (in parallel for remote
   owners, each call bounded by `timeout`); an owner that raises, refuses or
   does not answer in time is dropped; a restarted owner that lost the job
   is sent it again.
4. The aggregator sums the survivors' contributions. Fewer than
   `min(min_owners, cohort size)` survivors: `PartyError` naming the
   missing owners and why.
5. Client-level DP (DP-FedAvg, McMahan et al., "Learning Differentially
   Private Recurrent Language Models", ICLR 2018): owners clipped their
   updates to `clip_norm`; Gaussian noise of std `sigma * clip_norm` from
   `SecureStream` is added to the sum, which is divided by the expected
   cohort size `fraction_fit * n_owners` (the fixed-denominator estimator,
   so that the count of survivors is not released). Without DP: FedAvg's
   average weighted by example counts.
6. Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy,
   "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021):
   the noisy fraction of unclipped owners moves the clip norm
   geometrically towards the target quantile; the update noise and the
   indicator noise are split so that together they cost one Gaussian
   mechanism of the policy's noise multiplier.
7. The server optimizer steps; the ledger records the round: the
   coordinator's sampled Gaussian mechanism, or what the aggregator says the
   owners ran (`Aggregator.privacy_cost`: with secure aggregation and
   `dp="distributed"`, the distributed discrete Gaussian, in RDP).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from privkeras.backends.federated import accounting
from privkeras.backends.federated.aggregation import Aggregator, RoundContext
from privkeras.backends.federated.errors import UnknownJobError
from privkeras.backends.federated.protocol import JobSpec, OwnerProtocol, TrainResult
from privkeras.backends.federated.server_optimizers import ServerOptimizer
from privkeras.core.random import SecureStream
from privkeras.errors import PartyError

__all__ = [
    "ClientDP",
    "CohortRunner",
    "FederatedRound",
    "RoundOutcome",
    "reason",
    "weighted_logs",
]

#: Extra seconds the coordinator waits past an owner's timeout before it stops
#: waiting (the transport itself gives up at the timeout).
_GRACE_SECONDS = 2.0


def reason(error: BaseException) -> str:
    """`"TypeName: message"` of an owner's failure."""
    return f"{type(error).__name__}: {error}"


class CohortRunner:
    """Sends one request to many owners and collects the answers within a deadline.

    Remote owners (`concurrent`) are called in parallel threads; in-process
    owners one after another in the caller's thread. `on_answer(name)` runs
    in the caller's thread as each answer arrives (for the progress bar).

    Args:
        timeout: Seconds each owner has for the request.
        max_workers: Threads for remote owners.
    """

    def __init__(self, timeout: float, max_workers: int = 32):
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="privkeras-owner"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def call(
        self,
        owners: dict[str, OwnerProtocol],
        request: Callable[[OwnerProtocol], Any],
        on_answer: Callable[[str], None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Exception]]:
        """`request(owner)` for each owner: (answers by name, errors by name)."""
        answers: dict[str, Any] = {}
        failures: dict[str, Exception] = {}
        futures = {
            self._pool.submit(request, owner): name
            for name, owner in owners.items()
            if owner.concurrent
        }
        for name, owner in owners.items():
            if owner.concurrent:
                continue
            start = time.monotonic()
            try:
                answer = request(owner)
            except Exception as error:  # a failing owner is dropped, not fatal
                failures[name] = error
                continue
            elapsed = time.monotonic() - start
            if elapsed > self.timeout:  # in-process calls cannot be cut short: discard late answers
                failures[name] = PartyError(
                    f"Owner {name!r} answered after {elapsed:.2f} s, past the timeout of "
                    f"{self.timeout:g} s."
                )
                continue
            answers[name] = answer
            if on_answer:
                on_answer(name)
        deadline = time.monotonic() + self.timeout + _GRACE_SECONDS
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            if not done:
                break
            for future in done:
                name = futures[future]
                error = future.exception()
                if error is None:
                    answers[name] = future.result()
                    if on_answer:
                        on_answer(name)
                else:
                    failures[name] = error
        for future in pending:
            future.cancel()
            name = futures[future]
            failures[name] = PartyError(f"Owner {name!r} gave no answer within {self.timeout:g} s.")
        return answers, failures


@dataclasses.dataclass
class ClientDP:
    """Client-level DP settings resolved for a fit.

    Attributes:
        clip_norm: The current clip norm (it moves with adaptive clipping).
        noise_multiplier: The accounted noise multiplier z of a round.
        expected_cohort: `fraction_fit * n_owners`, the fixed denominator.
        update_noise: Multiplier of the noise on the update sum (z, or
            Andrew et al.'s sigma_delta with adaptive clipping).
        indicator_noise: Std of the noise on the clipped-indicator sum (sigma_b).
        adaptive: Whether the clip norm adapts.
    """

    clip_norm: float
    noise_multiplier: float
    expected_cohort: float
    update_noise: float
    indicator_noise: float = 0.0
    adaptive: bool = False

    #: Andrew et al.'s defaults: target quantile gamma, clip learning rate eta_C.
    TARGET_QUANTILE = 0.5
    CLIP_LEARNING_RATE = 0.2

    @classmethod
    def resolve(cls, clip_norm: float, noise: float, expected: float, adaptive: bool) -> ClientDP:
        """Splits the noise between update and indicator (Andrew et al., Section 3.1).

        With centred indicators (sensitivity 1/2) and indicator noise sigma_b,
        the update noise sigma_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) makes the
        pair cost exactly one Gaussian mechanism of multiplier z. sigma_b is
        the paper's `expected / 20`, raised to z when that is too small
        (which keeps sigma_delta = z / sqrt(3/4) at most 1.155 z).
        """
        if not adaptive or noise == 0:
            return cls(clip_norm, noise, expected, noise, 0.0, adaptive)
        indicator = max(expected / 20.0, noise)
        update = (noise**-2 - (2 * indicator) ** -2) ** -0.5
        return cls(clip_norm, noise, expected, update, indicator, adaptive)

    def adapt(self, indicator_sum: float, count: float) -> None:
        """`C <- C exp(-eta_C (b - gamma))`, b the (noisy) fraction of unclipped owners.

        `indicator_sum` sums the centred indicators (unclipped - 1/2) of `count` owners.
        """
        if count <= 0:
            return
        unclipped = indicator_sum / count + 0.5
        self.clip_norm *= math.exp(-self.CLIP_LEARNING_RATE * (unclipped - self.TARGET_QUANTILE))


@dataclasses.dataclass
class RoundOutcome:
    """What a round produced: next weights, logs, who answered, who was dropped."""

    weights: np.ndarray
    logs: dict[str, float]
    cohort: list[str]
    survivors: list[str]
    dropped: dict[str, str]
    seconds: float
    bytes_down: dict[str, int]
    bytes_up: dict[str, int]
    record_epsilon: dict[str, float] = dataclasses.field(default_factory=dict)
    aggregation: dict[str, Any] = dataclasses.field(default_factory=dict)


def weighted_logs(results: dict[str, Any]) -> dict[str, float]:
    """Owners' metrics averaged with weights their example counts (loss first)."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for result in results.values():
        for name, value in result.metrics.items():
            if math.isfinite(value):
                totals[name] = totals.get(name, 0.0) + result.n_examples * value
                weights[name] = weights.get(name, 0.0) + result.n_examples
    logs = {name: totals[name] / weights[name] for name in totals}
    if "loss" in logs:
        logs = {"loss": logs.pop("loss"), **logs}
    return logs


class FederatedRound:
    """Runs rounds of one fit (see the module docstring for the steps).

    Args:
        job: The job the owners were configured with.
        owners: The owners, by name.
        runner: Calls owners within the deadline.
        aggregator: Sums contributions.
        server_optimizer: Applies the averaged update.
        fraction_fit: Poisson sampling rate.
        min_owners: Survivors a round needs (capped at the cohort size).
        client_dp: Client-level DP settings, or None.
        ledger: Client-level ledger (recorded each DP round).
        dp: `"central"` or `"distributed"`.
    """

    def __init__(
        self,
        job: JobSpec,
        owners: dict[str, OwnerProtocol],
        runner: CohortRunner,
        aggregator: Aggregator,
        server_optimizer: ServerOptimizer,
        fraction_fit: float,
        min_owners: int,
        client_dp: ClientDP | None,
        ledger: accounting.RoundLedger,
        dp: str = "central",
    ):
        self.job = job
        self.owners = owners
        self.runner = runner
        self.aggregator = aggregator
        self.server_optimizer = server_optimizer
        self.fraction_fit = fraction_fit
        self.min_owners = min_owners
        self.client_dp = client_dp
        self.ledger = ledger
        self.dp = dp
        self.rounds_run = 0  # rounds of this job (an owner accounts its job's rounds)
        self._stream = SecureStream()

    def sample(self) -> list[str]:
        """Poisson sampling: each owner independently with probability `fraction_fit`."""
        names = list(self.owners)
        if self.fraction_fit >= 1.0:
            return names
        draws = self._stream.uniform(len(names))
        return [name for name, u in zip(names, draws) if u < self.fraction_fit]

    def _train_request(self, round_index: int, weights: np.ndarray, extra: dict[str, dict]):
        fields = {"client_rounds": self.rounds_run + 1}
        if self.client_dp is not None:
            fields["clip_norm"] = self.client_dp.clip_norm

        def train(owner: OwnerProtocol) -> TrainResult:
            request = {**fields, **extra.get(owner.name, {})}
            try:
                return owner.train(
                    self.job.job_id, round_index, weights, request, self.runner.timeout
                )
            except UnknownJobError:  # a restarted owner: send it the job again
                owner.configure(self.job, self.runner.timeout)
                return owner.train(
                    self.job.job_id, round_index, weights, request, self.runner.timeout
                )

        return train

    def run(
        self,
        round_index: int,
        weights: np.ndarray,
        cohort: list[str],
        on_answer: Callable[[str], None] | None = None,
    ) -> RoundOutcome:
        """One round from `weights` with the sampled `cohort`."""
        start = time.monotonic()
        before = {name: self.owners[name].traffic() for name in cohort}
        size = weights.size + 1 + (1 if self.client_dp and self.client_dp.adaptive else 0)
        context = RoundContext(
            job_id=self.job.job_id,
            round_index=round_index,
            cohort={name: self.owners[name] for name in cohort},
            vector_size=size,
            min_answers=min(self.min_owners, len(cohort)),
            timeout=self.runner.timeout,
            dp=self.dp,
            noise_std=self._noise_std(),
            call_cohort=lambda names, request: self.runner.call(
                {n: self.owners[n] for n in names}, request
            ),
            job=self.job,
            update_size=weights.size,
            clip_norm=None if self.client_dp is None else self.client_dp.clip_norm,
            noise_multiplier=0.0 if self.client_dp is None else self.client_dp.noise_multiplier,
            sampling_rate=self.fraction_fit,
        )
        extra = self.aggregator.prepare(context) if cohort else {}
        asked = {n: self.owners[n] for n in cohort if n not in context.dropped}
        results, failures = self.runner.call(
            asked, self._train_request(round_index, weights, extra), on_answer
        )
        for name, error in failures.items():
            context.drop(name, reason(error))
        context.require(len(results), "training")
        payloads = {name: r.payload for name, r in results.items() if name not in context.dropped}
        total = self.aggregator.sum(context, payloads) if payloads else np.zeros(size)
        if context.summed is not None:  # the aggregator says whose contributions are in the sum
            summed = set(context.summed)
            survivors = [name for name in results if name in summed]
        else:
            survivors = [name for name in results if name not in context.dropped]
        context.require(len(survivors), "aggregation")
        new_weights = self._step(weights, total, survivors, context)
        self.rounds_run += 1
        logs = weighted_logs({name: results[name] for name in survivors})
        after = {name: self.owners[name].traffic() for name in cohort}
        return RoundOutcome(
            weights=new_weights,
            logs=logs,
            cohort=list(cohort),
            survivors=survivors,
            dropped=dict(context.dropped),
            seconds=time.monotonic() - start,
            bytes_down={n: after[n][0] - before[n][0] for n in cohort},
            bytes_up={n: after[n][1] - before[n][1] for n in cohort},
            record_epsilon={
                name: float(results[name].record_epsilon)
                for name in survivors
                if results[name].record_epsilon is not None
            },
            aggregation=dict(context.report),
        )

    def _account(self, context: RoundContext, update_size: int) -> None:
        dp = self.client_dp
        cost = None
        if dp.noise_multiplier > 0:
            ran = context if context.cohort else None
            cost = self.aggregator.privacy_cost(
                ran, dp.noise_multiplier, self.fraction_fit, len(self.owners), update_size
            )
        if cost is None:
            self.ledger.record(self.fraction_fit, dp.noise_multiplier)
        else:
            self.ledger.record_rdp(cost)

    def _noise_std(self) -> float:
        dp = self.client_dp
        return 0.0 if dp is None else dp.update_noise * dp.clip_norm

    def _step(
        self, weights: np.ndarray, total: np.ndarray, survivors: list[str], context: RoundContext
    ) -> np.ndarray:
        """Noise, average, adaptive clip and server step; records the round in the ledger."""
        update, weight_sum = total[: weights.size], float(total[weights.size])
        dp = self.client_dp
        if dp is None:
            if not survivors or weight_sum <= 0:
                return weights
            return self.server_optimizer.step(weights, update / weight_sum)
        noisy = dp.noise_multiplier > 0
        if noisy and not self.aggregator.owners_add_noise:
            update = update + self._stream.gaussian(update.shape, std=self._noise_std())
        denominator = dp.expected_cohort if noisy else max(weight_sum, 1.0)
        if dp.adaptive:
            indicator = float(total[weights.size + 1])
            if noisy and not self.aggregator.owners_add_noise:
                indicator += float(self._stream.gaussian(1, std=dp.indicator_noise)[0])
            dp.adapt(indicator, denominator if noisy else len(survivors))
        self._account(context, weights.size)
        if not noisy and not survivors:
            return weights
        return self.server_optimizer.step(weights, update / denominator)
