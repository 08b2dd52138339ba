"""HE bundles: `model.export(dir, format="he")` and what the server loads back.

Under CKKS the server holds the model (it is the model owner's service) and
computes on the client's ciphertexts; the client holds every key. The
bundle therefore holds the model and the public encryption set-up, and no
key of any kind:

```
credit_model_he/
  manifest.json         public: architecture, CKKS parameters, depth, the packings
                        offered (samples per block and the rotation steps of each),
                        input/output specs, SHA-256 of every file, format version
  server/weights.npz    the model's weights (float32), read with allow_pickle=False
  server/manifest.json  a copy, so that server/ alone can be deployed
  client/spec.json      for clients: parameters, input spec, packings and the
                        rotation (Galois) keys the server needs
```

Keys are made by each client when it connects (`pk.serving.connect`): it
registers its public context (public, relinearization and Galois keys) with
the server once per session.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.he.errors import HEInputError

if TYPE_CHECKING:
    from privkeras.serving.bundle import Manifest

__all__ = ["ServedHEModel", "export_bundle"]

#: The server's role name (its process and certificate name).
SERVER = "server"
#: The client's public spec, in the bundle.
CLIENT_SPEC = "client/spec.json"


def export_bundle(
    engine: Any,
    model: Any,
    filepath: str,
    *,
    blocks: Any = None,
    max_batch_rows: int = 128,
    overwrite: bool = False,
) -> Manifest:
    """Writes the server bundle (weights, parameters, packings) and the client spec.

    Args:
        engine: The model's `HEEngine` (its policy fixes the CKKS parameters).
        model: The built Keras model.
        filepath: The bundle's folder (new or empty unless `overwrite`).
        blocks: Samples per block of the packings to offer (powers of two up
            to N/2). None: the server's own choice for one row (latency) and
            for `max_batch_rows` rows (throughput).
        max_batch_rows: Rows a batched request carries at most (for `blocks=None`).
        overwrite: Replace an existing folder.

    Raises:
        UnsupportedLayerError, DepthExceededError: A model CKKS cannot evaluate.
        HEInputError: An unbuilt model or blocks that are not powers of two up to N/2.
    """
    from privkeras.backends.he.server import HEServer
    from privkeras.serving.bundle import BundleWriter

    if not getattr(model, "built", False) or not getattr(model, "inputs", None):
        raise HEInputError("Expected a built model to export. Received: an unbuilt model")
    server = HEServer(model, engine.policy)
    slots = server.parameters.slots
    if blocks is None:
        blocks = {server.choose_block(1), server.choose_block(int(max_batch_rows))}
    blocks = sorted({int(b) for b in blocks})
    if not blocks or any(b < 1 or b > slots or b & (b - 1) for b in blocks):
        raise HEInputError(
            f"Expected blocks as powers of two in [1, {slots}]. Received: blocks={blocks}"
        )
    packings = []
    for block in blocks:
        spec = server.packing(block=block)
        packings.append(
            {
                "block": block,
                "rotation_steps": sorted(int(s) for s in spec.rotation_steps),
                "spec": spec.fingerprint,
            }
        )
    weights = [np.asarray(w, np.float32) for w in model.get_weights()]
    policy = engine.policy
    he = {
        "policy": {
            "poly_modulus_degree": policy.poly_modulus_degree,
            "scale_bits": policy.scale_bits,
            "security_level": policy.security_level,
        },
        "parameters": server.parameters.get_config(),
        "depth": server.depth,
        "packings": packings,
        "weights": [list(w.shape) for w in weights],
    }
    input_spec = {"shape": list(server.graph.input_shape), "dtype": "float32"}
    output_spec = {"shape": list(model.output_shape[1:]), "dtype": "float32"}
    writer = BundleWriter(filepath, overwrite=overwrite)
    writer.write_arrays(f"{SERVER}/weights.npz", {f"w{i}": w for i, w in enumerate(weights)})
    client_spec = {
        "parameters": he["parameters"],
        "input": input_spec,
        "output": output_spec,
        "packings": packings,
        "rotation_steps": sorted({s for p in packings for s in p["rotation_steps"]}),
    }
    writer.write_bytes(CLIENT_SPEC, json.dumps(client_spec, indent=1, sort_keys=True).encode())
    return writer.finish(
        {
            "kind": "he",
            "engine": engine.name,
            "roles": [SERVER],
            "front": SERVER,
            "model": model.to_json(),
            "input": input_spec,
            "output": output_spec,
            "he": he,
        }
    )


class ServedHEModel:
    """The server's part of an HE bundle: the model rebuilt, its `HEServer`, the packings.

    Args:
        manifest: The bundle's manifest (read from the server's folder).

    Raises:
        BundleError: Not an HE bundle, a file's digest differs, the weights do
            not fit the architecture, or the parameters or packings the server
            derives differ from the manifest's.
    """

    def __init__(self, manifest: Manifest):
        import keras

        from privkeras.backends.he.params import CKKSParameters
        from privkeras.backends.he.server import HEServer
        from privkeras.layers import PolynomialActivation
        from privkeras.models import PrivateSequential
        from privkeras.policies import HE
        from privkeras.serving.bundle import BundleError

        if manifest.kind != "he" or not isinstance(manifest.data.get("he"), dict):
            raise BundleError(
                f"Expected an HE bundle (format='he'). Received: kind={manifest.kind!r}"
            )
        manifest.verify_role(SERVER)  # every digest before anything is parsed
        config = manifest.data["he"]
        shapes = [tuple(s) for s in config["weights"]]
        arrays = manifest.load_arrays(
            f"{SERVER}/weights.npz",
            {f"w{i}": ("float32", shape) for i, shape in enumerate(shapes)},
        )
        try:
            model = keras.models.model_from_json(
                manifest.data["model"],
                custom_objects={
                    "PrivateSequential": PrivateSequential,
                    "PolynomialActivation": PolynomialActivation,
                },
            )
            model.set_weights([arrays[f"w{i}"] for i in range(len(shapes))])
            self.server = HEServer(model, HE(**config["policy"]))
        except BundleError:
            raise
        except Exception as error:  # a manifest that does not describe a model we can serve
            raise BundleError(
                f"Expected a model this privkeras can serve under HE. Received: "
                f"{type(error).__name__}: {error}"
            ) from None
        expected = CKKSParameters.from_config(config["parameters"])
        if self.server.parameters != expected:
            raise BundleError(
                f"Expected the CKKS parameters of the manifest {expected}. Received: the model "
                f"derives {self.server.parameters}"
            )
        self.manifest, self.model = manifest, model
        self.specs = {}
        for packing in config["packings"]:
            spec = self.server.packing(block=int(packing["block"]))  # built once, at start
            if spec.fingerprint != packing["spec"]:
                raise BundleError(
                    f"Expected packing spec {packing['spec']} for block {packing['block']}. "
                    f"Received: {spec.fingerprint}"
                )
            self.specs[int(packing["block"])] = spec
        self.rotation_steps = sorted({s for p in config["packings"] for s in p["rotation_steps"]})

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.input_shape)
