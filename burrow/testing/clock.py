"""A clock for tests: time stands still until the test moves it, timers included."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable

from burrow.clock import Clock


class _Timer:
    __slots__ = ("callback", "cancelled", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(Clock):
    """Reads ``now``; :meth:`advance` moves it and fires the timers that came due.

    Thread-safe: a test may advance it from outside the server's loop thread; timers
    always run on the loop that set them.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(asyncio.get_running_loop(), callback)
        if when <= self.now:
            timer.loop.call_soon(self._fire, timer)
            return timer
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward (or back, firing nothing) and run every timer now due."""
        with self._lock:
            self.now += seconds
            due = []
            while self._timers and self._timers[0][0] <= self.now:
                due.append(heapq.heappop(self._timers)[2])
        for timer in due:
            if not timer.loop.is_closed():
                timer.loop.call_soon_threadsafe(self._fire, timer)

    @property
    def pending(self) -> int:
        """Timers set and not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    @staticmethod
    def _fire(timer: _Timer) -> None:
        if not timer.cancelled:
            timer.callback()
