"""Public key material (what a server may hold) and encrypted batches.

A `PublicContext` is the encryption parameters with the public key, the
relinearization keys and Galois keys for the rotations a packing needs. It
has no slot for a secret key, and refuses to be built from a TenSEAL context
that holds one. An `EncryptedBatch` is a group of ciphertexts tagged with the
identity of its key pair and packing spec, so that mixing them up is an
error rather than silent garbage.

Both travel as bytes (`to_bytes` / `from_bytes`); `from_bytes` is the parse
of bytes from the other role and checks everything it can before anything is
computed (`wire.unpack_message`): malformed bytes raise `HEInputError`,
well-formed bytes meant for another key pair raise `ContextMismatchError`.

Note: these identities are integrity checks against mistakes, not against an
attacker: a malicious party can always forge metadata.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

from privkeras.backends.he.ckks import SealOps
from privkeras.backends.he.errors import ContextMismatchError, HEInputError, SecretKeyError
from privkeras.backends.he.params import CKKSParameters
from privkeras.backends.he.wire import (
    MAX_BLOBS,
    ckks_parameters,
    hex_id,
    integer,
    integers,
    one_of,
    optional,
    pack_message,
    seal_from_bytes,
    seal_to_bytes,
    unpack_message,
)

__all__ = [
    "EncryptedBatch",
    "PublicContext",
    "galois_elements",
    "key_fingerprint",
    "load_ciphertexts",
    "received_seal_context",
    "seal_context",
]

_SECURITY = {128: "TC128", 192: "TC192", 256: "TC256"}


@functools.lru_cache(maxsize=8)
def seal_context(parameters: CKKSParameters) -> Any:
    """The SEAL context for a parameter set (shared: it holds no key)."""
    import tenseal.sealapi as sealapi

    n = parameters.poly_modulus_degree
    encryption = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    encryption.set_poly_modulus_degree(n)
    encryption.set_coeff_modulus(
        sealapi.CoeffModulus.Create(n, list(parameters.coeff_mod_bit_sizes))
    )
    level = getattr(sealapi.SEC_LEVEL_TYPE, _SECURITY[parameters.security_level])
    context = sealapi.SEALContext(encryption, True, level)
    if not context.parameters_set():
        raise ContextMismatchError(
            f"SEAL rejects {parameters}: {context.parameters_error_message()}"
        )
    return context


def received_seal_context(parameters: CKKSParameters, kind: str) -> Any:
    """`seal_context(parameters)` for parameters read from a message of `kind`.

    Raises:
        HEInputError: When SEAL cannot build a context for them (no primes of
            those sizes for that ring, for example).
    """
    try:
        return seal_context(parameters)
    except (ValueError, RuntimeError) as error:
        raise HEInputError(
            f"Expected CKKS parameters SEAL accepts in a {kind!r} message. Received: "
            f"{parameters} ({str(error)[:160]})"
        ) from None


def key_fingerprint(public_key: Any) -> str:
    """Hash of a public key: the identity of a key pair."""
    return hashlib.sha256(seal_to_bytes(public_key)).hexdigest()[:16]


def galois_elements(steps: Any, poly_modulus_degree: int) -> list[int]:
    """SEAL Galois elements of left rotations by `steps` slots (`3**step mod 2N`)."""
    return sorted({pow(3, int(step), 2 * poly_modulus_degree) for step in steps})


class PublicContext:
    """Encryption parameters and public keys: everything a server needs, no secret key.

    Args:
        parameters: The `CKKSParameters`.
        public_key: SEAL public key (lets the server encrypt constants).
        relin_keys: SEAL relinearization keys.
        galois_keys: SEAL Galois keys, or None when no rotation is needed.
        rotation_steps: The rotation steps the Galois keys cover; None when
            they are TenSEAL's power-of-two keys, which cover every step
            (SEAL composes them, at a few rotations each).
    """

    has_secret_key = False

    def __init__(
        self,
        parameters: CKKSParameters,
        public_key: Any,
        relin_keys: Any,
        galois_keys: Any = None,
        rotation_steps: Any = (),
    ):
        self.parameters = parameters
        self.public_key, self.relin_keys, self.galois_keys = public_key, relin_keys, galois_keys
        self.rotation_steps = (
            None if rotation_steps is None else frozenset(int(s) for s in rotation_steps)
        )
        self.fingerprint = key_fingerprint(public_key)
        self._ops: SealOps | None = None

    @classmethod
    def from_tenseal(cls, tenseal_context: Any, parameters: CKKSParameters) -> PublicContext:
        """Wraps a public `tenseal.Context` (after `make_context_public()`).

        Raises:
            SecretKeyError: When the TenSEAL context still holds the secret key.
        """
        if tenseal_context.is_private():
            raise SecretKeyError(
                "Expected a public TenSEAL context for the server role. Received: a context "
                "that holds the secret key; call make_context_public() on a copy first"
            )
        data = tenseal_context.data
        galois = data.galois_keys() if tenseal_context.has_galois_keys() else None
        return cls(
            parameters,
            data.public_key(),
            data.relin_keys(),
            galois,
            None if galois is not None else (),
        )

    @property
    def seal_context(self) -> Any:
        return seal_context(self.parameters)

    def is_private(self) -> bool:
        """False: a public context never holds the secret key."""
        return False

    def covers(self, steps: set[int]) -> bool:
        """Whether the Galois keys allow every rotation in `steps`."""
        if not steps:
            return True
        if self.galois_keys is None:
            return False
        return self.rotation_steps is None or set(steps) <= self.rotation_steps

    def ops(self) -> SealOps:
        """The CKKS operations this public material allows (cached)."""
        if self._ops is None:
            self._ops = SealOps(
                self.seal_context, self.public_key, self.relin_keys, self.galois_keys
            )
        return self._ops

    def secret_key(self) -> Any:
        raise SecretKeyError(
            "This is a public context: it holds no secret key and cannot decrypt. Only the "
            "HEClient that created the keys can."
        )

    def to_bytes(self) -> bytes:
        """Parameters, public, relinearization and Galois keys (there is no secret key)."""
        blobs = [seal_to_bytes(self.public_key), seal_to_bytes(self.relin_keys)]
        if self.galois_keys is not None and self.rotation_steps != frozenset():
            blobs.append(seal_to_bytes(self.galois_keys))
        header = {
            "parameters": self.parameters.get_config(),
            "rotation_steps": None if self.rotation_steps is None else sorted(self.rotation_steps),
        }
        return pack_message("public-context", header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        """Loads a context sent by `to_bytes`, every key checked against the parameters.

        Raises:
            HEInputError: For bytes that are not a well-formed public context:
                truncated or forged, keys SEAL rejects, Galois keys missing for a
                rotation step the header lists, or present without one.
        """
        import tenseal.sealapi as sealapi

        fields = {
            "parameters": ckks_parameters,
            "rotation_steps": optional(integers(1, 1 << 15, 1 << 15, unique=True)),
        }
        meta, blobs = unpack_message(data, "public-context", fields, blobs=(2, 3))
        parameters, steps = meta["parameters"], meta["rotation_steps"]
        if steps is not None and max(steps, default=0) >= parameters.slots:
            raise HEInputError(
                f"Expected rotation steps in [1, {parameters.slots - 1}] for N="
                f"{parameters.poly_modulus_degree}. Received: rotation_steps up to {max(steps)}"
            )
        wants_galois = steps is None or bool(steps)
        if wants_galois != (len(blobs) == 3):
            raise HEInputError(
                "Expected Galois keys exactly when the context lists rotation steps (or "
                f"null: every step). Received: rotation_steps={_steps_shown(steps)} with "
                f"{len(blobs) - 2} Galois key blob(s)"
            )
        context = received_seal_context(parameters, "public-context")
        public = seal_from_bytes(sealapi.PublicKey, context, blobs[0])
        relin = seal_from_bytes(sealapi.RelinKeys, context, blobs[1])
        if not relin.has_key(2):
            raise HEInputError(
                "Expected relinearization keys for ciphertexts of size 3. Received: relin "
                "keys without them"
            )
        galois = seal_from_bytes(sealapi.GaloisKeys, context, blobs[2]) if wants_galois else None
        if galois is not None:
            _check_galois_coverage(galois, steps, parameters)
        return cls(parameters, public, relin, galois, steps)

    def __repr__(self) -> str:
        steps = "all" if self.rotation_steps is None else len(self.rotation_steps)
        return (
            f"PublicContext(N={self.parameters.poly_modulus_degree}, rotation_steps={steps}, "
            f"id={self.fingerprint})"
        )


def _steps_shown(steps: Any) -> str:
    if steps is None or len(steps) <= 8:
        return repr(steps)
    return f"[{len(steps)} steps]"


def _check_galois_coverage(galois: Any, steps: Any, parameters: CKKSParameters) -> None:
    """Galois keys hold a key for every listed step (power-of-two steps both ways for None)."""
    n, slots = parameters.poly_modulus_degree, parameters.slots
    if steps is None:
        powers = [1 << i for i in range(slots.bit_length() - 1)]
        needed = {s: e for s in powers for e in galois_elements([s, slots - s], n)}
    else:
        needed = {s: galois_elements([s], n)[0] for s in steps}
    missing = sorted(step for step, element in needed.items() if not galois.has_key(element))
    if missing:
        raise HEInputError(
            f"Expected Galois keys for the rotation steps {_steps_shown(steps)} the context "
            f"lists. Received: Galois keys without steps {missing[:10]}"
        )


_BATCH_FIELDS = {
    "n_samples": integer(1, 1 << 15),
    "role": one_of("inputs", "outputs"),
    "spec_id": hex_id(),
    "context_id": hex_id(),
}


class EncryptedBatch:
    """Ciphertexts of up to `spec.block` samples, laid out by a `PackingSpec`.

    Args:
        ciphertexts: SEAL ciphertexts (None when `serialized` is given and
            loading is left until they are needed).
        n_samples: Number of real samples packed.
        role: `"inputs"` (from a client) or `"outputs"` (from a server).
        spec_id: Fingerprint of the `PackingSpec` that laid them out.
        context_id: Fingerprint of the key pair they are encrypted under.
        serialized: The ciphertexts in SEAL's format as received, which an
            `EvaluationPool` forwards to its workers as they are.
    """

    def __init__(
        self,
        ciphertexts: list[Any] | None,
        n_samples: int,
        role: str,
        spec_id: str,
        context_id: str,
        serialized: list[bytes] | None = None,
        parameters: CKKSParameters | None = None,
    ):
        if ciphertexts is None and (serialized is None or parameters is None):
            raise ValueError("Expected ciphertexts, or serialized ones and their parameters.")
        self._ciphertexts = None if ciphertexts is None else list(ciphertexts)
        self.n_samples, self.role = n_samples, role
        self.spec_id, self.context_id = spec_id, context_id
        self.serialized = serialized
        self._parameters = parameters

    @property
    def ciphertexts(self) -> list[Any]:
        """The SEAL ciphertexts, loaded and checked on first use when received unloaded.

        Raises:
            HEInputError: For serialized ciphertexts that do not load or are
                not what their role needs (see `from_bytes`).
        """
        if self._ciphertexts is None:
            self._ciphertexts = load_ciphertexts(self.serialized, self.role, self._parameters)
        return self._ciphertexts

    @property
    def n_ciphertexts(self) -> int:
        return len(self._ciphertexts if self._ciphertexts is not None else self.serialized)

    @property
    def loaded(self) -> bool:
        return self._ciphertexts is not None

    def __repr__(self) -> str:
        return (
            f"EncryptedBatch(role={self.role!r}, n_samples={self.n_samples}, "
            f"ciphertexts={self.n_ciphertexts}, spec_id={self.spec_id!r}, "
            f"context_id={self.context_id!r})"
        )

    def to_bytes(self) -> bytes:
        header = {
            "n_samples": self.n_samples,
            "role": self.role,
            "spec_id": self.spec_id,
            "context_id": self.context_id,
        }
        blobs = self.serialized
        if blobs is None:
            blobs = [seal_to_bytes(ct) for ct in self.ciphertexts]
        return pack_message("ciphertexts", header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes, context: Any, load: bool = True) -> EncryptedBatch:
        """Reads ciphertexts for `context` (a `PublicContext` or an `HEClient`).

        Inputs must be fresh: two polynomials, at the top level, at the
        parameters' scale. Outputs must be two-polynomial ciphertexts at a
        usable scale.

        Args:
            data: The bytes received.
            context: The receiver's `PublicContext` or `HEClient`.
            load: Load (and check) the SEAL ciphertexts now. With False only
                the message is checked here; the ciphertexts are loaded and
                checked where they are used: on first access to
                `ciphertexts`, or by the `EvaluationPool` worker that
                evaluates them (which then raises the same `HEInputError`).

        Raises:
            HEInputError: For bytes that are not well-formed ciphertexts for
                these parameters (see `wire.unpack_message`).
            ContextMismatchError: When they were encrypted under another key pair.
        """
        meta, blobs = unpack_message(data, "ciphertexts", _BATCH_FIELDS, blobs=(1, MAX_BLOBS))
        parameters = context.parameters
        if meta["n_samples"] > parameters.slots:
            raise HEInputError(
                f"Expected at most {parameters.slots} samples in a ciphertext group for N="
                f"{parameters.poly_modulus_degree}. Received: n_samples={meta['n_samples']}"
            )
        if meta["context_id"] != context.fingerprint:
            raise ContextMismatchError(
                f"Expected ciphertexts under context {context.fingerprint}. Received: "
                f"ciphertexts under context {meta['context_id']} (another key pair)"
            )
        batch = cls(
            None,
            meta["n_samples"],
            meta["role"],
            meta["spec_id"],
            meta["context_id"],
            serialized=blobs,
            parameters=parameters,
        )
        if load:
            batch.ciphertexts  # noqa: B018 - loads and checks them now
        return batch


def load_ciphertexts(blobs: list[bytes], role: str, parameters: CKKSParameters) -> list[Any]:
    """SEAL ciphertexts from their serialized form, each checked for its role.

    Raises:
        HEInputError: For bytes SEAL rejects, or ciphertexts that are not
            fresh (inputs) or not relinearized at a usable scale (outputs).
    """
    import tenseal.sealapi as sealapi

    context_data = seal_context(parameters)
    cts = [seal_from_bytes(sealapi.Ciphertext, context_data, blob) for blob in blobs]
    for index, ct in enumerate(cts):
        _check_received_ciphertext(ct, index, role, parameters, context_data)
    return cts


def _check_received_ciphertext(
    ct: Any, index: int, role: str, parameters: CKKSParameters, context_data: Any
) -> None:
    fresh = role == "inputs"
    scale = float(ct.scale)
    problems = []
    if ct.size() != 2:
        problems.append(f"size={ct.size()} (relinearized ciphertexts have 2 polynomials)")
    if fresh and tuple(ct.parms_id()) != tuple(context_data.first_parms_id()):
        problems.append("a level below the top (already evaluated)")
    if not math.isfinite(scale) or scale < 1.0 or (fresh and scale != parameters.scale):
        problems.append(f"scale={scale!r}")
    if problems:
        expected = (
            f"fresh ciphertexts (2 polynomials, top level, scale 2^{parameters.scale_bits})"
            if fresh
            else "evaluated ciphertexts of 2 polynomials at a finite scale"
        )
        raise HEInputError(
            f"Expected {role} as {expected}. Received: ciphertext {index} with "
            f"{', '.join(problems)}"
        )
