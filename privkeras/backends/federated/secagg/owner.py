"""The data owner's side of a secure-aggregation round: one object per round.

```python
owner = SecAggOwner("alice", signer, credentials)
keys = owner.advertise_keys(setup)                 # RoundSetup -> AdvertiseKeys
shares = owner.share_keys(neighbour_keys)          # NeighbourKeys -> ShareKeys
masked = owner.masked_input(forwarded, update)     # ForwardedShares + update -> MaskedInput
reveal = owner.unmask(request)                     # UnmaskRequest -> UnmaskResponse
```

Each method takes the coordinator's message (object or bytes) and returns the
owner's reply (call `.to_bytes()` to send it). An owner answers each stage at
most once, in order, and refuses with `SecAggMessageError` a message that
does not fit the round (wrong round id, recipient, stage, neighbours, or
parameters that differ from what the settings give), with
`AuthenticationError` a neighbour key whose signature does not verify (the
coordinator cannot substitute keys), and with `PrivacyPolicyError` a setup
weaker than its `OwnerRequirements` (an untrusted coordinator cannot turn the
owner's noise down).

The one rule that protects an owner's neighbours: for each neighbour it
reveals either the share of its self-mask seed (the neighbour's input is in
the sum) or the share of its mask key (it dropped), never both, and it
answers one unmask request per round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from privkeras.backends.federated.secagg import crypto
from privkeras.backends.federated.secagg.errors import SecAggMessageError
from privkeras.backends.federated.secagg.messages import (
    SHARE_COMMITMENT_BYTES,
    AdvertiseKeys,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    RevealedShare,
    RoundSetup,
    ShareKeys,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from privkeras.backends.federated.secagg.shamir import ELEMENT_BYTES, PRIME, share_secret
from privkeras.core.random import SecureStream
from privkeras.errors import PrivacyPolicyError

__all__ = ["OwnerRequirements", "SecAggOwner"]


@dataclasses.dataclass(frozen=True)
class OwnerRequirements:
    """What an owner insists on before it takes part (its own rules, not the coordinator's).

    Args:
        min_noise_multiplier: Refuse rounds whose distributed DP noise
            multiplier is lower (0: no requirement).
        max_clip_norm: Refuse rounds that clip to a larger L2 norm (None: any).
        min_survivors: Refuse rounds that would sum fewer owners' inputs.
    """

    min_noise_multiplier: float = 0.0
    max_clip_norm: float | None = None
    min_survivors: int = 2

    def check(self, setup: RoundSetup) -> None:
        config = setup.params.config
        if config.noise_multiplier < self.min_noise_multiplier:
            raise PrivacyPolicyError(
                f"Expected noise_multiplier >= {self.min_noise_multiplier} (this owner's rule). "
                f"Received: noise_multiplier={config.noise_multiplier}"
            )
        if self.max_clip_norm is not None and not (
            config.clip_norm is not None and config.clip_norm <= self.max_clip_norm
        ):
            raise PrivacyPolicyError(
                f"Expected clip_norm <= {self.max_clip_norm} (this owner's rule). "
                f"Received: clip_norm={config.clip_norm}"
            )
        if setup.params.min_survivors < self.min_survivors:
            raise PrivacyPolicyError(
                f"Expected min_survivors >= {self.min_survivors} (this owner's rule). "
                f"Received: min_survivors={setup.params.min_survivors}"
            )


def key_payload(setup_digest: bytes, index: int, name: str, keys) -> bytes:
    """What an owner signs: the round (id and parameters), itself, and its keys."""
    return crypto.commitment(
        b"advertised-keys",
        setup_digest,
        index.to_bytes(4, "little"),
        name.encode("utf-8"),
        keys.channel_key,
        keys.mask_key,
        keys.seed_commitment,
    )


def seed_commitment(round_id: bytes, owner: int, seed: bytes) -> bytes:
    return crypto.commitment(b"self-mask-seed", round_id, owner.to_bytes(4, "little"), seed)


def share_commitment(kind: bytes, round_id: bytes, dealer: int, holder: int, share: int) -> bytes:
    """A 128-bit commitment to one share (see `messages.SHARE_COMMITMENT_BYTES`)."""
    return crypto.commitment(
        kind,
        round_id,
        dealer.to_bytes(4, "little"),
        holder.to_bytes(4, "little"),
        share.to_bytes(ELEMENT_BYTES, "little"),
    )[:SHARE_COMMITMENT_BYTES]


def channel_associated_data(round_id: bytes, sender: int, recipient: int) -> bytes:
    return round_id + sender.to_bytes(4, "little") + recipient.to_bytes(4, "little")


def pairwise_mask_seed(shared: bytes, round_id: bytes, a: int, b: int) -> bytes:
    return crypto.derive_key(shared, round_id, b"pairwise-mask", min(a, b), max(a, b))


class SecAggOwner:
    """One owner in one round of SecAgg+ (see the module docstring for the calls).

    Args:
        name: The owner's name, as in its credentials.
        signer: Its long-term signing key (`crypto.Ed25519Signer` or any `Signer`).
        verifier: Checks neighbours' signatures (`crypto.Ed25519Credentials` or
            any `KeyVerifier`).
        requirements: The owner's own minimums on the round's privacy.
        stream: Source of every secret this owner makes; None (the default)
            keys a fresh `SecureStream` from os.urandom. Seeded streams are for tests.
    """

    def __init__(
        self,
        name: str,
        signer: crypto.Signer,
        verifier: crypto.KeyVerifier,
        *,
        requirements: OwnerRequirements | None = None,
        stream: SecureStream | None = None,
    ):
        self.name = name
        self._signer = signer
        self._verifier = verifier
        self._requirements = requirements or OwnerRequirements()
        self._stream = stream or SecureStream()
        self._next = "advertise_keys"

    def _begin(self, stage: str, message, cls):
        if isinstance(message, (bytes, bytearray, memoryview)):
            message = cls.from_bytes(message)
        if not isinstance(message, cls):
            raise SecAggMessageError(
                f"Expected a {cls.__name__} message. Received: {type(message).__name__}"
            )
        if self._next != stage:
            raise SecAggMessageError(
                f"Expected a message for stage {self._next!r} (owner {self.name!r}). "
                f"Received: a {cls.__name__} for stage {stage!r}"
            )
        if stage != "advertise_keys" and (
            message.round_id != self._round_id or message.recipient != self._index
        ):
            raise SecAggMessageError(
                f"Expected a message for round {self._round_id.hex()} and owner index "
                f"{self._index}. Received: round {message.round_id.hex()}, index "
                f"{message.recipient}"
            )
        self._next = None  # a failure below leaves the owner unable to continue
        return message

    # ---- stage 1: advertise keys -------------------------------------------------
    def advertise_keys(self, setup: RoundSetup | bytes) -> AdvertiseKeys:
        """Checks the round's parameters, makes this round's keys and signs them."""
        setup = self._begin("advertise_keys", setup, RoundSetup)
        if setup.recipient_name != self.name:
            raise SecAggMessageError(
                f"Expected a setup addressed to {self.name!r}. Received: {setup.recipient_name!r}"
            )
        setup.params.check_derivation()
        self._requirements.check(setup)
        self._round_id, self._index, self._params = setup.round_id, setup.recipient, setup.params
        self._setup_digest = hashlib.sha256(setup.digest_bytes()).digest()
        self._channel_secret, channel_key = crypto.x25519_keypair(self._stream)
        # The mask key's raw bytes are Shamir-shared, so they are kept as well as the key.
        self._mask_key_bytes = self._stream.random_bytes(crypto.KEY_BYTES)
        self._mask_secret = x25519.X25519PrivateKey.from_private_bytes(self._mask_key_bytes)
        mask_key = crypto.public_bytes(self._mask_secret)
        self._seed = self._stream.random_bytes(crypto.KEY_BYTES)
        unsigned = AdvertiseKeys(
            self._round_id,
            self._index,
            channel_key,
            mask_key,
            seed_commitment(self._round_id, self._index, self._seed),
            bytes(crypto.SIGNATURE_BYTES),
        )
        signature = self._signer.sign(
            key_payload(self._setup_digest, self._index, self.name, unsigned)
        )
        self._next = "share_keys"
        return dataclasses.replace(unsigned, signature=signature)

    # ---- stage 2: share keys -----------------------------------------------------
    def share_keys(self, neighbour_keys: NeighbourKeys | bytes) -> ShareKeys:
        """Verifies the neighbours' keys and sends each an encrypted share of both secrets."""
        message = self._begin("share_keys", neighbour_keys, NeighbourKeys)
        params = self._params
        neighbours = message.neighbours
        if not params.threshold <= len(neighbours) <= params.neighbours:
            raise SecAggMessageError(
                f"Expected {params.threshold} to {params.neighbours} neighbours. "
                f"Received: {len(neighbours)}"
            )
        names = [keys.name for keys in neighbours]
        if len(set(names)) != len(names) or self.name in names:
            raise SecAggMessageError(
                f"Expected neighbours with distinct names other than {self.name!r}. "
                f"Received: {names}"
            )
        for keys in neighbours:
            if keys.owner >= params.num_owners:
                raise SecAggMessageError(
                    f"Expected neighbour indices < {params.num_owners}. Received: {keys.owner}"
                )
            self._verifier.verify(
                keys.name,
                key_payload(self._setup_digest, keys.owner, keys.name, keys),
                keys.signature,
            )
        self._neighbours: dict[int, SignedKeys] = {keys.owner: keys for keys in neighbours}
        points = [keys.owner + 1 for keys in neighbours]
        seed_shares = share_secret(
            int.from_bytes(self._seed, "little"), points, params.threshold, self._stream
        )
        key_shares = share_secret(
            int.from_bytes(self._mask_key_bytes, "little"), points, params.threshold, self._stream
        )
        entries = []
        self._inbound: dict[int, bytes] = {}
        for keys in neighbours:
            v = keys.owner
            seed_share, key_share = seed_shares[v + 1], key_shares[v + 1]
            channel, self._inbound[v] = self._channel(keys)
            plaintext = seed_share.to_bytes(ELEMENT_BYTES, "little") + key_share.to_bytes(
                ELEMENT_BYTES, "little"
            )
            entries.append(
                EncryptedShares(
                    v,
                    crypto.encrypt(
                        channel, plaintext, channel_associated_data(self._round_id, self._index, v)
                    ),
                    share_commitment(b"seed-share", self._round_id, self._index, v, seed_share),
                    share_commitment(b"key-share", self._round_id, self._index, v, key_share),
                )
            )
        self._next = "masked_input"
        return ShareKeys(self._round_id, self._index, tuple(entries))

    def _channel(self, keys: SignedKeys) -> tuple[bytes, bytes]:
        """(key to `keys.owner`, key from `keys.owner`): one X25519 agreement, two HKDFs."""
        try:
            shared = crypto.agree(self._channel_secret, keys.channel_key)
        except ValueError:
            raise SecAggMessageError(
                f"Expected a valid X25519 channel key from neighbour {keys.name!r}. "
                "Received: a key of small order"
            ) from None
        return (
            crypto.derive_key(shared, self._round_id, b"channel", self._index, keys.owner),
            crypto.derive_key(shared, self._round_id, b"channel", keys.owner, self._index),
        )

    # ---- stage 3: masked input ---------------------------------------------------
    def masked_input(self, forwarded: ForwardedShares | bytes, update: np.ndarray) -> MaskedInput:
        """Encodes `update`, adds the self-mask and one pairwise mask per surviving neighbour.

        Args:
            forwarded: The coordinator's `ForwardedShares`: the neighbours that
                completed `share_keys` (and their shares for this owner).
            update: This owner's real vector, `vector_length` values (any shape).
        """
        message = self._begin("masked_input", forwarded, ForwardedShares)
        params = self._params
        senders = [entry.sender for entry in message.shares]
        unknown = [s for s in senders if s not in self._neighbours]
        if unknown or len(senders) < params.threshold:
            raise SecAggMessageError(
                f"Expected at least {params.threshold} forwarded shares from neighbours "
                f"{sorted(self._neighbours)}. Received: shares from {senders}"
            )
        self._forwarded = {entry.sender: entry for entry in message.shares}
        ring = self._encode(update)
        ring += crypto.expand_mask(self._seed, params.vector_length, params.config.ring_bits)
        for v in senders:
            try:
                shared = crypto.agree(self._mask_secret, self._neighbours[v].mask_key)
            except ValueError:
                raise SecAggMessageError(
                    f"Expected a valid X25519 mask key from neighbour {self._neighbours[v].name!r}. "
                    "Received: a key of small order"
                ) from None
            seed = pairwise_mask_seed(shared, self._round_id, self._index, v)
            mask = crypto.expand_mask(seed, params.vector_length, params.config.ring_bits)
            if self._index < v:
                ring += mask
            else:
                ring -= mask
        self._next = "unmasking"
        return MaskedInput(self._round_id, self._index, ring)

    def _encode(self, update: np.ndarray) -> np.ndarray:
        params = self._params
        values = np.asarray(update)
        if values.size != params.vector_length:
            raise ValueError(
                f"Expected an update of {params.vector_length} values. Received: {values.size} "
                f"values (shape {values.shape})"
            )
        codec = params.codec()
        noise = params.noise()
        if noise is None:
            return codec.encode(values, self._stream)
        flat = codec.check_finite(values, f"owner {self.name!r}'s update")
        norm = math.sqrt(float(np.dot(flat, flat)))
        if norm > params.config.clip_norm:
            flat = flat * (params.config.clip_norm / norm)
        integers = codec.quantize_bounded(flat, params.rounding_bound, self._stream)
        integers += noise.sample(params.vector_length, self._stream)
        return codec.to_ring(integers)

    # ---- stage 4: unmasking ------------------------------------------------------
    def unmask(self, request: UnmaskRequest | bytes) -> UnmaskResponse:
        """Reveals seed shares of surviving neighbours and mask-key shares of dropped ones."""
        message = self._begin("unmasking", request, UnmaskRequest)
        survivors, dropped = set(message.survivors), set(message.dropped)
        if survivors | dropped != set(self._forwarded):
            raise SecAggMessageError(
                "Expected survivors and dropped to split the neighbours that shared keys "
                f"{sorted(self._forwarded)}. Received: survivors={sorted(survivors)}, "
                f"dropped={sorted(dropped)}"
            )
        seed_shares, key_shares, complaints = [], [], []
        for v in sorted(self._forwarded):
            pair = self._decrypt(v)
            if pair is None:
                complaints.append(v)
            elif v in survivors:
                seed_shares.append(RevealedShare(v, pair[0]))
            else:
                key_shares.append(RevealedShare(v, pair[1]))
        self._next = "done"
        return UnmaskResponse(
            self._round_id, self._index, tuple(seed_shares), tuple(key_shares), tuple(complaints)
        )

    def _decrypt(self, sender: int) -> tuple[int, int] | None:
        """The (seed share, key share) `sender` dealt this owner, or None when they do
        not decrypt or do not match the dealer's commitments."""
        entry = self._forwarded[sender]
        plaintext = crypto.decrypt(
            self._inbound[sender],
            entry.ciphertext,
            channel_associated_data(self._round_id, sender, self._index),
        )
        if plaintext is None:
            return None
        seed_share = int.from_bytes(plaintext[:ELEMENT_BYTES], "little")
        key_share = int.from_bytes(plaintext[ELEMENT_BYTES:], "little")
        if seed_share >= PRIME or key_share >= PRIME:
            return None
        seed_ok = entry.seed_share_commitment == share_commitment(
            b"seed-share", self._round_id, sender, self._index, seed_share
        )
        key_ok = entry.key_share_commitment == share_commitment(
            b"key-share", self._round_id, sender, self._index, key_share
        )
        return (seed_share, key_share) if seed_ok and key_ok else None
