"""The coordinator's side of a secure-aggregation round: a state machine per round.

```python
coordinator = SecAggCoordinator(config, ["alice", "bob", ...], vector_length=4810)
for name, message in coordinator.setup_messages().items(): send(name, message)
...                                                 # owners answer; for each reply:
coordinator.receive(sender_name, reply_bytes)       # never raises for a peer's fault
outgoing = coordinator.close_advertise_keys()       # {name: NeighbourKeys}
outgoing = coordinator.close_share_keys()           # {name: ForwardedShares}
outgoing = coordinator.close_masked_input()         # {name: UnmaskRequest}
result = coordinator.close_unmasking()              # SecAggResult: the sum, who is in it
```

The transport decides when a stage ends (everyone answered -- `waiting_for()`
is empty -- or its deadline passed) and calls the stage's `close_*`. Owners
that have not answered by then are dropped from the rest of the round.

`receive` takes the sender's authenticated name from the transport and the
message's bytes. A message that is malformed, for another round (a replay),
claims another sender, belongs to a later stage, repeats one already received
(a duplicate), or whose content does not fit (wrong-length masked vector,
shares for the wrong neighbours, a revealed share that does not match its
dealer's commitment, a bad signature) drops its sender from the current stage
and names it in `misbehaving`; a late message from an owner already dropped is
ignored. A `close_*` that cannot go on raises `SecAggRoundError` (a
`PartyError`) naming the stage and the owners; otherwise the round's result
is exact: never a silently wrong aggregate.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from privkeras.backends.federated.secagg import crypto
from privkeras.backends.federated.secagg.errors import SecAggMessageError, SecAggRoundError
from privkeras.backends.federated.secagg.graph import harary_graph, is_connected
from privkeras.backends.federated.secagg.messages import (
    STAGES,
    AdvertiseKeys,
    ForwardedShare,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    ShareKeys,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from privkeras.backends.federated.secagg.owner import (
    key_payload,
    pairwise_mask_seed,
    seed_commitment,
    share_commitment,
)
from privkeras.backends.federated.secagg.params import RoundParameters, SecAggConfig
from privkeras.backends.federated.secagg.shamir import reconstruct_secret
from privkeras.backends.federated.secagg.wire import MAX_NAME_BYTES
from privkeras.core.random import SecureStream
from privkeras.errors import AuthenticationError

__all__ = ["SecAggCoordinator", "SecAggResult"]


@dataclasses.dataclass(frozen=True, eq=False)
class SecAggResult:
    """The outcome of a round.

    Attributes:
        total: The sum of the survivors' (clipped, rounded, and with distributed
            DP noised) updates, float64.
        ring_total: The same sum in the ring, exactly (uint32 or uint64).
        survivors: Owners whose inputs are in the sum, sorted.
        dropped: Owners that left the round at each stage (`STAGES`), sorted;
            an owner dropped at `unmasking` is still in the sum.
        misbehaving: `{owner: reason}` for owners whose messages were refused.
        late: `{owner: count}` of messages ignored because they came after
            their stage closed.
        complaints: `{owner: neighbours}`: the neighbours whose encrypted shares
            this owner could not decrypt or that did not match their commitments
            (the dealer or the channel misbehaved; the shares were not needed).
        params: The round's parameters.
    """

    total: np.ndarray
    ring_total: np.ndarray
    survivors: tuple[str, ...]
    dropped: Mapping[str, tuple[str, ...]]
    misbehaving: Mapping[str, str]
    late: Mapping[str, int]
    complaints: Mapping[str, tuple[str, ...]]
    params: RoundParameters


class _Rejected(Exception):
    """A message refused; the reason names what was wrong."""


class SecAggCoordinator:
    """One round of SecAgg+ as seen by the coordinator.

    Args:
        config: The settings.
        owners: The owners invited to the round, by name (distinct).
        vector_length: Values per update.
        verifier: Optional: checks owners' signatures on arrival so that an
            owner with a bad signature is dropped before its neighbours refuse it.
        stream: Randomness for the round id and the neighbour graph; None keys
            a fresh `SecureStream` from os.urandom.
    """

    def __init__(
        self,
        config: SecAggConfig,
        owners: Sequence[str],
        vector_length: int,
        *,
        verifier: crypto.KeyVerifier | None = None,
        stream: SecureStream | None = None,
    ):
        names = list(owners)
        if len(set(names)) != len(names) or any(
            not isinstance(n, str) or not 1 <= len(n.encode("utf-8")) <= MAX_NAME_BYTES
            for n in names
        ):
            raise ValueError(
                f"Expected distinct owner names of 1 to {MAX_NAME_BYTES} UTF-8 bytes. "
                f"Received: {names[:10]}"
            )
        self.params = config.resolve(len(names), vector_length)
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(names)}
        self._verifier = verifier
        self._stream = stream or SecureStream()
        self.round_id = self._stream.random_bytes(16)
        self._probe = x25519.X25519PrivateKey.from_private_bytes(self._stream.random_bytes(32))
        self.stage = STAGES[0]
        self._expected: set[int] = set(range(len(names)))
        self._received: dict[int, object] = {}
        self._excluded: set[int] = set()
        self._sets: dict[str, frozenset[int]] = {}
        self._graph: dict[int, frozenset[int]] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self.dropped: dict[str, tuple[str, ...]] = {}
        self.misbehaving: dict[str, str] = {}
        self.late: dict[str, int] = {}
        self._setup = {
            i: RoundSetup(self.round_id, i, name, self.params) for i, name in enumerate(names)
        }

    # ---- messages in -------------------------------------------------------------
    def setup_messages(self) -> dict[str, RoundSetup]:
        """The `RoundSetup` for each owner (send it to start the round)."""
        return {self.names[i]: message for i, message in self._setup.items()}

    def waiting_for(self) -> tuple[str, ...]:
        """Owners asked in the current stage that have not answered yet."""
        pending = self._expected - set(self._received) - self._excluded
        return tuple(sorted(self.names[i] for i in pending))

    def receive(self, sender: str, data: bytes | object) -> bool:
        """Takes one owner message; returns whether it was accepted.

        Args:
            sender: The sender's name as authenticated by the transport.
            data: The message's bytes (or a decoded message).
        """
        index = self._index.get(sender)
        if index is None:
            self.misbehaving.setdefault(str(sender)[:MAX_NAME_BYTES], "not invited to this round")
            return False
        if index not in self._expected:  # dropped at an earlier stage: a late message
            self.late[sender] = self.late.get(sender, 0) + 1
            return False
        try:
            message = (
                decode_message(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
            )
            self._check_header(index, message)
            if self.stage != message.STAGE:
                raise _Rejected(
                    f"sent a {type(message).__name__} during stage {self.stage!r} (a replay)"
                )
            if index in self._received:
                raise _Rejected(f"sent a second {type(message).__name__} (duplicate)")
            if index in self._excluded:
                return False
            self._check_content(index, message)
        except SecAggMessageError as err:
            return self._reject(index, f"malformed message: {err}")
        except _Rejected as err:
            return self._reject(index, str(err))
        self._received[index] = message
        return True

    def _reject(self, index: int, reason: str) -> bool:
        self.misbehaving.setdefault(self.names[index], f"{reason} (stage {self.stage!r})")
        self._received.pop(index, None)
        self._excluded.add(index)
        return False

    def _check_header(self, index: int, message) -> None:
        expected = (
            AdvertiseKeys,
            ShareKeys,
            MaskedInput,
            UnmaskResponse,
        )
        if not isinstance(message, expected):
            raise _Rejected(f"sent a {type(message).__name__}, not an owner message")
        if message.round_id != self.round_id:
            raise _Rejected(
                f"sent a message of round {message.round_id.hex()}, not {self.round_id.hex()} "
                "(replayed)"
            )
        if message.sender != index:
            raise _Rejected(f"claims to be owner index {message.sender}, not {index}")

    def _check_content(self, index: int, message) -> None:
        if isinstance(message, AdvertiseKeys):
            self._check_keys(index, message)
        elif isinstance(message, ShareKeys):
            recipients = [entry.recipient for entry in message.shares]
            if recipients != sorted(self._graph[index]):
                raise _Rejected(
                    f"sent shares for owners {recipients}, not its neighbours "
                    f"{sorted(self._graph[index])}"
                )
        elif isinstance(message, MaskedInput):
            params = self.params
            vector = message.vector
            if (
                vector.size != params.vector_length
                or vector.dtype.itemsize * 8 != params.config.ring_bits
            ):
                raise _Rejected(
                    f"sent a masked vector of {vector.size} uint{vector.dtype.itemsize * 8} values, "
                    f"not {params.vector_length} uint{params.config.ring_bits} (wrong length)"
                )
        else:
            self._check_reveal(index, message)

    def _check_keys(self, index: int, message: AdvertiseKeys) -> None:
        for key in (message.channel_key, message.mask_key):
            try:
                crypto.agree(self._probe, key)
            except ValueError:
                raise _Rejected("advertised an X25519 key of small order") from None
        if self._verifier is not None:
            digest = _digest(self._setup[index])
            payload = key_payload(digest, index, self.names[index], message)
            try:
                self._verifier.verify(self.names[index], payload, message.signature)
            except AuthenticationError as err:
                raise _Rejected(f"signature does not verify: {err}") from None

    def _check_reveal(self, index: int, message: UnmaskResponse) -> None:
        request = self._requests[index]
        seeds = {entry.owner for entry in message.seed_shares}
        keys = {entry.owner for entry in message.key_shares}
        complaints = set(message.complaints)
        if not (
            seeds <= set(request.survivors)
            and keys <= set(request.dropped)
            and seeds | keys | complaints == set(request.survivors) | set(request.dropped)
        ):
            raise _Rejected(
                f"revealed seed shares of {sorted(seeds)} and key shares of {sorted(keys)}, not "
                f"what was asked (seeds of {list(request.survivors)}, keys of "
                f"{list(request.dropped)})"
            )
        for kind, entries, field in (
            (b"seed-share", message.seed_shares, "seed_share_commitment"),
            (b"key-share", message.key_shares, "key_share_commitment"),
        ):
            for entry in entries:
                dealt = self._dealt[entry.owner][index]
                expected = getattr(dealt, field)
                if (
                    share_commitment(kind, self.round_id, entry.owner, index, entry.share)
                    != expected
                ):
                    raise _Rejected(
                        f"revealed a share of {self.names[entry.owner]!r}'s secrets that does not "
                        "match the dealer's commitment"
                    )

    # ---- stage transitions -------------------------------------------------------
    def _close(self, stage: str) -> frozenset[int]:
        if self.stage != stage:
            raise RuntimeError(
                f"Expected close_{self.stage}() next. Received: a call to close_{stage}()"
            )
        answered = frozenset(self._received)
        self.dropped[stage] = tuple(sorted(self.names[i] for i in self._expected - answered))
        self._sets[stage] = answered
        return answered

    def _advance(self, stage: str, expected: frozenset[int]) -> None:
        self.stage = stage
        self._expected = set(expected)
        self._received = {}
        self._excluded = set()

    def _require_survivors(self, stage: str, answered: frozenset[int]) -> None:
        if len(answered) < self.params.min_survivors:
            raise SecAggRoundError(
                stage,
                self.dropped[stage],
                f"{len(answered)} owners answered, fewer than min_survivors="
                f"{self.params.min_survivors}; missing: {list(self.dropped[stage])}",
            )

    def close_advertise_keys(self) -> dict[str, NeighbourKeys]:
        """Ends stage 1: places the owners that advertised keys on the neighbour graph."""
        u1 = self._close("advertise_keys")
        self._require_survivors("advertise_keys", u1)
        self._keys: dict[int, AdvertiseKeys] = dict(self._received)
        self._graph = harary_graph(sorted(u1), self.params.neighbours, self._stream)
        thin = [u for u in u1 if len(self._graph[u]) < self.params.threshold]
        if thin:
            raise SecAggRoundError(
                "advertise_keys",
                (self.names[u] for u in thin),
                f"owners have fewer neighbours than the threshold {self.params.threshold}",
            )
        outgoing = {}
        for u in sorted(u1):
            entries = tuple(
                SignedKeys(
                    v,
                    self.names[v],
                    self._keys[v].channel_key,
                    self._keys[v].mask_key,
                    self._keys[v].seed_commitment,
                    self._keys[v].signature,
                )
                for v in sorted(self._graph[u])
            )
            outgoing[self.names[u]] = NeighbourKeys(self.round_id, u, entries)
        self._advance("share_keys", u1)
        return outgoing

    def close_share_keys(self) -> dict[str, ForwardedShares]:
        """Ends stage 2: forwards each owner the shares its surviving neighbours sent it."""
        u2 = self._close("share_keys")
        self._require_survivors("share_keys", u2)
        thin = [u for u in u2 if len(self._graph[u] & u2) < self.params.threshold]
        if thin:
            raise SecAggRoundError(
                "share_keys",
                (self.names[u] for u in thin),
                f"fewer than threshold={self.params.threshold} of these owners' neighbours hold "
                f"their shares (dropped: {list(self.dropped['share_keys'])})",
            )
        self._dealt = {
            u: {entry.recipient: entry for entry in self._received[u].shares} for u in u2
        }
        outgoing = {}
        for u in sorted(u2):
            entries = tuple(
                ForwardedShare(
                    v,
                    self._dealt[v][u].ciphertext,
                    self._dealt[v][u].seed_share_commitment,
                    self._dealt[v][u].key_share_commitment,
                )
                for v in sorted(self._graph[u] & u2)
            )
            outgoing[self.names[u]] = ForwardedShares(self.round_id, u, entries)
        self._advance("masked_input", u2)
        return outgoing

    def close_masked_input(self) -> dict[str, UnmaskRequest]:
        """Ends stage 3: fixes whose inputs are summed and asks them for shares."""
        u3 = self._close("masked_input")
        self._require_survivors("masked_input", u3)
        u2 = self._sets["share_keys"]
        self._inputs = {u: self._received[u].vector for u in u3}
        thin = [v for v in u2 if len(self._graph[v] & u3) < self.params.threshold]
        if thin:
            raise SecAggRoundError(
                "masked_input",
                (self.names[v] for v in thin),
                f"fewer than threshold={self.params.threshold} of these owners' neighbours are "
                f"left to reveal their shares (dropped: {list(self.dropped['masked_input'])})",
            )
        if not is_connected(u3, self._graph):
            raise SecAggRoundError(
                "masked_input",
                (self.names[u] for u in u3),
                "the survivors' neighbour graph is disconnected; unmasking would reveal "
                "partial sums",
            )
        outgoing = {}
        for u in sorted(u3):
            near = self._graph[u] & u2
            request = UnmaskRequest(
                self.round_id, u, tuple(sorted(near & u3)), tuple(sorted(near - u3))
            )
            self._requests[u] = request
            outgoing[self.names[u]] = request
        self._advance("unmasking", u3)
        return outgoing

    def close_unmasking(self) -> SecAggResult:
        """Ends stage 4: reconstructs the secrets it needs and returns the sum."""
        u4 = self._close("unmasking")
        u2, u3 = self._sets["share_keys"], self._sets["masked_input"]
        dropped = u2 - u3
        responses: dict[int, UnmaskResponse] = {r: self._received[r] for r in u4}
        seeds = self._reconstruct(u3, responses, "seed_shares")
        mask_keys = self._reconstruct(dropped, responses, "key_shares")
        bad = [
            v
            for v in u3
            if seeds[v] is None
            or seed_commitment(self.round_id, v, seeds[v]) != self._keys[v].seed_commitment
        ]
        for v in dropped:
            private = None
            if mask_keys[v] is not None:
                private = x25519.X25519PrivateKey.from_private_bytes(mask_keys[v])
            if private is None or crypto.public_bytes(private) != self._keys[v].mask_key:
                bad.append(v)
            mask_keys[v] = private
        if bad:
            raise SecAggRoundError(
                "unmasking",
                (self.names[v] for v in bad),
                "the shares these owners dealt do not reconstruct their committed secrets",
            )
        ring_total = self._unmask(u3, dropped, seeds, mask_keys)
        self.stage = "done"
        return SecAggResult(
            total=self.params.codec().decode(ring_total),
            ring_total=ring_total,
            survivors=tuple(sorted(self.names[u] for u in u3)),
            dropped=dict(self.dropped),
            misbehaving=dict(self.misbehaving),
            late=dict(self.late),
            complaints={
                self.names[r]: tuple(self.names[v] for v in response.complaints)
                for r, response in sorted(responses.items())
                if response.complaints
            },
            params=self.params,
        )

    def _reconstruct(
        self, dealers: frozenset[int], responses: Mapping[int, UnmaskResponse], field: str
    ) -> dict[int, bytes]:
        shares: dict[int, dict[int, int]] = {v: {} for v in dealers}
        for holder, response in responses.items():
            for entry in getattr(response, field):
                if entry.owner in shares:
                    shares[entry.owner][holder + 1] = entry.share
        t = self.params.threshold
        short = [v for v in dealers if len(shares[v]) < t]
        if short:
            missing = sorted(self.names[i] for i in self._expected - set(responses))
            raise SecAggRoundError(
                "unmasking",
                (self.names[v] for v in short),
                f"fewer than threshold={t} shares of these owners' "
                f"{'seeds' if field == 'seed_shares' else 'mask keys'} arrived (unmasking "
                f"responses missing or refused from {missing})",
            )
        out = {}
        for v in dealers:
            secret = reconstruct_secret(dict(sorted(shares[v].items())[:t]))
            # A value past 2^256 is no 32-byte secret: inconsistent shares (None: refused below).
            out[v] = secret.to_bytes(32, "little") if secret < 1 << 256 else None
        return out

    def _unmask(self, u3, dropped, seeds, mask_keys) -> np.ndarray:
        params = self.params
        d, bits = params.vector_length, params.config.ring_bits
        total = np.zeros(d, dtype=f"uint{bits}")
        for u in u3:
            total += self._inputs[u]
            total -= crypto.expand_mask(seeds[u], d, bits)
        for v in dropped:
            for w in self._graph[v] & u3:
                shared = crypto.agree(mask_keys[v], self._keys[w].mask_key)
                mask = crypto.expand_mask(pairwise_mask_seed(shared, self.round_id, v, w), d, bits)
                # w added +mask when w < v and -mask otherwise; take it back out.
                if w < v:
                    total -= mask
                else:
                    total += mask
        return total


def _digest(setup: RoundSetup) -> bytes:
    return hashlib.sha256(setup.digest_bytes()).digest()
