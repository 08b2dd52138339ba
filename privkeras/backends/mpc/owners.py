"""A data owner's side of MPC training: its `privkeras worker` shares its rows with the parties.

With `model.fit(pk.SharedData([pk.DataOwner(...), ...]))` under
`MPC(parties=...)`, each owner's worker secret-shares its own rows directly
to the compute parties: the driver (the model owner) never receives them,
and no party receives more than its shares. The worker serves two methods:

- `mpc.describe`: the number of rows, the row and label shapes and max |x|
  (for the model owner's pre-flight range check: the only statistic of the
  data that leaves the owner);
- `mpc.share`: joins one job as the owner's role, agrees the keys it shares
  with the parties, encodes its labels as the model's loss wants them,
  shuffles its rows (its own business) and sends each party its shares,
  exactly as an owner in the driver's process would (`SharedData.share`).

A worker refuses both unless its owner allows MPC (`--allow mpc`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from privkeras.backends.mpc.cluster import job_roles, make_runtime
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.jobs import JobSpec
from privkeras.backends.mpc.placement import Placement
from privkeras.backends.mpc.shared_data import as_float_array, owner_rows, require_finite
from privkeras.errors import CapabilityError, PartyError

__all__ = ["OwnerShareService"]

logger = logging.getLogger("privkeras.mpc")

_KERNELS = {"mpc-torch": "torch", "mpc-tfe": "tensorflow"}


class OwnerShareService:
    """MPC methods on a data owner's worker node.

    Args:
        name: The owner's name (its worker's node name and certificate).
        x, y: Its rows and labels.
        node: Its `privkeras.net.Node`.
        allowed: Whether the owner allows MPC jobs on its data.
        timeout: Seconds any wait may take.
    """

    def __init__(
        self,
        name: str,
        x: Any,
        y: Any,
        node: Any,
        allowed: bool,
        timeout: float = 30.0,
        allow_seeded_jobs: bool = False,
    ):
        self.name, self.node, self.allowed, self.timeout = name, node, allowed, timeout
        self.allow_seeded_jobs = allow_seeded_jobs
        self.x = as_float_array(x, f"x of {name!r}")
        self.y = np.asarray(y)
        node.register("mpc.describe", self._describe)
        node.register("mpc.share", self._share)

    def _refuse_unless_allowed(self) -> None:
        if not self.allowed:
            raise CapabilityError(
                f"Data owner {self.name!r} does not allow MPC jobs on its data "
                "(its worker runs without --allow mpc)."
            )

    def _describe(self, request: Any) -> Any:
        from privkeras.net import Reply

        self._refuse_unless_allowed()
        require_finite(self.x, f"x of {self.name!r}")
        return Reply(
            [],
            {
                "rows": len(self.x),
                "row_shape": list(self.x.shape[1:]),
                "y_shape": list(self.y.shape[1:]),
                "max_abs": float(np.max(np.abs(self.x), initial=0.0)),
            },
        )

    def _share(self, request: Any) -> Any:
        from privkeras.backends.mpc.network import NetworkCommunicator, _spec_bytes, refuse_seeded
        from privkeras.core.kernels import get_kernels
        from privkeras.net import Reply

        self._refuse_unless_allowed()
        spec = JobSpec.from_json(_spec_bytes(request.tensors))
        refuse_seeded(spec, self.allow_seeded_jobs, f"data owner {self.name!r}")
        index, parties = request.meta.get("index"), request.meta.get("parties")
        if self.name not in spec.workers or not isinstance(parties, dict):
            raise PartyError(
                f"Expected a job in which {self.name!r} shares its rows, with the parties' "
                f"addresses. Received: workers={sorted(spec.workers)}"
            )
        expected = spec.owners.index(self.name)
        if index != expected or isinstance(index, bool):
            raise PartyError(f"Expected owner index {expected}. Received: index={index!r}")
        roles = job_roles(spec.protocol)
        for role in roles:
            self.node.peers.add(role, str(parties[role]))
        kernels = get_kernels(_KERNELS.get(spec.engine, "numpy"))
        comm = NetworkCommunicator(
            [r for r in roles if r != "dealer"],
            Placement({self.name}),
            self.node,
            request.job,
            kernels,
            self.timeout,
            workers=tuple(spec.workers),
        )
        runtime = make_runtime(spec, kernels, comm)
        targets = self._encoded_targets(spec)
        x, targets = owner_rows(self.x, targets, spec.seed, index, spec.fit_schedule.shuffle)
        runtime.share(x, owner=self.name, name=f"x of {self.name}")
        runtime.share(targets, owner=self.name, name=f"y of {self.name}")
        comm.flush()
        logger.info("job %s: shared %d rows with %s", request.job[:8], len(x), list(roles))
        return Reply([], {"rows": len(x)})

    def _encoded_targets(self, spec: JobSpec) -> np.ndarray:
        """The labels as the model's loss takes them (the same code as the driver's owners)."""
        import keras

        from privkeras.backends.mpc.losses import get_loss
        from privkeras.backends.mpc.party import build_program

        _, program = build_program(spec)
        loss_config = (
            spec.loss if isinstance(spec.loss, str) else keras.losses.deserialize(spec.loss)
        )
        targets = get_loss(loss_config, spec.engine).encode_targets(self.y, program.output_shape)
        require_finite(targets, f"y of {self.name!r}")
        if len(targets) != len(self.x):
            raise MPCInputError(f"Expected one label per row for {self.name!r}.")
        return targets
