"""The engine's clock: wall time, and timers that fire at a time *on that clock*.

Only the engine reads time. Deadlines (``ttl``, ``hide``, a long poll's ``wait``) are
absolute times on this clock, so a test that swaps in
:class:`burrow.testing.clock.ManualClock` moves every one of them by hand, long polls
included, without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock:
    """Real time (``time.time``); timers run on the event loop."""

    def __call__(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the running loop once this clock reads ``when`` or later."""
        return asyncio.get_running_loop().call_later(max(0.0, when - self()), callback)
