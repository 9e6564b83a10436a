"""One progress bar for every long loop: tqdm on stderr when enabled, nothing at all when not.

tqdm is imported only when a bar is enabled and first moves, so disabled bars (``--json``, a
service job, a test) cost nothing and print nothing. Lives at the lowest layer so featurizer,
classifiers and the CLIs share it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class ProgressBar:
    """A tqdm bar on ``stream`` (default: ``sys.stderr`` at the time the bar is drawn).

    Counts either way: ``update(n)`` adds ``n``; ``advance_to(done, total=...)`` sets the
    position, for callbacks that report totals. The bar is created on the first move, and a first
    ``advance_to`` starts it at ``done``, so work skipped (resumed) before this run does not count
    in the rate and ETA. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        total: int | None = None,
        desc: str | None = None,
        unit: str = "it",
        leave: bool = False,
        smoothing: float = 0.3,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = enabled
        self.total = total
        self.desc = desc
        self.unit = unit
        self.leave = leave
        self.smoothing = smoothing
        self.stream = stream
        self._bar: Any = None
        self._done = 0

    @property
    def done(self) -> int:
        """Units counted so far (also when disabled)."""
        return self._done

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units."""
        if self.enabled:
            self._ensure_bar(initial=self._done).update(n)
        self._done += n

    def advance_to(self, done: int, *, total: int | None = None) -> None:
        """Set the position to ``done`` (and the total, when it is known or has changed)."""
        if total is not None:
            self.total = total
        if not self.enabled:
            self._done = done
            return
        bar = self._ensure_bar(initial=done)
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - self._done)
        self._done = done

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs after the bar (e.g. the current score)."""
        if self.enabled:
            self._ensure_bar(initial=self._done).set_postfix(values, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_bar(self, *, initial: int) -> Any:
        if self._bar is None:
            from tqdm import tqdm

            self._done = initial
            self._bar = tqdm(
                total=self.total,
                initial=initial,
                desc=self.desc,
                unit=self.unit,
                leave=self.leave,
                smoothing=self.smoothing,
                file=self.stream if self.stream is not None else sys.stderr,
                dynamic_ncols=True,
            )
        return self._bar
