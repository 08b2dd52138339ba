"""The random streams each party, pair of parties and the dealer hold.

Every share, mask and triple in the MPC runtime is drawn from one of these
`SecureStream`s. With `seed=None` the root key comes from `os.urandom`; with
an integer seed every stream is derived from it (tests only), so a run is
reproducible bit for bit on every kernel library.

Notes:
    A stream shared by two parties (a *pairwise seed*) lets them draw the
    same values without talking: ABY3's pseudo-random zero sharing (Mohassel
    and Rindal, CCS 2018, section 2.2) and the dealer's seed-compressed
    triples (the dealer sends party 0 nothing: party 0 expands its seed) rest
    on it. In a deployment the pairwise keys come from a key exchange; in
    this process they are forks of one root key. A value drawn from a pair
    stream is drawn once here and used by both holders, which is what each
    of them would compute on its own.
"""

from __future__ import annotations

from privkeras.core.random import SecureStream

__all__ = ["PartyStreams"]


class PartyStreams:
    """Named forks of one root stream for the parties of one runtime.

    Args:
        num_parties: Number of compute parties.
        seed: None (keys from `os.urandom`) or an int (reproducible, tests only).
    """

    def __init__(self, num_parties: int, seed: int | None = None):
        self.num_parties = num_parties
        self.seeded = seed is not None
        self._root = SecureStream(seed)
        self._cache: dict[str, SecureStream] = {}

    def _get(self, label: str) -> SecureStream:
        stream = self._cache.get(label)
        if stream is None:
            stream = self._cache[label] = self._root.fork(label)
        return stream

    def party(self, i: int) -> SecureStream:
        """Randomness private to compute party `i`."""
        return self._get(f"party/{i}")

    def pair(self, i: int, j: int) -> SecureStream:
        """Randomness shared by compute parties `i` and `j` (a pairwise seed)."""
        low, high = sorted((i, j))
        return self._get(f"pair/{low}/{high}")

    def dealer(self, i: int | None = None, dealer: str = "dealer") -> SecureStream:
        """A dealer's private randomness, or the seed it shares with party `i`.

        `dealer` names who deals: Pond's dealer, or a compute party that deals
        for two others (ABY3's helper `"p2"`), with seeds apart from its others.
        """
        label = "dealer" if dealer == "dealer" else f"helper/{dealer}"
        return self._get(label if i is None else f"{label}/{i}")

    def common(self) -> SecureStream:
        """Randomness every compute party knows (a seed agreed by all of them)."""
        return self._get("common")

    def owner(self, owner: str, *parties: int) -> SecureStream:
        """A data owner's private randomness, or the seed it shares with `parties`."""
        return self._get("/".join(["owner", owner, *(str(p) for p in sorted(parties))]))
