"""Secure aggregation for federated training: SecAgg+ with dropout recovery and distributed DP.

The coordinator learns the sum of the surviving owners' updates and nothing
else about any one of them; owners may drop at any stage; with
`noise_multiplier > 0` the owners add the DP noise themselves, so the sum is
differentially private even if the coordinator adds none.

Protocol (semi-honest SecAgg+): Bonawitz et al., "Practical Secure Aggregation
for Privacy-Preserving Machine Learning" (CCS 2017), over the sparse neighbour
graph of Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead" (CCS 2020). A round has four stages, each one message each way
(`messages`):

1. advertise_keys: each owner makes two fresh X25519 key pairs (a channel pair
   and a mask pair) and a 256-bit self-mask seed b_u, and sends the public keys
   and a commitment to b_u, signed with its long-term Ed25519 key (the
   signature covers the round id and parameters, so keys cannot be replayed
   into another round or substituted by the coordinator).
2. share_keys: the coordinator places the owners on a random k-regular graph
   (`graph`) and forwards each its neighbours' signed keys; each owner verifies
   them, Shamir-shares b_u and its mask private key (threshold t, GF(2^256+297),
   `shamir`) among its neighbours, and sends each pair of shares encrypted
   (AES-256-GCM under an X25519 + HKDF channel key) with hash commitments.
3. masked_input: each owner encodes its update in Z_2^32 (`codec`), adds the
   self-mask PRG(b_u) and, for each neighbour v that shared keys, +/-PRG(s_uv)
   with s_uv from X25519 on the mask keys (HKDF to a 256-bit seed, expanded by
   AES-256-CTR in `privkeras.core.random.SecureStream`).
4. unmasking: the coordinator tells each survivor which neighbours' inputs are
   summed and which dropped; it reveals shares of b_v for the former and of the
   mask key for the latter (never both for one owner); the coordinator checks
   each share against its dealer's commitment, reconstructs, removes the
   self-masks and the dropped owners' pairwise masks, and decodes the sum.

Threat model. Privacy against an honest-but-curious coordinator that may
collude with up to a `max_corrupt` fraction of owners (fewer than t in any
neighbourhood, with probability 1 - 2^-40): it sees uniformly random masked
vectors, ciphertexts, and fewer than t shares of any secret it must not learn.
Owner keys are authenticated end to end, so a coordinator that substitutes
keys is detected (`AuthenticationError` at the owners). Not covered: a
malicious coordinator that lies to different owners about who dropped (the
consistency-check round of Bonawitz et al.'s active variant is not
implemented) or that chooses the graph adversarially, and owners that bias
their own inputs (any aggregation allows that; clipping bounds its effect).
Owners that misbehave within the protocol -- malformed or wrong-length
vectors, duplicates, replays from another round, shares that do not match
their commitments -- are dropped from the stage and named; a round then
finishes correctly or fails with `SecAggRoundError`, never with a wrong sum.
Dropout tolerance assumes owners drop independently of the (secret) graph.

Parameters (`SecAggConfig`, defaults):

- Ring Z_2^32: the masked upload is 4 bytes per parameter, exactly the float32
  model (Z_2^64 would double it). The granularity gamma is fitted so that n
  owners' clipped values (and noise) cannot wrap: for a clip c and n owners,
  gamma ~ n c / 2^31 (4.7e-9 for c = 1, n = 10; 4.7e-7 for n = 1,000), the
  decoded sum is exact up to stochastic rounding (unbiased, standard deviation
  <= gamma sqrt(n) / 2 per coordinate); `ring_bits=64` gives gamma = c 2^-52.
  Coordinates are clipped to `clip_range`, or to `clip_norm`.
- Graph degree k and threshold t from `max_dropout=1/3`, `max_corrupt=0.1`,
  `security_bits=40`, `correctness_bits=20` (Bell et al.'s analysis with exact
  hypergeometric tails, see `graph`): complete graph up to 50 owners (k = 9,
  t = 6 for 10 owners), then k = 78, 80, 98, 122 for 100, 300, 1,000, 10,000:
  O(log n + security_bits).
- A round needs `min_survivors` masked inputs (default n - floor(n/3)).
- Distributed DP (`dp`): the distributed discrete Gaussian of Kairouz, Liu and
  Steinke (ICML 2021), sampled exactly (Canonne, Kamath and Steinke, NeurIPS
  2020; `discrete_gaussian`), calibrated so that `min_survivors` owners add
  noise of standard deviation z * clip_norm, with conditional stochastic
  rounding; epsilon from `dp.epsilon` / `dp.distributed_dp_epsilon`.

In the federated engine (`aggregation`): `Federated(secure_aggregation=True)`
runs one SecAgg+ round per federated round, for simulated owners and worker
processes alike, with owners' keys signed by their certificates
(`identity`); `dp="distributed"` has the owners add the noise.

Example:

```python
from privkeras.backends.federated import secagg

config = secagg.SecAggConfig(clip_range=1.0)
report = secagg.simulate_round({"alice": u1, "bob": u2, "carol": u3}, config)
report.result.total        # u1 + u2 + u3 (clipped), to about 1e-8
```
"""

from privkeras.backends.federated.secagg import aggregation  # registers "secagg"
from privkeras.backends.federated.secagg.aggregation import SecAggPlusAggregator, SecAggPlusOwner
from privkeras.backends.federated.secagg.codec import RingCodec
from privkeras.backends.federated.secagg.coordinator import SecAggCoordinator, SecAggResult
from privkeras.backends.federated.secagg.cost import owner_cost
from privkeras.backends.federated.secagg.crypto import (
    Ed25519Credentials,
    Ed25519Signer,
    KeyVerifier,
    Signer,
)
from privkeras.backends.federated.secagg.discrete_gaussian import DiscreteGaussian
from privkeras.backends.federated.secagg.dp import distributed_dp_epsilon, epsilon, round_rdp
from privkeras.backends.federated.secagg.errors import SecAggMessageError, SecAggRoundError
from privkeras.backends.federated.secagg.identity import (
    CertificateVerifier,
    OwnerIdentity,
    SimulatedAuthority,
)
from privkeras.backends.federated.secagg.messages import STAGES, decode_message
from privkeras.backends.federated.secagg.owner import OwnerRequirements, SecAggOwner
from privkeras.backends.federated.secagg.params import RoundParameters, SecAggConfig
from privkeras.backends.federated.secagg.simulation import SimulationReport, simulate_round

__all__ = [
    "STAGES",
    "CertificateVerifier",
    "DiscreteGaussian",
    "Ed25519Credentials",
    "Ed25519Signer",
    "KeyVerifier",
    "OwnerIdentity",
    "OwnerRequirements",
    "RingCodec",
    "RoundParameters",
    "SecAggConfig",
    "SecAggCoordinator",
    "SecAggMessageError",
    "SecAggOwner",
    "SecAggPlusAggregator",
    "SecAggPlusOwner",
    "SecAggResult",
    "SecAggRoundError",
    "Signer",
    "SimulatedAuthority",
    "SimulationReport",
    "aggregation",
    "decode_message",
    "distributed_dp_epsilon",
    "epsilon",
    "owner_cost",
    "round_rdp",
    "simulate_round",
]
