"""Hypothesis stateful test: every backend against a trivially correct model of the queue rules.

The model is a plain ordered list of messages per queue and a direct reading of the
rules in :mod:`burrow.backends.base`; Hypothesis drives random sequences of puts,
takes, claims (plain and FIFO), FIFO sends with deduplication, moves, updates,
deletes, paging, counts, clock moves and cleaner passes through both and compares
every answer.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import unittest
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from burrow.backends.base import Backend
from burrow.core.model import Counts, Filter, Message, Sent, Update, is_expired
from burrow.testing.backends import BACKENDS

T = TypeVar("T")
# weighted towards ("a", "q") so that queues hold enough messages for claims and groups to meet
ACCOUNTS = st.sampled_from(["a", "a", "b"])
QUEUES = st.sampled_from(["q", "q", "r"])
IDS = st.sampled_from(["m0", "m1", "m2", "m3", "m4", "m5"])
#: The single-message rules pick one of the queue's messages (or an absent id) by index.
PICKS = st.integers(0, 7)
MARKERS = st.one_of(st.none(), IDS, st.just("zz-unknown"))
LIMITS = st.one_of(st.none(), st.integers(1, 4))
#: Limits of the deleting rules: emptying everything (None) is kept rare.
FEW = st.sampled_from([1, 1, 2, 2, None])
SECONDS = st.sampled_from([0, 1, 3, 10])
#: Message lifetimes and delays, mostly none, so that queues fill up.
TTLS = st.sampled_from([0, 0, 3, 10])
DELAYS = st.sampled_from([0, 0, 1, 3])
HIDES = st.sampled_from([1, 3, 10])
BODIES = st.binary(max_size=12)
METAS = st.sampled_from([b"", b"attrs", b"\x00\xff"])
GROUPS = st.sampled_from(["", "g", "h"])
DEDUPS = st.one_of(st.none(), st.sampled_from(["d1", "d2"]))
RECEIVES = st.one_of(st.none(), st.integers(0, 2))
#: One FIFO send: group, delay, deduplication key and how long the key counts (short, so that
#: records run out at the clock's steps).
SENDS = st.tuples(GROUPS, DELAYS, DEDUPS, st.sampled_from([1, 2, 4]))
QUEUE_META = b"fifo"
EVERY_QUEUE = [(a, q) for a in ("a", "b") for q in ("q", "r")]


@dataclass
class ModelMessage:
    id: str
    body: bytes
    expires: float
    hidden_until: float
    meta: bytes = b""
    receives: int = 0
    first_received: float = 0.0
    group: str = ""
    sequence: int = 0


@dataclass
class FifoState:
    """A queue's sequence counter and deduplication records (key -> id, sequence, until)."""

    counter: int = 0
    dedup: dict[str, tuple[str, int, float]] = field(default_factory=dict)


class Model:
    """accounts -> queues -> ordered messages, with the contract's rules spelled out plainly."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[ModelMessage]]] = {}
        self.fifo: dict[tuple[str, str], FifoState] = {}
        #: Queues that held only expired, uncleaned messages at some point: a backend may have
        #: dropped them already (or not), so their place among the account's queues is unknown.
        self.uncertain: set[tuple[str, str]] = set()

    def live(self, a: str, q: str, now: float) -> list[ModelMessage]:
        return [m for m in self.data.get(a, {}).get(q, []) if not is_expired(m.expires, now)]

    def select(self, a: str, q: str, f: Filter, now: float) -> list[ModelMessage]:
        msgs = self.data.get(a, {}).get(q, [])
        ids = [m.id for m in msgs]
        start = ids.index(f.marker) + 1 if f.marker in ids else 0
        out = []
        for m in msgs[start:]:
            if is_expired(m.expires, now) or (m.hidden_until > now and not f.match_hidden):
                continue
            out.append(m)
            if f.limit is not None and len(out) >= f.limit:
                break
        return out

    def claimable(self, a: str, q: str, limit: int, fifo: bool, now: float) -> list[ModelMessage]:
        live = self.live(a, q, now)
        blocked = {m.group for m in live if m.hidden_until > now} if fifo else set()
        return [m for m in live if m.hidden_until <= now and m.group not in blocked][:limit]

    def find(self, a: str, q: str, mid: str) -> ModelMessage | None:
        return next((m for m in self.data.get(a, {}).get(q, []) if m.id == mid), None)

    def find_live(self, a: str, q: str, mid: str, now: float) -> ModelMessage | None:
        m = self.find(a, q, mid)
        return None if m is None or is_expired(m.expires, now) else m

    def append(self, a: str, q: str, m: ModelMessage) -> None:
        self.data.setdefault(a, {}).setdefault(q, []).append(m)

    def remove(self, a: str, q: str, doomed: list[ModelMessage], prune: bool = True) -> None:
        """Remove messages; ``prune=False`` when the same atomic write adds one right after."""
        queue = self.data[a][q]
        for m in doomed:
            queue.remove(m)
        if not queue and prune:
            self.drop_queue(a, q)

    def drop_queue(self, a: str, q: str) -> None:
        del self.data[a][q]
        self.uncertain.discard((a, q))
        if not self.data[a]:
            del self.data[a]


def snap(m: ModelMessage) -> Message:
    return Message(
        m.id, m.body, m.expires, m.hidden_until, m.meta, m.receives, m.first_received, m.group, m.sequence
    )


class BackendMachine(RuleBasedStateMachine):
    factory_name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="burrow-stateful-"))
        # before the loop exists: a factory may skip the test (Redis absent), which would
        # leave an unclosed loop to warn about in some later test
        self.backend: Backend = BACKENDS[self.factory_name](self.tmp)
        self.loop = asyncio.new_event_loop()
        self.run(self.backend.open())
        self.model = Model()
        self.now = 1000.0
        self.last_clean = self.now
        self.sends = 0
        #: Queues a step may have changed, for the per-step comparison of their whole content.
        self.touched: set[tuple[str, str]] = set(EVERY_QUEUE)
        # FIFO state lives with queue metadata, so every queue the machine sends to has some
        for a, q in EVERY_QUEUE:
            self.run(self.backend.set_queue_meta(a, q, QUEUE_META))
            self.model.fifo[a, q] = FifoState()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.backend.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def deadline(self, seconds: int) -> float:
        return self.now + seconds if seconds else 0.0

    def pick(self, a: str, q: str, index: int) -> str:
        """One of the queue's message ids (expired ones included), or an absent one."""
        ids = [m.id for m in self.model.data.get(a, {}).get(q, [])] + ["zz-absent"]
        return ids[index % len(ids)]

    @initialize(sends=st.lists(SENDS, min_size=2, max_size=6), body=BODIES)
    def fill(self, sends: list[tuple[str, int, str | None, int]], body: bytes) -> None:
        """Start with a few FIFO messages in ("a", "q"), so that claims meet groups from the first step."""
        for group, hide, dedup, window in sends:
            self.send_message("a", "q", body, 0, hide, b"", group, dedup, window)

    @rule(a=ACCOUNTS, q=QUEUES, mid=IDS, reuse=st.none() | PICKS, body=BODIES, ttl=TTLS, hide=DELAYS)
    def put(self, a: str, q: str, mid: str, reuse: int | None, body: bytes, ttl: int, hide: int) -> None:
        self.touched.add((a, q))
        if reuse is not None:
            mid = self.pick(a, q, reuse)  # replace one of the queue's messages (a sent one too)
        expires, hidden = self.deadline(ttl), self.deadline(hide)
        created = self.run(self.backend.put_message(a, q, mid, body, expires, hidden, self.now))
        old = self.model.find(a, q, mid)
        if old is not None and not is_expired(old.expires, self.now):
            assert not created
            # a replaced message is a new message in the old position
            old.body, old.expires, old.hidden_until, old.meta = body, expires, hidden, b""
            old.receives, old.first_received, old.group, old.sequence = 0, 0.0, "", 0
        else:
            assert created
            if old is not None:
                self.model.remove(a, q, [old], prune=False)
            self.model.append(a, q, ModelMessage(mid, body, expires, hidden))

    @rule(
        a=ACCOUNTS,
        q=QUEUES,
        sends=st.lists(SENDS, min_size=1, max_size=3),
        body=BODIES,
        ttl=TTLS,
        meta=METAS,
    )
    def send_messages(
        self,
        a: str,
        q: str,
        sends: list[tuple[str, int, str | None, int]],
        body: bytes,
        ttl: int,
        meta: bytes,
    ) -> None:
        """A few FIFO sends in a row (groups, delays and deduplication keys of their own)."""
        for group, hide, dedup, window in sends:
            self.send_message(a, q, body, ttl, hide, meta, group, dedup, window)

    def send_message(
        self,
        a: str,
        q: str,
        body: bytes,
        ttl: int,
        hide: int,
        meta: bytes,
        group: str,
        dedup: str | None,
        window: int,
    ) -> None:
        self.touched.add((a, q))
        mid = f"s{self.sends}"
        self.sends += 1
        expires, hidden, until = self.deadline(ttl), self.deadline(hide), self.now + window
        got = self.run(
            self.backend.send_message(a, q, mid, body, expires, hidden, self.now, meta, group, dedup, until)
        )
        state = self.model.fifo[a, q]
        if dedup is not None and dedup in state.dedup and state.dedup[dedup][2] > self.now:
            earlier, seq, _ = state.dedup[dedup]
            assert got == Sent(earlier, seq, False)
            return
        state.counter += 1
        assert got == Sent(mid, state.counter, True)
        self.model.append(a, q, ModelMessage(mid, body, expires, hidden, meta, 0, 0.0, group, state.counter))
        if dedup is not None:
            state.dedup[dedup] = (mid, state.counter, until)

    @rule(a=ACCOUNTS, q=QUEUES)
    def remove_queue_meta(self, a: str, q: str) -> None:
        """Remove and re-create the metadata: the queue's FIFO state starts over."""
        self.run(self.backend.set_queue_meta(a, q, None))
        self.run(self.backend.set_queue_meta(a, q, QUEUE_META))
        self.model.fifo[a, q] = FifoState()

    @rule(a=ACCOUNTS, q=QUEUES, limit=st.integers(1, 4), hide=HIDES)
    def claim_plain(self, a: str, q: str, limit: int, hide: int) -> None:
        self.claim(a, q, limit, hide, fifo=False)

    @rule(a=ACCOUNTS, q=QUEUES, limit=st.integers(1, 4), hide=HIDES)
    def claim_fifo(self, a: str, q: str, limit: int, hide: int) -> None:
        self.claim(a, q, limit, hide, fifo=True)

    def claim(self, a: str, q: str, limit: int, hide: int, fifo: bool) -> None:
        self.touched.add((a, q))
        got = self.run(self.backend.claim(a, q, limit, self.now + hide, self.now, fifo))
        expected = self.model.claimable(a, q, limit, fifo, self.now)
        for m in expected:
            if m.receives == 0:
                m.first_received = self.now
            m.receives += 1
            m.hidden_until = self.now + hide
        assert got == [snap(m) for m in expected]

    @rule(
        a=ACCOUNTS,
        q=QUEUES,
        index=PICKS,
        to_a=ACCOUNTS,
        to_q=QUEUES,
        ttl=SECONDS,
        meta=st.none() | METAS,
        receives=st.none() | st.integers(0, 3),
        expect=RECEIVES,
    )
    def move_message(
        self,
        a: str,
        q: str,
        index: int,
        to_a: str,
        to_q: str,
        ttl: int,
        meta: bytes | None,
        receives: int | None,
        expect: int | None,
    ) -> None:
        if (a, q) == (to_a, to_q):
            to_q = "r" if q == "q" else "q"  # a move goes to another queue
        mid = self.pick(a, q, index)
        self.touched |= {(a, q), (to_a, to_q)}
        expires = self.deadline(ttl)
        move = self.backend.move_message
        got = self.run(
            move(a, q, mid, to_a, to_q, expires, self.now, meta, receives=receives, expect_receives=expect)
        )
        m = self.model.find_live(a, q, mid, self.now)
        if m is None or (expect is not None and m.receives != expect):
            assert got is None
            return
        assert got is not None and got.hidden_until <= self.now  # visible
        self.model.remove(a, q, [m])
        old = self.model.find(to_a, to_q, mid)
        if old is not None:
            self.model.remove(to_a, to_q, [old], prune=False)
        moved = ModelMessage(
            mid,
            m.body,
            expires,
            got.hidden_until,
            m.meta if meta is None else meta,
            receives or 0,
            m.first_received if receives else 0.0,
            m.group,
            m.sequence,
        )
        self.model.append(to_a, to_q, moved)
        assert got == snap(moved)

    @rule(a=ACCOUNTS, q=QUEUES, limit=LIMITS, marker=MARKERS, hidden=st.booleans())
    def get_messages(self, a: str, q: str, limit: int | None, marker: str | None, hidden: bool) -> None:
        f = Filter(limit, marker, hidden)
        got = self.run(self.backend.get_messages(a, q, f, self.now))
        assert got == [snap(m) for m in self.model.select(a, q, f, self.now)]

    @rule(
        a=ACCOUNTS,
        q=QUEUES,
        limit=LIMITS,
        hidden=st.booleans(),
        hide=SECONDS,
        ttl=st.none() | SECONDS,
        meta=st.none() | METAS,
    )
    def update_messages(
        self, a: str, q: str, limit: int | None, hidden: bool, hide: int, ttl: int | None, meta: bytes | None
    ) -> None:
        self.touched.add((a, q))
        f = Filter(limit, None, hidden)
        update = Update(
            expires=None if ttl is None else self.deadline(ttl), hidden_until=self.deadline(hide), meta=meta
        )
        got = self.run(self.backend.update_messages(a, q, f, update, self.now))
        expected = self.model.select(a, q, f, self.now)
        for m in expected:
            m.hidden_until = self.deadline(hide)
            if ttl is not None:
                m.expires = self.deadline(ttl)
            if meta is not None:
                m.meta = meta
        assert got == [snap(m) for m in expected]

    @rule(a=ACCOUNTS, q=QUEUES, limit=FEW, marker=MARKERS, hidden=st.booleans())
    def delete_messages(self, a: str, q: str, limit: int | None, marker: str | None, hidden: bool) -> None:
        self.touched.add((a, q))
        f = Filter(limit, marker, hidden)
        got = self.run(self.backend.delete_messages(a, q, f, self.now))
        expected = self.model.select(a, q, f, self.now)
        assert got == [snap(m) for m in expected]
        if expected:
            self.model.remove(a, q, expected)

    @rule(a=ACCOUNTS, q=QUEUES, index=PICKS)
    def get_message(self, a: str, q: str, index: int) -> None:
        mid = self.pick(a, q, index)
        got = self.run(self.backend.get_message(a, q, mid, self.now))
        m = self.model.find_live(a, q, mid, self.now)
        assert got == (None if m is None else snap(m))

    @rule(a=ACCOUNTS, q=QUEUES, index=PICKS, hide=st.none() | SECONDS, meta=st.none() | METAS)
    def update_message(self, a: str, q: str, index: int, hide: int | None, meta: bytes | None) -> None:
        self.touched.add((a, q))
        mid = self.pick(a, q, index)
        update = Update(hidden_until=None if hide is None else self.deadline(hide), meta=meta)
        got = self.run(self.backend.update_message(a, q, mid, update, self.now))
        m = self.model.find_live(a, q, mid, self.now)
        if m is None:
            assert got is None
            return
        if hide is not None:
            m.hidden_until = self.deadline(hide)
        if meta is not None:
            m.meta = meta
        assert got == snap(m)

    @rule(a=ACCOUNTS, q=QUEUES, index=PICKS, expect=RECEIVES)
    def delete_message(self, a: str, q: str, index: int, expect: int | None) -> None:
        self.touched.add((a, q))
        mid = self.pick(a, q, index)
        got = self.run(self.backend.delete_message(a, q, mid, self.now, expect_receives=expect))
        m = self.model.find_live(a, q, mid, self.now)
        if m is None or (expect is not None and m.receives != expect):
            assert got is None
            return
        assert got == snap(m)
        self.model.remove(a, q, [m])

    @rule(a=ACCOUNTS, limit=FEW)
    def delete_queues(self, a: str, limit: int | None) -> None:
        self.touched |= {(a, "q"), (a, "r")}
        queues = self.model.data.get(a, {})
        uncertain = [q for q in queues if (a, q) in self.model.uncertain]
        if uncertain:
            # which queues come first is up to the backend: delete them all and check the rest
            got = self.run(self.backend.delete_queues(a, Filter(), self.now))
            assert {q for q in queues if self.model.live(a, q, self.now)} <= set(got) <= set(queues)
            assert [q for q in got if q not in uncertain] == [q for q in queues if q not in uncertain]
            names = list(queues)
        else:
            got = self.run(self.backend.delete_queues(a, Filter(limit=limit), self.now))
            names = list(queues)[: limit or None]
            assert got == names
        for name in names:
            self.model.drop_queue(a, name)

    @rule(seconds=st.sampled_from([1, 2, 5]))
    def advance(self, seconds: int) -> None:
        """Time passes with no cleaner: deadlines must hold by themselves."""
        self.now += seconds
        self.touched = set(EVERY_QUEUE)

    @rule(seconds=st.sampled_from([1, 2, 5]), again=st.booleans())
    def advance_and_clean(self, seconds: int, again: bool) -> None:
        since = self.last_clean
        self.now += seconds
        self.last_clean = self.now
        self.touched = set(EVERY_QUEUE)
        woken = self.run(self.backend.clean(self.now, since))
        if again:  # another cleaner sharing the store asks about the same window
            woken = self.run(self.backend.clean(self.now, since))
        # exactly the queues holding an unexpired message whose hide ran out in (since, now]
        expected = {
            (a, q)
            for a, queues in self.model.data.items()
            for q in queues
            if any(since < m.hidden_until <= self.now for m in self.model.live(a, q, self.now))
        }
        # one whose message expired meanwhile may be reported too
        allowed = {
            (a, q)
            for a, queues in self.model.data.items()
            for q, msgs in queues.items()
            if any(since < m.hidden_until <= self.now for m in msgs)
        }
        assert len(woken) == len(set(woken))
        assert expected <= set(woken) <= allowed
        for a in list(self.model.data):
            for q in list(self.model.data[a]):
                expired = [m for m in self.model.data[a][q] if is_expired(m.expires, self.now)]
                if expired:
                    self.model.remove(a, q, expired)

    @invariant()
    def queues_agree(self) -> None:
        """The whole content (all per-message data, in order) and counts of every queue the
        last step may have changed match the model."""
        for a, q in sorted(self.touched):
            got = self.run(self.backend.get_messages(a, q, Filter(match_hidden=True), self.now))
            live = self.model.live(a, q, self.now)
            assert got == [snap(m) for m in live]
            visible = sum(m.hidden_until <= self.now for m in live)
            in_flight = sum(m.hidden_until > self.now and m.receives > 0 for m in live)
            counts = self.run(self.backend.count(a, q, self.now))
            assert counts == Counts(visible, in_flight, len(live) - visible - in_flight)
        self.touched.clear()

    @invariant()
    def listings_agree(self) -> None:
        for a, queues in self.model.data.items():
            for q in queues:
                if not self.model.live(a, q, self.now):
                    self.model.uncertain.add((a, q))
        accounts = self.run(self.backend.list_accounts(Filter(), self.now))
        # expired-but-uncleaned messages may keep a queue listed until the next clean
        assert set(accounts) >= {
            a for a in self.model.data if any(self.model.live(a, q, self.now) for q in self.model.data[a])
        }
        assert set(accounts) <= set(self.model.data)


def _machine_tests() -> dict[str, type[unittest.TestCase]]:
    tests: dict[str, type[unittest.TestCase]] = {}
    for name in sorted(BACKENDS):
        machine: Any = type(f"Machine_{name}", (BackendMachine,), {"factory_name": name})
        case: type[unittest.TestCase] = machine.TestCase
        case.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)  # type: ignore[attr-defined]
        tests[f"TestStateful_{name.replace('-', '_')}"] = case
    return tests


globals().update(_machine_tests())
