"""Keras's progress bar, by round: the bar counts the owners that answered.

`RoundProgress` is a Keras callback that prints `Round r/R` and a
`keras.utils.Progbar` whose target is the round's cohort and whose unit is an
owner; the end of a round shows its logs (loss, metrics, owners, epsilon),
as `ProgbarLogger` does for epochs.
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["RoundProgress"]


class RoundProgress(keras.callbacks.Callback):
    """Progress of federated rounds (`verbose=1`: a bar; `verbose=2`: one line a round).

    Args:
        rounds: Rounds in the fit (for `Round r/R`).
        verbose: 1 or 2.
        what: `"Round"`, or `"Evaluation"` for `evaluate`.
    """

    def __init__(self, rounds: int, verbose: int, what: str = "Round"):
        super().__init__()
        self.rounds = rounds
        self.verbose = verbose
        self.what = what
        self.cohort_size: int | None = None
        self._bar: keras.utils.Progbar | None = None
        self._seen = 0

    def begin(self, cohort_size: int) -> None:
        """Sets the next round's target (the number of owners asked)."""
        self.cohort_size = cohort_size

    def _start(self, header: str | None) -> None:
        if header:
            print(header, flush=True)
        self._seen = 0
        self._bar = keras.utils.Progbar(
            target=max(self.cohort_size or 0, 1), verbose=self.verbose, unit_name="owner"
        )

    def answered(self, name: str) -> None:
        """One more owner (`name`) answered."""
        self._seen += 1
        if self._bar is not None and self.verbose == 1:
            self._bar.update(self._seen, finalize=False)

    def _finish(self, logs: dict[str, Any] | None) -> None:
        if self._bar is not None:  # the count shown is the owners that answered
            self._bar.update(self._seen, list((logs or {}).items()), finalize=True)
        self._bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start(f"{self.what} {epoch + 1}/{self.rounds}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._finish(logs)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.what != "Round":
            self._start(None)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.what != "Round":
            self._finish(logs)
