"""``Interval``: "at most once every N seconds", for checks that poll a change record (overlay versions, aliases)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Interval:
    """True from :meth:`due` at most once per ``seconds`` (the first call is due).

    Example:
        >>> now = [0.0]; every = Interval(1.0, clock=lambda: now[0])
        >>> every.due(), every.due(), (now.__setitem__(0, 1.0), every.due())[1]
        (True, False, True)
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._next = float("-inf")

    def due(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True

    def reset(self) -> None:
        """Make the next call due."""
        self._next = float("-inf")
