"""The two errors secure aggregation raises on purpose.

Both are `PartyError`s (a party misbehaved, dropped or cannot be served), so an
engine that catches `PartyError` for dead owners catches these too.
"""

from __future__ import annotations

from collections.abc import Iterable

from privkeras.errors import PartyError

__all__ = ["SecAggMessageError", "SecAggRoundError"]


class SecAggMessageError(PartyError, ValueError):
    """A secure-aggregation message is malformed, out of place or inconsistent.

    Raised by every decoder (`decode_message`, `Message.from_bytes`) and by an
    owner that receives a coordinator message it must refuse.
    """


class SecAggRoundError(PartyError):
    """A round cannot finish correctly; no aggregate is returned.

    Attributes:
        stage: The stage that failed: `"advertise_keys"`, `"share_keys"`,
            `"masked_input"` or `"unmasking"`.
        owners: The owners the failure is about, sorted (for example the
            owners whose masks can no longer be removed, or that dropped).
    """

    def __init__(self, stage: str, owners: Iterable[str], message: str):
        self.stage = stage
        self.owners = tuple(sorted(owners))
        super().__init__(f"Secure aggregation failed at stage {stage!r}: {message}")
