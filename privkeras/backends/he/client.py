"""The client role: holds the secret key, encrypts inputs, decrypts outputs."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from privkeras.backends.he.context import (
    EncryptedBatch,
    PublicContext,
    galois_elements,
    key_fingerprint,
    received_seal_context,
    seal_context,
)
from privkeras.backends.he.errors import ContextMismatchError, HEInputError, SecretKeyError
from privkeras.backends.he.params import INTEGER_BITS, CKKSParameters
from privkeras.backends.he.program import PackingSpec
from privkeras.backends.he.wire import (
    ckks_parameters,
    pack_message,
    seal_from_bytes,
    seal_to_bytes,
    unpack_message,
)
from privkeras.errors import PrecisionOverflowError

__all__ = ["HEClient"]


class HEClient:
    """Key owner: generates the CKKS keys, encrypts inputs and decrypts results.

    The secret key never leaves this object unless `to_bytes(include_secret_key=True)`
    is called. Servers get `public_context(spec)`.

    Args:
        parameters: `CKKSParameters`, usually `spec.parameters` from the server.

    Example:

    ```python
    server = HEServer(model)
    spec = server.packing(n_samples=256)
    client = HEClient(spec.parameters)
    public = client.public_context(spec)          # to the server
    outputs = server.evaluate(client.encrypt(x[:256], spec), public)
    y = client.decrypt(outputs, spec)
    ```

    Notes:
        Keys and encryption randomness come from SEAL's own CSPRNG (Blake2xb
        seeded from the operating system), as in TenSEAL.
    """

    has_secret_key = True

    def __init__(self, parameters: CKKSParameters, _keys: tuple | None = None):
        import tenseal.sealapi as sealapi

        self.parameters = parameters
        self.seal_context = seal_context(parameters)
        secret, public, relin = _keys if _keys is not None else (None, None, None)
        generator = (
            sealapi.KeyGenerator(self.seal_context)
            if secret is None
            else sealapi.KeyGenerator(self.seal_context, secret)
        )
        self._secret_key = generator.secret_key()
        self._generator = generator
        if public is None:
            public = sealapi.PublicKey()
            generator.create_public_key(public)
        if relin is None:
            relin = sealapi.RelinKeys()
            generator.create_relin_keys(relin)
        self.public_key, self.relin_keys = public, relin
        self._encoder = sealapi.CKKSEncoder(self.seal_context)
        # Symmetric (secret-key) encryption: faster than public-key encryption, and
        # serialized with SEAL's seed compression it is half the size.
        self._encryptor = sealapi.Encryptor(self.seal_context, self.public_key, self._secret_key)
        self._decryptor = sealapi.Decryptor(self.seal_context, self._secret_key)
        self.fingerprint = key_fingerprint(self.public_key)
        self._public: dict[frozenset, PublicContext] = {}

    @classmethod
    def from_tenseal(cls, tenseal_context: Any, parameters: CKKSParameters) -> HEClient:
        """Adopts the secret key of a private `tenseal.Context` made with `parameters`."""
        if not tenseal_context.is_private():
            raise SecretKeyError(
                "Expected a TenSEAL context holding the secret key for the client role. "
                "Received: a public context"
            )
        data = tenseal_context.data
        relin = data.relin_keys() if tenseal_context.has_relin_keys() else None
        return cls(parameters, _keys=(data.secret_key(), data.public_key(), relin))

    # -- keys ----------------------------------------------------------------------------
    def public_context(
        self, spec: PackingSpec | None = None, rotation_steps: Any = None
    ) -> PublicContext:
        """Public key, relinearization keys and Galois keys for `spec`'s rotations.

        Args:
            spec: The server's packing spec (its `rotation_steps` are used).
            rotation_steps: Or the rotation steps directly.
        """
        import tenseal.sealapi as sealapi

        steps = frozenset(spec.rotation_steps if spec is not None else (rotation_steps or ()))
        if steps not in self._public:
            galois = None
            if steps:
                galois = sealapi.GaloisKeys()
                elements = galois_elements(steps, self.parameters.poly_modulus_degree)
                self._generator.create_galois_keys(elements, galois)
            self._public[steps] = PublicContext(
                self.parameters, self.public_key, self.relin_keys, galois, tuple(steps)
            )
        return self._public[steps]

    def to_bytes(self, include_secret_key: bool = False) -> bytes:
        """The key pair as bytes. Secret: store it as you would a private key.

        Raises:
            ValueError: Unless `include_secret_key=True`, so that the secret key
                is never written by accident.
        """
        if not include_secret_key:
            raise ValueError(
                "HEClient.to_bytes() writes the secret key: call it with "
                "include_secret_key=True, or send public_context(...).to_bytes() to servers."
            )
        blobs = [seal_to_bytes(k) for k in (self._secret_key, self.public_key, self.relin_keys)]
        return pack_message("secret-context", {"parameters": self.parameters.get_config()}, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> HEClient:
        """Restores a client saved with `to_bytes(include_secret_key=True)`.

        Raises:
            HEInputError: For bytes that are not a well-formed secret context.
        """
        import tenseal.sealapi as sealapi

        fields = {"parameters": ckks_parameters}
        meta, blobs = unpack_message(data, "secret-context", fields, blobs=(3, 3))
        parameters = meta["parameters"]
        context = received_seal_context(parameters, "secret-context")
        keys = tuple(
            seal_from_bytes(kind, context, blob)
            for kind, blob in zip((sealapi.SecretKey, sealapi.PublicKey, sealapi.RelinKeys), blobs)
        )
        return cls(parameters, _keys=keys)

    # -- data ----------------------------------------------------------------------------
    def encrypt(self, x: Any, spec: PackingSpec) -> EncryptedBatch:
        """Encrypts up to `spec.block` samples laid out as `spec` says.

        Args:
            x: `(n, *spec.input_shape)` values, `1 <= n <= spec.block`.
            spec: The server's packing spec.

        Returns:
            An `EncryptedBatch` for `HEServer.evaluate`.

        Raises:
            HEInputError: Wrong shape, too many rows, NaN or infinite values.
            PrecisionOverflowError: Values too large for the encoding.
            ContextMismatchError: A spec made for other parameters.
        """
        import tenseal.sealapi as sealapi

        ciphertexts = []
        for plain in self._plaintexts(x, spec):
            ct = sealapi.Ciphertext()
            self._encryptor.encrypt_symmetric(plain, ct)
            ciphertexts.append(ct)
        return EncryptedBatch(ciphertexts, len(x), "inputs", spec.fingerprint, self.fingerprint)

    def encrypt_to_bytes(self, x: Any, spec: PackingSpec) -> bytes:
        """`encrypt(x, spec).to_bytes()`, about half the size: ready to send.

        SEAL stores the uniformly random half of each fresh symmetric
        ciphertext as the seed it was drawn from; the server expands it on
        `EncryptedBatch.from_bytes`.
        """
        blobs = [
            seal_to_bytes(self._encryptor.encrypt_symmetric(plain))
            for plain in self._plaintexts(x, spec)
        ]
        header = {
            "n_samples": len(x),
            "role": "inputs",
            "spec_id": spec.fingerprint,
            "context_id": self.fingerprint,
        }
        return pack_message("ciphertexts", header, blobs)

    def _plaintexts(self, x: Any, spec: PackingSpec) -> list[Any]:
        import tenseal.sealapi as sealapi

        self._check_spec(spec)
        values = _validated_inputs(x, spec)
        scale, top = self.parameters.scale, self.seal_context.first_parms_id()
        plains = []
        for slots in spec.encode_inputs(values):
            plain = sealapi.Plaintext()
            self._encoder.encode(slots.tolist(), top, scale, plain)
            plains.append(plain)
        return plains

    def decrypt(self, batch: EncryptedBatch, spec: PackingSpec) -> np.ndarray:
        """Decrypts a server's outputs to `(n, *spec.output_shape)` float64 values.

        Raises:
            ContextMismatchError: Ciphertexts under another key pair or spec.
        """
        import tenseal.sealapi as sealapi

        self._check_spec(spec)
        if not isinstance(batch, EncryptedBatch):
            raise ContextMismatchError(
                f"Expected an EncryptedBatch from HEServer.evaluate. Received: "
                f"{type(batch).__name__}"
            )
        if batch.context_id != self.fingerprint:
            raise ContextMismatchError(
                f"Expected ciphertexts under this client's keys ({self.fingerprint}). Received: "
                f"ciphertexts under {batch.context_id}"
            )
        if batch.spec_id != spec.fingerprint:
            raise ContextMismatchError(
                f"Expected ciphertexts packed by spec {spec.fingerprint}. Received: spec "
                f"{batch.spec_id}"
            )
        layout = spec.output_layout if batch.role == "outputs" else spec.input_layout
        if not 1 <= batch.n_samples <= layout.block:
            raise HEInputError(
                f"Expected 1 to {layout.block} samples in a group packed by this spec. "
                f"Received: n_samples={batch.n_samples}"
            )
        if len(batch.ciphertexts) != layout.n_ciphertexts:
            raise ContextMismatchError(
                f"Expected {layout.n_ciphertexts} {batch.role} ciphertexts. "
                f"Received: {len(batch.ciphertexts)}"
            )
        slot_values = []
        for ct in batch.ciphertexts:
            plain = sealapi.Plaintext()
            self._decryptor.decrypt(ct, plain)
            slot_values.append(self._encoder.decode_double(plain))
        slot_values = np.asarray(slot_values)
        if batch.role == "inputs":
            return layout.unpack(slot_values, batch.n_samples)
        out = spec.decode_outputs(slot_values, batch.n_samples)
        _warn_on_overflow(out)
        return out

    def _check_spec(self, spec: PackingSpec) -> None:
        if spec.parameters != self.parameters:
            raise ContextMismatchError(
                f"Expected a spec for this client's parameters {self.parameters}. "
                f"Received: a spec for {spec.parameters}"
            )

    def __repr__(self) -> str:
        return f"HEClient(N={self.parameters.poly_modulus_degree}, id={self.fingerprint})"


def _validated_inputs(x: Any, spec: PackingSpec) -> np.ndarray:
    try:
        values = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise HEInputError(
            f"Expected numeric inputs of shape (n, {', '.join(map(str, spec.input_shape))}). "
            f"Received: {type(x).__name__} ({error})"
        ) from None
    expected = tuple(spec.input_shape)
    if values.ndim != len(expected) + 1 or values.shape[1:] != expected:
        raise HEInputError(
            f"Expected inputs of shape (n, {', '.join(map(str, expected))}). "
            f"Received: shape {values.shape}"
        )
    if not 1 <= len(values) <= spec.block:
        raise HEInputError(
            f"Expected 1 to {spec.block} samples per encryption for this packing. "
            f"Received: {len(values)}"
        )
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        rows = np.nonzero(bad)[0][:10].tolist()
        raise HEInputError(
            f"Expected finite inputs. Received: NaN or infinite values in rows {rows}"
        )
    limit = 2.0 ** (INTEGER_BITS - 1)
    peak = float(np.abs(values).max())
    if peak >= limit:
        raise PrecisionOverflowError(
            f"Expected inputs with |x| < {limit:g} (the headroom above the CKKS scale). "
            f"Received: max |x| = {peak:g}; normalize the inputs"
        )
    return values


def _warn_on_overflow(outputs: np.ndarray) -> None:
    limit = 2.0 ** (INTEGER_BITS - 1)
    peak = float(np.abs(outputs).max()) if outputs.size else 0.0
    if not math.isfinite(peak) or peak >= limit:
        warnings.warn(
            f"Decrypted outputs reach |y| = {peak:g}, beyond the {limit:g} the CKKS parameters "
            "keep exact: the model's values overflowed and these outputs are unreliable.",
            RuntimeWarning,
            stacklevel=3,
        )
