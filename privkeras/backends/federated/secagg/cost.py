"""Bytes per owner per stage, as a function of the number of owners and the model size.

An owner with k neighbours (k from `SecAggConfig.resolve`) in a round without
dropouts sends and receives, per stage (H = 26 header bytes: magic, version,
type, round id, index):

| stage | up | down |
|---|---|---|
| advertise_keys | H + 3*32 + 64 (keys, seed commitment, signature) | H + 1 + name + 130 (setup) |
| share_keys | H + 4 + k (4 + 82 + 2*16) (ciphertexts, commitments) | H + 4 + sum over neighbours (4 + 1 + name + 160) |
| masked_input | H + 5 + d b/8 (the masked vector) | H + 4 + k (4 + 82 + 2*16) (forwarded shares) |
| unmasking | H + 12 + k (4 + 33) (revealed shares) | H + 8 + 4 k (survivor lists) |

Everything but the masked vector grows with k = O(log n), none of it with n;
the masked vector is d b / 8 bytes: the float32 model's size for b = 32.
`owner_cost` computes these numbers; the tests check them against the bytes
the simulation actually sends.
"""

from __future__ import annotations

from privkeras.backends.federated.secagg.crypto import KEY_BYTES, SIGNATURE_BYTES
from privkeras.backends.federated.secagg.messages import (
    CIPHERTEXT_BYTES,
    COMMITMENT_BYTES,
    MAGIC,
    ROUND_ID_BYTES,
    SHARE_COMMITMENT_BYTES,
    STAGES,
)
from privkeras.backends.federated.secagg.params import SecAggConfig
from privkeras.backends.federated.secagg.shamir import ELEMENT_BYTES

__all__ = ["HEADER_BYTES", "owner_cost"]

HEADER_BYTES = len(MAGIC) + 1 + 1 + ROUND_ID_BYTES + 4
#: RoundParameters on the wire.
PARAMETER_BYTES = 130
_SIGNED_KEYS = 2 * KEY_BYTES + COMMITMENT_BYTES + SIGNATURE_BYTES


def owner_cost(
    num_owners: int,
    vector_length: int,
    config: SecAggConfig | None = None,
    *,
    name_bytes: int = 8,
) -> dict[str, dict[str, int]]:
    """Bytes one owner sends (`up`) and receives (`down`) at each stage, without dropouts.

    Args:
        num_owners: Owners in the round.
        vector_length: Values per update (model parameters).
        config: The settings (default: `SecAggConfig(clip_range=1.0)`; only the
            ring size and graph settings matter).
        name_bytes: Length of owner names in UTF-8.

    Returns:
        `{stage: {"up": bytes, "down": bytes}}` plus `"total"`, and
        `"neighbours"`: `{"k": k}`.
    """
    config = config or SecAggConfig(clip_range=1.0)
    params = config.resolve(num_owners, vector_length)
    k, h = params.neighbours, HEADER_BYTES
    width = config.ring_bits // 8
    cost = {
        "advertise_keys": {
            "up": h + _SIGNED_KEYS,
            "down": h + 1 + name_bytes + PARAMETER_BYTES,
        },
        "share_keys": {
            "up": h + 4 + k * (4 + CIPHERTEXT_BYTES + 2 * SHARE_COMMITMENT_BYTES),
            "down": h + 4 + k * (4 + 1 + name_bytes + _SIGNED_KEYS),
        },
        "masked_input": {
            "up": h + 1 + 4 + width * vector_length,
            "down": h + 4 + k * (4 + CIPHERTEXT_BYTES + 2 * SHARE_COMMITMENT_BYTES),
        },
        "unmasking": {
            "up": h + 12 + k * (4 + ELEMENT_BYTES),
            "down": h + 8 + 4 * k,
        },
    }
    cost["total"] = {
        direction: sum(cost[stage][direction] for stage in STAGES) for direction in ("up", "down")
    }
    cost["neighbours"] = {"k": k}
    return cost
