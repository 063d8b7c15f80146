"""Hypothesis stateful test: every backend against a trivially correct model of the queue rules.

The model is a plain ordered list of messages per queue and a direct reading of the
rules in :mod:`burrow.backends.base`; Hypothesis drives random sequences of puts,
takes, updates, deletes, paging, clock moves and cleaner passes through both and
compares every answer.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import unittest
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from burrow.backends.base import Backend
from burrow.core.model import Filter, Message, Update, is_expired
from burrow.testing.backends import BACKENDS

T = TypeVar("T")
ACCOUNTS = st.sampled_from(["a", "b"])
QUEUES = st.sampled_from(["q", "r"])
IDS = st.sampled_from(["m0", "m1", "m2", "m3", "m4", "m5"])
MARKERS = st.one_of(st.none(), IDS, st.just("zz-unknown"))
LIMITS = st.one_of(st.none(), st.integers(1, 4))
SECONDS = st.sampled_from([0, 1, 3, 10])
BODIES = st.binary(max_size=12)


@dataclass
class ModelMessage:
    id: str
    body: bytes
    expires: float
    hidden_until: float


class Model:
    """accounts -> queues -> ordered messages, with the contract's rules spelled out plainly."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[ModelMessage]]] = {}

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

    def find(self, a: str, q: str, mid: str) -> ModelMessage | None:
        return next((m for m in self.data.get(a, {}).get(q, []) if m.id == mid), None)

    def remove(self, a: str, q: str, doomed: list[ModelMessage]) -> None:
        queue = self.data[a][q]
        for m in doomed:
            queue.remove(m)
        if not queue:
            del self.data[a][q]
            if not self.data[a]:
                del self.data[a]


def snap(m: ModelMessage) -> Message:
    return Message(m.id, m.body, m.expires, m.hidden_until)


class BackendMachine(RuleBasedStateMachine):
    factory_name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="burrow-stateful-"))
        self.backend: Backend = BACKENDS[self.factory_name](self.tmp)
        self.run(self.backend.open())
        self.model = Model()
        self.now = 1000.0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.backend.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def deadline(self, seconds: int) -> float:
        return self.now + seconds if seconds else 0.0

    @rule(a=ACCOUNTS, q=QUEUES, mid=IDS, body=BODIES, ttl=SECONDS, hide=SECONDS)
    def put(self, a: str, q: str, mid: str, body: bytes, ttl: int, hide: int) -> None:
        expires, hidden = self.deadline(ttl), self.deadline(hide)
        created = self.run(self.backend.put_message(a, q, mid, body, expires, hidden, self.now))
        old = self.model.find(a, q, mid)
        if old is not None and not is_expired(old.expires, self.now):
            assert not created
            old.body, old.expires, old.hidden_until = body, expires, hidden
        else:
            assert created
            if old is not None:
                self.model.remove(a, q, [old])
            self.model.data.setdefault(a, {}).setdefault(q, []).append(
                ModelMessage(mid, body, expires, hidden)
            )

    @rule(a=ACCOUNTS, q=QUEUES, limit=LIMITS, marker=MARKERS, hidden=st.booleans())
    def get_messages(self, a: str, q: str, limit: int | None, marker: str | None, hidden: bool) -> None:
        f = Filter(limit, marker, hidden)
        got = self.run(self.backend.get_messages(a, q, f, self.now))
        assert got == [snap(m) for m in self.model.select(a, q, f, self.now)]

    @rule(a=ACCOUNTS, q=QUEUES, limit=LIMITS, hidden=st.booleans(), hide=SECONDS, ttl=st.none() | SECONDS)
    def update_messages(
        self, a: str, q: str, limit: int | None, hidden: bool, hide: int, ttl: int | None
    ) -> None:
        f = Filter(limit, None, hidden)
        update = Update(expires=None if ttl is None else self.deadline(ttl), hidden_until=self.deadline(hide))
        got = self.run(self.backend.update_messages(a, q, f, update, self.now))
        expected = self.model.select(a, q, f, self.now)
        for m in expected:
            m.hidden_until = self.deadline(hide)
            if ttl is not None:
                m.expires = self.deadline(ttl)
        assert got == [snap(m) for m in expected]

    @rule(a=ACCOUNTS, q=QUEUES, limit=LIMITS, marker=MARKERS, hidden=st.booleans())
    def delete_messages(self, a: str, q: str, limit: int | None, marker: str | None, hidden: bool) -> None:
        f = Filter(limit, marker, hidden)
        got = self.run(self.backend.delete_messages(a, q, f, self.now))
        expected = self.model.select(a, q, f, self.now)
        assert got == [snap(m) for m in expected]
        if expected:
            self.model.remove(a, q, expected)

    @rule(a=ACCOUNTS, q=QUEUES, mid=IDS)
    def get_message(self, a: str, q: str, mid: str) -> None:
        got = self.run(self.backend.get_message(a, q, mid, self.now))
        m = self.model.find(a, q, mid)
        assert got == (None if m is None or is_expired(m.expires, self.now) else snap(m))

    @rule(a=ACCOUNTS, q=QUEUES, mid=IDS, hide=st.none() | SECONDS)
    def update_message(self, a: str, q: str, mid: str, hide: int | None) -> None:
        update = Update(hidden_until=None if hide is None else self.deadline(hide))
        got = self.run(self.backend.update_message(a, q, mid, update, self.now))
        m = self.model.find(a, q, mid)
        if m is None or is_expired(m.expires, self.now):
            assert got is None
            return
        if hide is not None:
            m.hidden_until = self.deadline(hide)
        assert got == snap(m)

    @rule(a=ACCOUNTS, q=QUEUES, mid=IDS)
    def delete_message(self, a: str, q: str, mid: str) -> None:
        got = self.run(self.backend.delete_message(a, q, mid, self.now))
        m = self.model.find(a, q, mid)
        if m is None or is_expired(m.expires, self.now):
            assert got is None
        else:
            assert got == snap(m)
        if m is not None and got is not None:
            self.model.remove(a, q, [m])

    @rule(a=ACCOUNTS, limit=LIMITS)
    def delete_queues(self, a: str, limit: int | None) -> None:
        got = self.run(self.backend.delete_queues(a, Filter(limit=limit), self.now))
        names = list(self.model.data.get(a, {}))[: limit or None]
        assert got == names
        for name in names:
            del self.model.data[a][name]
        if a in self.model.data and not self.model.data[a]:
            del self.model.data[a]

    @rule(seconds=st.sampled_from([1, 2, 5]))
    def advance_and_clean(self, seconds: int) -> None:
        before = self.now
        self.now += seconds
        woken = self.run(self.backend.clean(self.now))
        for a in list(self.model.data):
            for q in list(self.model.data[a]):
                expired = [m for m in self.model.data[a][q] if is_expired(m.expires, self.now)]
                if expired:
                    self.model.remove(a, q, expired)
        # every queue with a message whose hide ran out in this step must be reported
        for a, queues in self.model.data.items():
            for q, msgs in queues.items():
                if any(before < m.hidden_until <= self.now for m in msgs):
                    assert (a, q) in woken

    @invariant()
    def listings_agree(self) -> None:
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
