"""Public key material (what a server may hold) and encrypted batches.

A `PublicContext` is the encryption parameters with the public key, the
relinearization keys and Galois keys for the rotations a packing needs. It
has no slot for a secret key, and refuses to be built from a TenSEAL context
that holds one. An `EncryptedBatch` is a group of ciphertexts tagged with the
identity of its key pair and packing spec, so that mixing them up is an
error rather than silent garbage.

Note: these identities are integrity checks against mistakes, not against an
attacker: a malicious party can always forge metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

from privkeras.backends.he.ckks import SealOps
from privkeras.backends.he.errors import ContextMismatchError, SecretKeyError
from privkeras.backends.he.params import CKKSParameters
from privkeras.backends.he.wire import pack_message, seal_from_bytes, seal_to_bytes, unpack_message

__all__ = ["EncryptedBatch", "PublicContext", "galois_elements", "key_fingerprint", "seal_context"]

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
        if self.galois_keys is not None:
            blobs.append(seal_to_bytes(self.galois_keys))
        header = {
            "parameters": self.parameters.get_config(),
            "rotation_steps": None if self.rotation_steps is None else sorted(self.rotation_steps),
        }
        return pack_message("public-context", header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        import tenseal.sealapi as sealapi

        meta, blobs = unpack_message(data, "public-context")
        parameters = CKKSParameters.from_config(meta["parameters"])
        context = seal_context(parameters)
        public = seal_from_bytes(sealapi.PublicKey, context, blobs[0])
        relin = seal_from_bytes(sealapi.RelinKeys, context, blobs[1])
        galois = seal_from_bytes(sealapi.GaloisKeys, context, blobs[2]) if len(blobs) > 2 else None
        return cls(parameters, public, relin, galois, meta["rotation_steps"])

    def __repr__(self) -> str:
        steps = "all" if self.rotation_steps is None else len(self.rotation_steps)
        return (
            f"PublicContext(N={self.parameters.poly_modulus_degree}, rotation_steps={steps}, "
            f"id={self.fingerprint})"
        )


@dataclasses.dataclass(eq=False)
class EncryptedBatch:
    """Ciphertexts of up to `spec.block` samples, laid out by a `PackingSpec`.

    Args:
        ciphertexts: SEAL ciphertexts.
        n_samples: Number of real samples packed.
        role: `"inputs"` (from a client) or `"outputs"` (from a server).
        spec_id: Fingerprint of the `PackingSpec` that laid them out.
        context_id: Fingerprint of the key pair they are encrypted under.
    """

    ciphertexts: list[Any]
    n_samples: int
    role: str
    spec_id: str
    context_id: str

    def to_bytes(self) -> bytes:
        header = {
            "n_samples": self.n_samples,
            "role": self.role,
            "spec_id": self.spec_id,
            "context_id": self.context_id,
        }
        return pack_message("ciphertexts", header, [seal_to_bytes(ct) for ct in self.ciphertexts])

    @classmethod
    def from_bytes(cls, data: bytes, context: Any) -> EncryptedBatch:
        """Loads ciphertexts for `context` (a `PublicContext` or an `HEClient`).

        Raises:
            ContextMismatchError: When they were encrypted under another key pair.
            HEInputError: For bytes that are not ciphertexts for these parameters.
        """
        import tenseal.sealapi as sealapi

        meta, blobs = unpack_message(data, "ciphertexts")
        if meta["context_id"] != context.fingerprint:
            raise ContextMismatchError(
                f"Expected ciphertexts under context {context.fingerprint}. Received: "
                f"ciphertexts under context {meta['context_id']} (another key pair)"
            )
        context_data = seal_context(context.parameters)
        cts = [seal_from_bytes(sealapi.Ciphertext, context_data, blob) for blob in blobs]
        return cls(cts, meta["n_samples"], meta["role"], meta["spec_id"], meta["context_id"])
