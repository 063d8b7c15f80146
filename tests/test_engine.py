"""The queue engine on its own: defaults, caps, events and long polls, on a manual clock.

Every backend runs underneath (the ``backend`` fixture), so what is checked here is the
engine's own part: relative seconds become deadlines on the injected clock, caps
apply, every write that can make a message visible wakes the queue's waiters, and a
long poll ends at its deadline on that clock (no test sleeps for it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from burrow.backends.base import Backend
from burrow.config import Settings
from burrow.core.model import Filter, Message
from burrow.engine import Engine
from burrow.notify import LocalNotifier, QueueKey
from burrow.testing.clock import ManualClock

ALL = Filter(match_hidden=True)


class CountingNotifier(LocalNotifier):
    """The in-process notifier, recording every event it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[QueueKey] = []

    def publish(self, key: QueueKey, visible: int | None = None) -> None:
        self.events.append(key)
        super().publish(key, visible)


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[Engine]:
    settings = Settings(default_ttl=100, default_hide=0, max_wait=10, max_limit=3, clean_interval=3600)
    # The fixture's backend is opened and checked by conftest; the engine only drives it.
    e = Engine(backend, settings, ManualClock(1000.0), CountingNotifier())
    yield e
    e.drain()
    await backend.delete_accounts(Filter(), 0.0)


def clock(e: Engine) -> ManualClock:
    assert isinstance(e.clock, ManualClock)
    return e.clock


def events(e: Engine) -> list[QueueKey]:
    assert isinstance(e.notifier, CountingNotifier)
    return e.notifier.events


async def parked(e: Engine, count: int = 1) -> None:
    for _ in range(1000):  # by time, not loop turns: a networked store answers after real time
        if e.waiting >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no waiter parked")


async def test_defaults_and_deadlines_on_the_clock(engine: Engine) -> None:
    assert await engine.put_message("a", "q", "m", b"x")
    assert await engine.put_message("a", "q", "h", b"y", ttl=0, hide=5)
    m, h = await engine.get_messages("a", "q", ALL)
    assert (m.expires, m.hidden_until) == (1100.0, 0.0)  # default ttl 100, default hide 0
    assert (h.expires, h.hidden_until) == (0.0, 1005.0)  # ttl 0 = never expires
    clock(engine).advance(100)
    assert [x.id for x in await engine.get_messages("a", "q", ALL)] == ["h"]  # m expired


async def test_list_limit_is_capped(engine: Engine) -> None:
    for i in range(5):
        await engine.put_message("a", "q", f"m{i}", b"x")
    assert len(await engine.get_messages("a", "q", Filter())) == 3
    assert len(await engine.get_messages("a", "q", Filter(limit=1000))) == 3
    assert len(await engine.get_messages("a", "q", Filter(limit=2))) == 2


async def test_every_visible_making_write_publishes_and_hidden_ones_do_not(engine: Engine) -> None:
    await engine.put_message("a", "q", "m", b"x", hide=10)
    assert events(engine) == []  # hidden: nothing to wake for
    await engine.update_message("a", "q", "m", None, 0)
    assert events(engine) == [("a", "q")]
    await engine.move("a", "q", "m", "a", "dlq", 100)
    assert events(engine)[-1] == ("a", "dlq")
    await engine.update_messages("a", "dlq", Filter(), None, 0)
    assert events(engine)[-1] == ("a", "dlq")
    await engine.delete_messages("a", "dlq", Filter())


async def test_long_poll_times_out_on_the_engine_clock(engine: Engine) -> None:
    poll = asyncio.create_task(engine.claim("a", "q", 1, 30, wait=4))
    await parked(engine)
    clock(engine).advance(3.9)
    await asyncio.sleep(0)
    assert not poll.done()
    clock(engine).advance(0.1)
    assert await poll == []
    assert engine.waiting == 0


async def test_long_poll_wait_is_capped(engine: Engine) -> None:
    poll = asyncio.create_task(engine.get_messages("a", "q", Filter(), wait=1000))
    await parked(engine)
    clock(engine).advance(10)  # max_wait
    assert await poll == []


async def test_long_poll_woken_by_create(engine: Engine) -> None:
    poll = asyncio.create_task(engine.claim("a", "q", 1, 30, wait=5))
    await parked(engine)
    await engine.put_message("a", "q", "m", b"x")
    (m,) = await poll
    assert (m.id, m.receives, m.hidden_until, m.first_received) == ("m", 1, 1030.0, 1000.0)
    await engine.delete_message("a", "q", "m")


async def test_long_poll_woken_when_a_hide_runs_out(engine: Engine) -> None:
    await engine.put_message("a", "q", "m", b"x", hide=2)
    poll = asyncio.create_task(engine.delete_messages("a", "q", Filter(limit=1), wait=5))
    await parked(engine)
    clock(engine).advance(2)
    await engine.clean()  # the cleaner reports the hide that ran out
    assert [m.id for m in await poll] == ["m"]


async def test_fifo_group_unblocked_by_delete_wakes_a_receiver(engine: Engine) -> None:
    for i in range(2):
        sent = await engine.send("a", "f", f"m{i}", b"x", 100, 0, b"", "g", f"d{i}", 300)
        assert (sent.created, sent.sequence) == (True, i + 1)
    (first,) = await engine.claim("a", "f", 1, 30, fifo=True)
    assert first.id == "m0"
    assert await engine.claim("a", "f", 1, 30, fifo=True) == []  # group g is blocked while m0 is out
    poll = asyncio.create_task(engine.claim("a", "f", 1, 30, wait=5, fifo=True))
    await parked(engine)
    await engine.delete_message("a", "f", "m0", expect_receives=first.receives)
    (second,) = await poll
    assert second.id == "m1"
    await engine.delete_message("a", "f", "m1")
    await engine.set_queue_meta("a", "f", None)


async def test_receipt_delete_needs_the_latest_receive(engine: Engine) -> None:
    await engine.put_message("a", "q", "m", b"x")
    (m,) = await engine.claim("a", "q", 1, 0)  # visible again at once (VisibilityTimeout 0)
    (again,) = await engine.claim("a", "q", 1, 30)
    assert (m.receives, again.receives) == (1, 2)
    assert await engine.delete_message("a", "q", "m", expect_receives=1) is None
    gone = await engine.delete_message("a", "q", "m", expect_receives=2)
    assert isinstance(gone, Message) and gone.id == "m"


async def test_drain_answers_parked_polls_and_stops_parking(engine: Engine) -> None:
    polls = [asyncio.create_task(engine.claim("a", "q", 1, 30, wait=10)) for _ in range(3)]
    await parked(engine, 3)
    engine.drain()
    assert await asyncio.gather(*polls) == [[], [], []]
    assert await engine.get_messages("a", "q", Filter(), wait=10) == []  # does not park
    assert engine.waiting == 0


async def settled(takers: list[asyncio.Task[list[Message]]], done: int, e: Engine, waiting: int) -> None:
    """Wait until ``done`` takers finished and ``waiting`` polls are parked, then a little more
    (a store across the network answers after some loop turns, not within a fixed few), and
    check that nothing more happened: a herd would finish or unpark more than that."""
    for _ in range(400):
        if sum(t.done() for t in takers) >= done and e.waiting == waiting:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    assert (sum(t.done() for t in takers), e.waiting) == (done, waiting)


async def test_a_create_wakes_one_taker_and_every_reader(engine: Engine) -> None:
    takers = [asyncio.create_task(engine.claim("a", "q", 1, 30, wait=10)) for _ in range(5)]
    # readers that look at hidden messages too, so the taker's hide does not hide it from them
    readers = [asyncio.create_task(engine.get_messages("a", "q", ALL, wait=10)) for _ in range(3)]
    await parked(engine, 8)
    await engine.put_message("a", "q", "m", b"x")
    for reader in readers:
        assert [m.id for m in await reader] == ["m"]
    await settled(takers, 1, engine, 4)  # no herd: one woken, one taken; the others still parked
    done = [t for t in takers if t.done()]
    assert [m.id for m in done[0].result()] == ["m"]
    await engine.put_message("a", "q", "n", b"y")
    await engine.put_message("a", "q", "o", b"z")
    await settled(takers, 3, engine, 2)
    clock(engine).advance(10)
    got = sorted(m.id for found in await asyncio.gather(*takers) for m in found)
    assert got == ["m", "n", "o"]


async def test_a_woken_taker_that_goes_away_passes_its_wake_up_on(engine: Engine) -> None:
    first = asyncio.create_task(engine.claim("a", "q", 1, 30, wait=10))
    await parked(engine)
    second = asyncio.create_task(engine.claim("a", "q", 1, 30, wait=10))
    await parked(engine, 2)
    await engine.put_message("a", "q", "m", b"x")  # wakes the oldest taker: first
    first.cancel()  # its client went away before it could retry
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert [m.id for m in await asyncio.wait_for(second, 1)] == ["m"]
