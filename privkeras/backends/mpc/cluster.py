"""Networked jobs: the driver's side of a job whose parties run elsewhere.

A `Cluster` starts one job on its parties (and Pond's dealer) and gives the
driver a runtime whose placement holds only the driver's roles: the caller,
the model owner and the data owners whose rows are in this process. Driver
and parties then run the same job code (`jobs.run_predict`,
`trainer.run_fit`); when the job ends the cluster collects every party's
counters and reveal log, and a party's failure becomes a `PartyError` naming
it.

- `ThreadCluster`: each party on a thread of this process, over in-memory
  channels. Same code and placements as separate processes, no sockets: the
  way tests check the one-protocol-code property at engine level.
- `NetworkCluster` (`privkeras.backends.mpc.network`): party processes
  (`privkeras party`) over gRPC with TLS.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from privkeras.backends.mpc.communicator import ChannelHub, CommunicationStats, ThreadedCommunicator
from privkeras.backends.mpc.jobs import JobSpec
from privkeras.backends.mpc.placement import Placement
from privkeras.backends.mpc.protocols.streams import agree_stream_keys, job_labels
from privkeras.backends.mpc.roles import CALLER, MODEL_OWNER
from privkeras.errors import PartyError

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime, RevealRecord

__all__ = ["Cluster", "JobReport", "ThreadCluster", "driver_job", "job_roles", "make_runtime"]


@dataclasses.dataclass(frozen=True)
class JobReport:
    """What a networked job cost and revealed, gathered from every process.

    Attributes:
        stats: Rounds (the same in every process) and bytes, messages and
            offline bytes added up over the processes: equal to the counts of
            the same job in one process.
        reveal_logs: Each process's own reveal log, by role.
    """

    stats: CommunicationStats
    reveal_logs: dict[str, list[RevealRecord]]


def job_roles(protocol: str) -> tuple[str, ...]:
    """The roles that run every job of `protocol`: its compute parties, and Pond's dealer."""
    return ("p0", "p1", "dealer") if protocol == "pond" else ("p0", "p1", "p2")


def job_owners(spec: JobSpec) -> tuple[str, ...]:
    """Everyone who shares values in the job: the caller, the model owner, the data owners."""
    return tuple(dict.fromkeys((CALLER, MODEL_OWNER, *spec.owners)))


def make_runtime(spec: JobSpec, kernels: Any, communicator: Any) -> MPCRuntime:
    """A runtime for `spec` over `communicator`, with stream keys agreed if the job has no seed."""
    from privkeras.backends.mpc.runtime import MPCRuntime

    keys = None
    if spec.seed is None:
        owners = job_owners(spec)
        roles = (*job_roles(spec.protocol), *owners)
        keys = agree_stream_keys(communicator, job_labels(spec.protocol, owners), roles)
    return MPCRuntime(
        spec.protocol,
        kernels=kernels,
        precision_bits=spec.precision_bits,
        seed=spec.seed,
        communicator=communicator,
        keys=keys,
    )


class Cluster(abc.ABC):
    """Where the parties of networked jobs run."""

    #: The report of the last job this cluster ran.
    last_report: JobReport | None = None

    @abc.abstractmethod
    def job(
        self, spec: JobSpec, kernels: Any, driver_roles: Sequence[str]
    ) -> contextlib.AbstractContextManager[MPCRuntime]:
        """Starts `spec` on the parties; yields the driver's runtime; collects the report."""


class ThreadCluster(Cluster):
    """Every party (and the dealer) on its own thread of this process.

    Args:
        timeout: Seconds any role waits for a message before `PartyError`.
    """

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout

    @contextlib.contextmanager
    def job(self, spec: JobSpec, kernels: Any, driver_roles: Sequence[str]) -> Iterator[MPCRuntime]:
        from privkeras.backends.mpc import party

        hub = ChannelHub()
        parties = [r for r in job_roles(spec.protocol) if r != "dealer"]
        runtimes: dict[str, MPCRuntime] = {}
        errors: dict[str, BaseException] = {}

        def run(role: str) -> None:
            try:
                comm = ThreadedCommunicator(parties, Placement({role}), hub, self.timeout)
                runtimes[role] = runtime = make_runtime(spec, kernels, comm)
                party.run_job(spec, runtime)
            except BaseException as error:  # reported by the driver
                errors[role] = error

        threads = [
            threading.Thread(target=run, args=(role,), name=f"privkeras-{role}", daemon=True)
            for role in job_roles(spec.protocol)
        ]
        for thread in threads:
            thread.start()
        comm = ThreadedCommunicator(parties, Placement(driver_roles), hub, self.timeout)
        driver = make_runtime(spec, kernels, comm)
        try:
            yield driver
        finally:
            for thread in threads:
                thread.join(self.timeout + 5)
        if errors:
            role, error = next(iter(errors.items()))
            if isinstance(error, PartyError):
                raise error
            raise PartyError(
                f"Party {role!r} failed the job: {type(error).__name__}: {error}"
            ) from error
        stats = [driver.communicator.snapshot()] + [
            r.communicator.snapshot() for r in runtimes.values()
        ]
        self.last_report = JobReport(
            stats=CommunicationStats.total(stats),
            reveal_logs={
                "driver": driver.reveal_log,
                **{r: rt.reveal_log for r, rt in runtimes.items()},
            },
        )


@contextlib.contextmanager
def driver_job(engine: Any, spec: JobSpec) -> Iterator[MPCRuntime]:
    """Runs `spec` with the engine's cluster; the driver holds the caller's and owners' roles."""
    cluster = engine.cluster
    if cluster is None:
        from privkeras.backends.mpc.network import NetworkCluster

        cluster = engine.cluster = NetworkCluster(engine.policy)
    roles = [owner for owner in job_owners(spec) if owner not in spec.workers]
    with cluster.job(spec, engine.kernels, roles) as runtime:
        yield runtime
    engine.last_report = cluster.last_report
