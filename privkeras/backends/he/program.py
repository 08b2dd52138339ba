"""From a Keras model to an encrypted program, and the public packing spec clients follow.

`HEGraph.from_model` converts each layer through the HE layer registry and
optimizes the steps (`steps.optimize`): it knows the multiplicative depth
before any parameter, key or ciphertext exists. `HEGraph.pack(slots, block)`
lays the steps out for one packing (`layout.SlotLayout`) as a
`PackedProgram`; its `spec()` is what a client needs to encrypt inputs and
decode outputs: layouts and rotation steps, never a weight.

When the model starts with a convolution, the client sends im2col patches
(`steps.Im2col`) instead of the image: the server then computes the
convolution with scalar multiply-adds, one per kernel element and filter,
without rotations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from typing import Any

import numpy as np

from privkeras.backends.he.ckks import CiphertextOps
from privkeras.backends.he.errors import HEInputError
from privkeras.backends.he.layout import SlotLayout
from privkeras.backends.he.linear_transform import LinearTransform
from privkeras.backends.he.params import CKKSParameters
from privkeras.backends.he.polynomial import PolynomialEvaluator
from privkeras.backends.he.steps import (
    AffineStep,
    Im2col,
    PolynomialStep,
    Step,
    optimize,
    step_depth,
)
from privkeras.backends.he.wire import (
    FieldError,
    ckks_parameters,
    hex_id,
    integer,
    integers,
    mapping,
    pack_message,
    unpack_message,
)
from privkeras.errors import UnsupportedLayerError

__all__ = ["HEGraph", "PackedProgram", "PackingSpec"]


class HEGraph:
    """A model as optimized affine and polynomial steps (see `steps`).

    Args:
        steps: Optimized steps.
        input_shape: Shape of one input sample.
        output_shape: Shape of one output sample.
    """

    def __init__(
        self, steps: list[Step], input_shape: tuple[int, ...], output_shape: tuple[int, ...]
    ):
        self.steps = steps
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.depth = sum(step_depth(step) for step in steps)

    @classmethod
    def from_model(cls, model: Any) -> HEGraph:
        """Converts a built Keras `Sequential` model.

        Raises:
            UnsupportedLayerError: For the first layer without an HE version,
                naming it and suggesting `PolynomialActivation`.
        """
        from privkeras.backends.he.layers import convert_layer  # Keras, only when converting

        try:
            input_shape = tuple(int(d) for d in model.input_shape[1:])
        except (AttributeError, ValueError, TypeError) as error:
            raise UnsupportedLayerError(
                "The 'he' engine needs a built model with a fixed input shape: start the "
                "model with keras.Input(shape). Received: a model without a known input shape"
            ) from error
        steps: list[Step] = []
        shape = input_shape
        for layer in model.layers:
            new_steps = convert_layer(layer, shape)
            for step in new_steps:
                shape = step.out_shape if isinstance(step, AffineStep) else step.shape
            steps.extend(new_steps)
        return cls(optimize(steps), input_shape, shape)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return math.prod(self.output_shape)

    def activation_ranges(self) -> list[tuple[str, tuple[float, float]]]:
        """`(layer name, input range)` of each polynomial fitted on a range."""
        return [
            (s.layer, s.input_range)
            for s in self.steps
            if isinstance(s, PolynomialStep) and s.input_range is not None
        ]

    def fingerprint(self) -> str:
        """A hash of the weights and structure (specs and ciphertexts are bound to it)."""
        digest = hashlib.sha256(repr((self.input_shape, self.output_shape)).encode())
        for step in self.steps:
            arrays = (
                (step.matrix, step.bias) if isinstance(step, AffineStep) else (step.coefficients,)
            )
            digest.update(type(step).__name__.encode())
            for array in arrays:
                digest.update(np.ascontiguousarray(array, np.float64).tobytes())
        return digest.hexdigest()[:16]

    def pack(self, slots: int, block: int, zero_threshold: float = 0.0) -> PackedProgram:
        return PackedProgram(self, slots, block, zero_threshold)

    def to_bytes(self) -> bytes:
        """The steps as a `graph` message: weights as `.npy` blobs, never a pickle.

        This is the server's own material (the weights): it is what the
        server's worker processes receive, never what a client does.
        """
        steps, blobs = [], []
        for step in self.steps:
            if isinstance(step, AffineStep):
                arrays = [step.matrix, step.bias]
                if step.im2col is not None:
                    arrays += [step.im2col.gather, step.im2col.kernel, step.im2col.bias]
                entry = {
                    "type": "affine",
                    "in_shape": list(step.in_shape),
                    "out_shape": list(step.out_shape),
                    "layers": list(step.layers),
                    "im2col": step.im2col is not None,
                }
            else:
                arrays = [step.coefficients]
                entry = {
                    "type": "polynomial",
                    "shape": list(step.shape),
                    "layer": step.layer,
                    "input_range": None if step.input_range is None else list(step.input_range),
                }
            steps.append(entry)
            blobs += [_npy_bytes(array) for array in arrays]
        header = {
            "steps": steps,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
        }
        return pack_message("graph", header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> HEGraph:
        """The graph of `to_bytes` (read by the server's own workers)."""
        fields = {"steps": list, "input_shape": list, "output_shape": list}
        meta, blobs = unpack_message(data, "graph", {k: _of_type(t) for k, t in fields.items()})
        arrays = iter([np.load(io.BytesIO(blob), allow_pickle=False) for blob in blobs])
        steps: list[Step] = []
        for entry in meta["steps"]:
            if entry["type"] == "affine":
                matrix, bias = next(arrays), next(arrays)
                im2col = (
                    Im2col(next(arrays), next(arrays), next(arrays)) if entry["im2col"] else None
                )
                steps.append(
                    AffineStep(
                        matrix,
                        bias,
                        tuple(entry["in_shape"]),
                        tuple(entry["out_shape"]),
                        tuple(entry["layers"]),
                        im2col,
                    )
                )
            else:
                input_range = entry["input_range"]
                steps.append(
                    PolynomialStep(
                        next(arrays),
                        tuple(entry["shape"]),
                        entry["layer"],
                        None if input_range is None else tuple(input_range),
                    )
                )
        return cls(steps, tuple(meta["input_shape"]), tuple(meta["output_shape"]))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _of_type(kind: type):
    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise FieldError(f"a JSON {kind.__name__}")
        return value

    return check


class PackedProgram:
    """An `HEGraph` laid out for `block` samples per block of `slots`-slot ciphertexts."""

    def __init__(self, graph: HEGraph, slots: int, block: int, zero_threshold: float = 0.0):
        if block < 1 or block > slots or block & (block - 1):
            raise ValueError(f"Expected block a power of two in [1, {slots}]. Received: {block}")
        self.graph, self.slots, self.block = graph, slots, block
        self.zero_threshold = zero_threshold
        steps = list(graph.steps)
        first = steps[0] if steps else None
        conv = first.im2col if isinstance(first, AffineStep) else None
        if conv is not None:
            self.input_gather = conv.gather.reshape(-1)
            layout = SlotLayout.grouped(conv.gather.shape[0], conv.positions, slots, block)
            filters = conv.filters
            conv_out = SlotLayout.grouped(
                filters,
                conv.positions,
                slots,
                block,
                merge_groups=True,
                feature=lambda f, p: p * filters + f,
            )
            steps[0] = dataclasses.replace(
                first, matrix=conv.patch_matrix(), bias=np.tile(conv.bias, conv.positions)
            )
        else:
            self.input_gather = np.arange(graph.n_inputs)
            layout = SlotLayout.vector(graph.n_inputs, slots, block)
        self.input_layout = layout
        self.stages: list[LinearTransform | PolynomialEvaluator] = []
        for i, step in enumerate(steps):
            if isinstance(step, AffineStep):
                out = (
                    conv_out
                    if (i == 0 and conv is not None)
                    else SlotLayout.vector(step.matrix.shape[0], slots, block)
                )
                self.stages.append(
                    LinearTransform(step.matrix, step.bias, layout, out, zero_threshold)
                )
                layout = out
            else:
                self.stages.append(PolynomialEvaluator(step.coefficients, zero_threshold))
        self.output_layout = layout

    @property
    def depth(self) -> int:
        return self.graph.depth

    @property
    def rotation_steps(self) -> set[int]:
        steps: set[int] = set()
        for stage in self.stages:
            if isinstance(stage, LinearTransform):
                steps |= stage.rotation_steps
        return steps

    def apply(self, ops: CiphertextOps, ciphertexts: list[Any]) -> list[Any]:
        """Runs every stage; returns the output ciphertexts."""
        for stage in self.stages:
            if isinstance(stage, LinearTransform):
                ciphertexts = stage.apply(ops, ciphertexts)
            else:
                ciphertexts = [stage.apply(ops, ct) for ct in ciphertexts]
        return ciphertexts

    def release_plaintexts(self) -> None:
        for stage in self.stages:
            if isinstance(stage, LinearTransform):
                stage.release_plaintexts()

    def spec(self, parameters: CKKSParameters) -> PackingSpec:
        return PackingSpec(
            parameters=parameters,
            input_shape=self.graph.input_shape,
            output_shape=self.graph.output_shape,
            input_gather=self.input_gather,
            input_layout=self.input_layout,
            output_layout=self.output_layout,
            rotation_steps=tuple(sorted(self.rotation_steps)),
            model_id=self.graph.fingerprint(),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class PackingSpec:
    """What a client needs to encrypt inputs for a server and decode its outputs.

    It carries layouts and rotation steps, no weight. Serialize with
    `to_bytes` / `from_bytes` to hand it to a client on another machine.

    Args:
        parameters: The CKKS parameters to generate keys with.
        input_shape: Shape of one input sample.
        output_shape: Shape of one output sample.
        input_gather: Flat input index of each encoded input feature (-1: zero);
            im2col patches for a first convolution, the identity otherwise.
        input_layout: Slot layout of the encoded input features.
        output_layout: Slot layout of the outputs.
        rotation_steps: Rotations the server performs (Galois keys needed).
        model_id: Fingerprint of the model the spec was made for.
    """

    parameters: CKKSParameters
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_gather: np.ndarray
    input_layout: SlotLayout
    output_layout: SlotLayout
    rotation_steps: tuple[int, ...]
    model_id: str

    @property
    def block(self) -> int:
        """Samples per ciphertext group: at most this many rows per `encrypt` call."""
        return self.input_layout.block

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.get_config(), sort_keys=True).encode()).hexdigest()[
            :16
        ]

    def encode_inputs(self, x: np.ndarray) -> np.ndarray:
        """`(n <= block, *input_shape)` -> `(n_ciphertexts, slots)` slot values."""
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        padded = np.concatenate([flat, np.zeros((len(flat), 1))], axis=1)
        return self.input_layout.pack(padded[:, self.input_gather])

    def decode_outputs(self, slot_values: np.ndarray, n_samples: int) -> np.ndarray:
        out = self.output_layout.unpack(slot_values, n_samples)
        return out.reshape(n_samples, *self.output_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters.get_config(),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "input_gather": np.asarray(self.input_gather).tolist(),
            "input_layout": self.input_layout.get_config(),
            "output_layout": self.output_layout.get_config(),
            "rotation_steps": list(self.rotation_steps),
            "model_id": self.model_id,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PackingSpec:
        """The spec of `get_config()`, every field checked (it comes from the server).

        Raises:
            HEInputError: For a config that does not describe a consistent
                packing: a missing, unexpected or invalid field, layouts for
                other parameters, or feature positions that do not cover the
                inputs and outputs exactly once.
        """
        if not isinstance(config, dict) or set(config) != set(_SPEC_FIELDS):
            received = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise HEInputError(
                f"Expected a packing spec config with the fields {sorted(_SPEC_FIELDS)}. "
                f"Received: {received}"
            )
        fields = {}
        for name, check in _SPEC_FIELDS.items():
            try:
                fields[name] = check(config[name])
            except FieldError as error:
                raise HEInputError(
                    f"Expected packing spec field {name!r} to be {error.expected}. "
                    f"Received: {name}={str(config[name])[:80]}"
                ) from None
        return _checked_spec(fields)

    def to_bytes(self) -> bytes:
        """A `packing-spec` message (`wire.pack_message`) for a client on another machine."""
        return pack_message("packing-spec", self.get_config(), [])

    @classmethod
    def from_bytes(cls, data: bytes) -> PackingSpec:
        """Loads a spec sent by `to_bytes` (see `from_config` for the checks).

        Raises:
            HEInputError: For bytes that are not a well-formed, consistent spec.
        """
        meta, _ = unpack_message(data, "packing-spec", _SPEC_FIELDS, blobs=(0, 0))
        return _checked_spec({name: meta[name] for name in _SPEC_FIELDS})


_MAX_FEATURES = 1 << 24
_shape = integers(1, _MAX_FEATURES, 8, min_length=1)
_SPEC_FIELDS = {
    "parameters": ckks_parameters,
    "input_shape": _shape,
    "output_shape": _shape,
    "input_gather": integers(-1, _MAX_FEATURES, _MAX_FEATURES, min_length=1),
    "input_layout": mapping,
    "output_layout": mapping,
    "rotation_steps": integers(1, 1 << 15, 1 << 15, unique=True),
    "model_id": hex_id(),
}


def _checked_spec(fields: dict[str, Any]) -> PackingSpec:
    """A `PackingSpec` from validated fields, checked for consistency."""
    parameters: CKKSParameters = fields["parameters"]
    n_inputs = math.prod(fields["input_shape"])
    n_outputs = math.prod(fields["output_shape"])
    if max(n_inputs, n_outputs) > _MAX_FEATURES:
        raise HEInputError(
            f"Expected at most {_MAX_FEATURES} features per sample. Received: input_shape="
            f"{fields['input_shape']}, output_shape={fields['output_shape']}"
        )
    gather = np.asarray(fields["input_gather"], np.int64)
    if gather.max() >= n_inputs:
        raise HEInputError(
            f"Expected input_gather indices in [-1, {n_inputs - 1}] for input_shape "
            f"{fields['input_shape']}. Received: an index {int(gather.max())}"
        )
    input_layout = _layout(fields["input_layout"], "input_layout", parameters, len(gather))
    output_layout = _layout(fields["output_layout"], "output_layout", parameters, n_outputs)
    if input_layout.block != output_layout.block:
        raise HEInputError(
            f"Expected input and output layouts with the same block. Received: "
            f"{input_layout.block} and {output_layout.block}"
        )
    steps = fields["rotation_steps"]
    if max(steps, default=0) >= parameters.slots:
        raise HEInputError(
            f"Expected rotation steps in [1, {parameters.slots - 1}]. Received: {max(steps)}"
        )
    return PackingSpec(
        parameters=parameters,
        input_shape=tuple(fields["input_shape"]),
        output_shape=tuple(fields["output_shape"]),
        input_gather=gather,
        input_layout=input_layout,
        output_layout=output_layout,
        rotation_steps=tuple(sorted(steps)),
        model_id=fields["model_id"],
    )


_LAYOUT_KEYS = ("slots", "block", "tile", "positions")


def _layout(
    config: dict[str, Any], name: str, parameters: CKKSParameters, n_features: int
) -> SlotLayout:
    """A `SlotLayout` from a received config: the parameters' slots, each feature once."""
    slots = parameters.slots
    expected = (
        f"{name} {{slots: {slots}, block and tile powers of two with tile * block <= {slots}, "
        f"positions: a multiple of tile entries placing each of the {n_features} features "
        f"once (-1 for padding)}}"
    )
    if set(config) != set(_LAYOUT_KEYS):
        raise HEInputError(f"Expected {expected}. Received: fields {sorted(config)}")
    try:
        integer(slots, slots)(config["slots"])
        block, tile = integer(1, slots)(config["block"]), integer(1, slots)(config["tile"])
        positions = integers(-1, n_features - 1, 2 * n_features + tile)(config["positions"])
    except FieldError as error:
        raise HEInputError(f"Expected {expected}. Received: {error.expected} violated") from None
    placed = np.asarray(positions, np.int64)
    placed = placed[placed >= 0]
    if (
        block & (block - 1)
        or tile & (tile - 1)
        or tile * block > slots
        or len(positions) % tile
        or len(placed) != n_features
        or len(np.unique(placed)) != n_features
    ):
        raise HEInputError(
            f"Expected {expected}. Received: block={block}, tile={tile}, "
            f"{len(positions)} positions placing {len(np.unique(placed))} distinct features"
        )
    return SlotLayout(slots, block, tile, np.asarray(positions, np.int64))
