"""Homomorphic-encryption (CKKS) inference on TenSEAL.

`model.compile(privacy="he")` routes `predict` and `evaluate` here. Two roles,
separate objects even in one process:

- `HEClient` owns the secret key: it encrypts inputs and decrypts outputs.
- `HEServer` owns the model and only public contexts (public key,
  relinearization and Galois keys): it computes on ciphertexts.

The engine chooses CKKS parameters from the model's depth, and for each batch
the packing (`SlotLayout`) with the lowest estimated cost: many samples per
ciphertext for throughput, one sample per ciphertext group for latency.
Independent ciphertext groups run on every core (`EvaluationPool`). Every
object that crosses between the roles has `to_bytes` / `from_bytes`, and
every `from_bytes` is a strict parse (`HEInputError` for malformed bytes).
"""

from privkeras.backends.he.client import HEClient
from privkeras.backends.he.context import EncryptedBatch, PublicContext
from privkeras.backends.he.engine import HEEngine
from privkeras.backends.he.errors import (
    ContextMismatchError,
    DepthExceededError,
    HEInputError,
    SecretKeyError,
)
from privkeras.backends.he.parallel import EvaluationPool
from privkeras.backends.he.params import CKKSParameters, select_parameters
from privkeras.backends.he.planning import ExecutionPlan
from privkeras.backends.he.program import HEGraph, PackingSpec
from privkeras.backends.he.server import HEServer

__all__ = [
    "CKKSParameters",
    "ContextMismatchError",
    "DepthExceededError",
    "EncryptedBatch",
    "EvaluationPool",
    "ExecutionPlan",
    "HEClient",
    "HEEngine",
    "HEGraph",
    "HEInputError",
    "HEServer",
    "PackingSpec",
    "PublicContext",
    "SecretKeyError",
    "select_parameters",
]
