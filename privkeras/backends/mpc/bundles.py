"""MPC bundles: `model.export(dir, format="mpc")` and what one server loads back.

The model owner exports once: the weights are secret-shared (with keys from
`os.urandom`) among the protocol's compute parties, and each party's folder
receives only the share components that party holds, as int64 ring
elements of the fixed-point codec:

```
credit_model/
  manifest.json        public: architecture, protocol, codec, input/output specs,
                       the lowered layers' parameter shapes, per-role components,
                       SHA-256 of every file, format version
  p0/shares.npz        pond: component 0 of every weight; aby3: components 0 and 1
  p0/manifest.json     a copy, so that p0/ alone can be deployed on p0's host
  p1/...
  dealer/manifest.json pond's dealer holds no weight: only the manifest
```

Pond splits each weight w into w0 + w1 (mod 2^64) with w0 uniform, so
either party's file alone is uniform random, whatever w is. ABY3 splits it
into three uniform-looking components c0 + c1 + c2 with party i holding
(c_i, c_{i+1}): any one party's pair is two independent uniform values
(Mohassel and Rindal, CCS 2018, section 2). Two colluding parties of one
protocol learn the weights, as they would learn any shared value.

A server (`privkeras serve dir/p0`) reads only its own folder: every file's
digest is checked against the manifest first, the architecture is rebuilt
and lowered exactly as the exporter lowered it, and its components are
checked against the shapes the manifest lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.mpc.cluster import job_roles
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.jobs import JobSpec
from privkeras.backends.mpc.protocols.base import Shares
from privkeras.backends.mpc.roles import MODEL_OWNER

if TYPE_CHECKING:
    from privkeras.backends.mpc.layers import SecureProgram, SharedParams
    from privkeras.backends.mpc.runtime import MPCRuntime
    from privkeras.serving.bundle import Manifest

__all__ = ["ServedModel", "export_bundle"]

#: The server role clients talk to first: it batches their requests into jobs.
FRONT = "p0"
#: Largest power-of-two input bound searched for when the exporter gives none.
_MAX_SEARCHED_BOUND = 2.0**20


def _array_name(layer: int, param: str, component: int) -> str:
    return f"L{layer}.{param}.c{component}"


def export_bundle(
    engine: Any,
    model: Any,
    filepath: str,
    *,
    input_bound: float | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Writes one share bundle per server role of the policy's protocol, and the manifest.

    Args:
        engine: The model's `MPCEngine` (its policy's protocol and precision).
        model: The built Keras model whose weights are exported.
        filepath: The bundle's folder (new or empty unless `overwrite`).
        input_bound: A public bound on |x| of the inputs clients may send
            (clients refuse larger ones). None: the largest power of two the
            fixed-point range allows through every layer (at most 2^20).
        overwrite: Replace an existing folder.

    Returns:
        The written bundle's `Manifest`.

    Raises:
        MPCInputError: An unbuilt model.
        UnsupportedLayerError: A layer without a secure version.
        PrecisionOverflowError: `input_bound` (or a bound of 2^-4 when none
            is given) cannot pass through the model within the ring.
    """
    import warnings

    from privkeras.backends.mpc.layers import SecureProgram
    from privkeras.backends.mpc.runtime import MPCRuntime
    from privkeras.serving.bundle import BundleWriter

    if not getattr(model, "built", False) or not getattr(model, "inputs", None):
        raise MPCInputError(
            "Expected a built model to export (call it on data, fit it, or build it). "
            "Received: an unbuilt model"
        )
    policy = engine.policy
    program = SecureProgram.lower(model, engine.name, training=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pond's dealer warning: exporting trusts no one yet
        runtime = MPCRuntime(
            policy.protocol, kernels="numpy", precision_bits=policy.precision_bits, seed=None
        )
    bound = _input_bound(program, runtime, input_bound)
    shared = program.share_params(runtime, MODEL_OWNER)  # keys from os.urandom, never a seed
    holdings = {
        role: tuple(
            c
            for c in range(runtime.protocol.num_components)
            if role in runtime.protocol.component_holders(c)
        )
        for role in job_roles(policy.protocol)
    }
    writer = BundleWriter(filepath, overwrite=overwrite)
    parties = {}
    for role in job_roles(policy.protocol):
        arrays = {
            _array_name(i, name, c): np.ascontiguousarray(tensor.shares[c], dtype=np.int64)
            for i, layer_params in enumerate(shared)
            for name, tensor in layer_params.items()
            for c in holdings[role]
        }
        entry: dict[str, Any] = {"components": list(holdings[role]), "shares": None}
        if holdings[role]:
            entry["shares"] = f"{role}/shares.npz"
            writer.write_arrays(entry["shares"], arrays)
        parties[role] = entry
    return writer.finish(
        {
            "kind": "mpc",
            "engine": engine.name,
            "roles": list(job_roles(policy.protocol)),
            "front": FRONT,
            "model": model.to_json(),
            "input": {"shape": list(program.input_shape), "dtype": "float32", "bound": bound},
            "output": {"shape": list(program.output_shape), "dtype": "float32"},
            "mpc": {
                "protocol": policy.protocol,
                "precision_bits": policy.precision_bits,
                "ring_bits": runtime.codec.ring_bits,
                "components": runtime.protocol.num_components,
                "parties": parties,
                "layers": [
                    {
                        "name": layer.name,
                        "params": {k: list(v.shape) for k, v in layer.params.items()},
                    }
                    for layer in program.layers
                ],
            },
        }
    )


def _input_bound(program: SecureProgram, runtime: MPCRuntime, declared: float | None) -> float:
    """The declared bound, checked through the model; else the largest power of two that passes."""
    if declared is not None:
        bound = runtime.checked_bound(declared)
        program.check_range(bound, runtime.codec)
        return bound
    bound = 2.0**-4
    program.check_range(bound, runtime.codec)
    while bound < _MAX_SEARCHED_BOUND:
        try:
            program.check_range(2 * bound, runtime.codec)
        except Exception:  # PrecisionOverflowError: the last bound that passed stays
            break
        bound *= 2
    return bound


class ServedModel:
    """One server role's part of an MPC bundle: its program and its weight components.

    Args:
        manifest: The bundle's manifest (read from the role's folder).
        role: `p0`, `p1`, `p2` or `dealer`.

    Raises:
        BundleError: The bundle is not an MPC bundle for this role, a file's
            digest differs, or the weights do not fit the architecture.
    """

    def __init__(self, manifest: Manifest, role: str):
        from privkeras.backends.mpc import party
        from privkeras.serving.bundle import BundleError

        if manifest.kind != "mpc" or not isinstance(manifest.data.get("mpc"), dict):
            raise BundleError(
                f"Expected an MPC bundle (format='mpc'). Received: kind={manifest.kind!r}"
            )
        if role not in manifest.roles:
            raise BundleError(
                f"Expected a role of this bundle {list(manifest.roles)}. Received: role={role!r}"
            )
        manifest.verify_role(role)  # every digest before anything is parsed
        self.manifest, self.role = manifest, role
        config = manifest.data["mpc"]
        self.protocol = config["protocol"]
        self.precision_bits = int(config["precision_bits"])
        self.components = tuple(config["parties"][role]["components"])
        self.num_components = int(config["components"])
        self.spec = JobSpec(
            kind="predict",
            engine=manifest.engine,
            protocol=self.protocol,
            precision_bits=self.precision_bits,
            seed=None,
            model=manifest.data["model"],
            input_shape=manifest.input_shape,
        )
        try:
            self.spec.check()
            _, self.program = party.build_program(self.spec)
        except (MPCInputError, ValueError) as error:
            raise BundleError(
                f"Expected a model this privkeras can serve. Received: {error}"
            ) from None
        self.shapes = self._check_layers(config["layers"])
        expected = {
            _array_name(i, name, c): ("int64", shape)
            for i, params in enumerate(self.shapes)
            for name, shape in params.items()
            for c in self.components
        }
        file = config["parties"][role]["shares"]
        self.arrays = manifest.load_arrays(file, expected) if file else {}
        self._tensors: dict[str, Any] = {}

    def _check_layers(self, listed: list[dict[str, Any]]) -> list[dict[str, tuple[int, ...]]]:
        from privkeras.serving.bundle import BundleError

        lowered = [
            {"name": layer.name, "params": {k: list(np.shape(v)) for k, v in layer.params.items()}}
            for layer in self.program.layers
        ]
        if lowered != listed:
            raise BundleError(
                "Expected the architecture to lower to the layers the manifest lists. Received: "
                f"{[layer['name'] for layer in lowered]} against "
                f"{[layer.get('name') for layer in listed]}"
            )
        return [{k: tuple(v) for k, v in layer["params"].items()} for layer in listed]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.program.input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.program.output_shape

    def params(self, runtime: MPCRuntime) -> SharedParams:
        """The weights as shared tensors of `runtime`: this role's components, None elsewhere."""
        from privkeras.backends.mpc.tensor import SharedTensor

        return [
            {
                name: SharedTensor(runtime, self._shares(runtime, i, name, shape))
                for name, shape in layer.items()
            }
            for i, layer in enumerate(self.shapes)
        ]

    def _shares(self, runtime: MPCRuntime, layer: int, name: str, shape) -> Shares:
        parts = []
        for c in range(self.num_components):
            key = _array_name(layer, name, c)
            if c not in self.components:
                parts.append(None)
                continue
            cache_key = f"{runtime.kernels.name}/{key}"
            if cache_key not in self._tensors:
                self._tensors[cache_key] = runtime.kernels.from_numpy(self.arrays[key])
            parts.append(self._tensors[cache_key])
        return Shares(tuple(parts), shape)

    def inputs(self, runtime: MPCRuntime, parts: list[list[np.ndarray]], rows: int):
        """Clients' rows as one shared tensor: their components stacked in request order.

        Args:
            parts: Per request, this role's components (as `components` orders them).
            rows: Rows in all.
        """
        from privkeras.backends.mpc.tensor import SharedTensor

        shape = (rows, *self.input_shape)
        stacked = [None] * self.num_components
        for j, c in enumerate(self.components):
            stacked[c] = runtime.kernels.from_numpy(
                np.ascontiguousarray(np.concatenate([p[j] for p in parts], axis=0))
            )
        return SharedTensor(runtime, Shares(tuple(stacked), shape))
