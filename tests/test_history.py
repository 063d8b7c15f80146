"""The history checker (:mod:`burrow.testing.history`) on hand-built histories: each anomaly is
detected, and the timing rules give the server the benefit of every doubt."""

from __future__ import annotations

import itertools
import math

import pytest

from burrow.testing.history import MARGIN, History, Kind, Op, Outcome, Report, Stamp, check

OK, FAILED, UNKNOWN = Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN


class Ops:
    """Builds operations on one timeline: real time and the server's clock read the same."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._ids = itertools.count(1)

    def add(
        self,
        kind: Kind,
        *values: str,
        at: float,
        took: float = 0.01,
        outcome: Outcome = OK,
        hide: float = 0,
        ttl: float = 0,
        receipt: Op | None = None,
    ) -> Op:
        end = at + took
        op = Op(
            next(self._ids),
            kind,
            "c",
            invoked=at,
            server_lo=at,
            values=values,
            hide=hide,
            ttl=ttl,
            receipt=None if receipt is None else receipt.id,
            outcome=outcome,
            completed=end,
            server_hi=math.inf if outcome is UNKNOWN else end,
        )
        self.ops.append(op)
        return op

    def create(self, value: str, at: float, outcome: Outcome = OK, hide: float = 0, ttl: float = 0) -> Op:
        return self.add("create", value, at=at, outcome=outcome, hide=hide, ttl=ttl)

    def take(self, *values: str, at: float, hide: float = 5, took: float = 0.01) -> Op:
        return self.add("take", *values, at=at, hide=hide, took=took)

    def delete(
        self, value: str, at: float, outcome: Outcome = OK, took: float = 0.01, receipt: Op | None = None
    ) -> Op:
        return self.add("delete", value, at=at, outcome=outcome, took=took, receipt=receipt)

    def check(self, *drained: str, at: float = 100.0) -> Report:
        self.add("drain", *drained, at=at)
        return check(self.ops)


def test_a_clean_history_passes_and_counts() -> None:
    h = Ops()
    h.create("a", at=1)
    h.create("b", at=1.1)
    h.create("c", at=1.2, ttl=5)  # expires unseen
    h.create("d", at=1.3, outcome=FAILED)
    h.take("a", at=2)
    h.delete("a", at=2.1)
    h.take("b", at=2.2, hide=1)  # a taker that crashed: its hide runs out
    h.take("b", at=3.5)
    h.take(at=3.6)  # found nothing
    report = h.check("b")
    assert report.ok, report.details()
    assert report.duplicates == {"b": 2}
    f = report.figures
    assert (f["create ok"], f["create failed"], f["deliveries"], f["delivered"]) == (3, 1, 3, 2)
    assert (f["redeliveries"], f["expired unseen"], f["drained"], f["hide pairs"]) == (1, 1, 1, 1)
    assert "lost 0, unexpected 0, hide overlaps 0" in report.summary()


def test_lost() -> None:
    h = Ops()
    h.create("gone", at=1)  # acknowledged, never seen again
    h.create("taken", at=1)
    h.take("taken", at=2)  # seen once, never deleted, then gone: lost too
    h.create("refused", at=1)
    h.delete("refused", at=3, outcome=FAILED)  # a delete that surely did nothing excuses nothing
    h.create("maybe", at=1, outcome=UNKNOWN)  # never acknowledged: may be absent
    h.create("deleting", at=1)
    h.delete("deleting", at=2, outcome=UNKNOWN)  # may have taken effect
    h.create("short", at=1, ttl=10)  # expired by the drain at 100
    h.create("long", at=1, ttl=1000)  # not expired: lost
    report = h.check()
    assert report.lost == ["gone", "long", "refused", "taken"]
    assert not report.ok
    assert "lost: ['gone'" in report.details()


def test_lost_needs_a_drain() -> None:
    h = Ops()
    h.create("a", at=1)
    with pytest.raises(ValueError, match="no acknowledged drain"):
        check(h.ops)


def test_a_ttl_that_may_have_run_out_by_the_drain_is_not_lost() -> None:
    h = Ops()
    h.create("a", at=1, ttl=99)  # deadline between 99+1 and 99+1.01; the drain ends at 100.01
    assert h.check().lost == []
    h = Ops()
    h.create("a", at=1, ttl=99.5)  # the drain surely ended before it
    assert h.check().lost == ["a"]


def test_unexpected() -> None:
    h = Ops()
    h.create("refused", at=1, outcome=FAILED)
    h.take("refused", at=2)  # its create surely failed
    h.take("ghost", at=2)  # never created
    h.take("early", at=3)
    h.create("early", at=4)  # delivered before anyone sent it
    h.create("unsure", at=1, outcome=UNKNOWN)
    h.take("unsure", at=2)  # fine: that create may have happened
    report = h.check("drained-ghost")
    assert report.unexpected == ["drained-ghost", "early", "ghost", "refused"]


def test_hide_overlap_between_two_takes() -> None:
    h = Ops()
    h.create("a", at=1)
    first = h.take("a", at=2, hide=5)  # hidden until at least 7 by the server's clock
    second = h.take("a", at=4)
    h.delete("a", at=5)
    report = h.check()
    assert [(x.value, x.ops) for x in report.hide_overlaps] == [("a", (first, second))]
    assert "taken again while the other take's hide surely ran" in report.details()


def test_a_hide_that_may_have_ended_is_no_overlap() -> None:
    h = Ops()
    h.create("a", at=1)
    h.take("a", at=2, hide=5, took=0.5)  # ran at the latest at 2.5, hidden until >= 7 only for sure
    h.take("a", at=7 - MARGIN - 0.02, took=0.01)  # answered before 7 - margin: overlap
    assert len(h.check().hide_overlaps) == 1
    h = Ops()
    h.create("a", at=1)
    h.take("a", at=2, hide=5, took=0.5)
    h.take("a", at=7 - MARGIN, took=0.01)  # may have run after 7 - margin: benefit of the doubt
    assert h.check().hide_overlaps == []


def test_concurrent_takes_overlap_only_if_both_orders_do() -> None:
    h = Ops()
    h.create("a", at=1)
    h.take("a", at=2, took=1, hide=5)  # neither answered before the other was sent
    h.take("a", at=2.5, took=0.1, hide=5)
    assert len(h.check().hide_overlaps) == 1
    h = Ops()
    h.create("a", at=1)
    h.take("a", at=2, took=10, hide=5)  # a long poll: it may have run at 11.9, after b's hide
    h.take("a", at=2.5, took=0.1, hide=5)
    assert h.check().hide_overlaps == []


def test_unknown_take_and_no_hide_prove_nothing() -> None:
    h = Ops()
    h.create("a", at=1)
    h.add("take", "a", at=2, hide=5, outcome=UNKNOWN)  # values of an unknown take do not count
    h.take("a", at=3, hide=0)  # hide=0: no window
    h.take("a", at=3.1)
    h.delete("a", at=4)
    report = h.check()
    assert report.ok, report.details()
    assert report.figures["deliveries"] == 2


def test_one_take_returning_a_message_twice() -> None:
    h = Ops()
    h.create("a", at=1)
    h.take("a", "a", at=2)
    h.delete("a", at=3)
    report = h.check()
    assert [x.detail for x in report.hide_overlaps] == ["one take returned it twice"]


def test_delivered_during_the_create_delay() -> None:
    h = Ops()
    h.create("a", at=1, hide=3)  # visible at the earliest at 4
    h.take("a", at=2)
    h.create("b", at=1, hide=3, outcome=UNKNOWN)  # unknown, but it ran at >= 1: same rule
    h.take("b", at=2)
    h.create("c", at=1, hide=3)
    h.take("c", at=4)  # fine
    h.delete("a", at=10)
    h.delete("b", at=10)
    h.delete("c", at=10)
    report = h.check()
    assert sorted(x.value for x in report.hide_overlaps) == ["a", "b"]
    assert {x.detail for x in report.hide_overlaps} == {"delivered during the create's delay"}


def test_delivered_or_listed_after_a_delete() -> None:
    h = Ops()
    h.create("a", at=1)
    h.take("a", at=2, hide=1)
    remove = h.delete("a", at=2.5)
    again = h.take("a", at=4)
    h.create("b", at=1)
    h.delete("b", at=2)
    h.create("c", at=1)
    h.delete("c", at=2, outcome=UNKNOWN)  # may not have happened
    h.create("d", at=1)
    h.delete("d", at=2, took=1)
    h.take("d", at=2.5)  # sent before the delete was answered: it may have run first
    report = h.check("b", "c")
    found = {(x.value, x.ops[1].kind) for x in report.after_delete}
    assert found == {("a", "take"), ("b", "drain")}
    assert next(x for x in report.after_delete if x.value == "a").ops == (remove, again)


def test_delete_by_receipt_counts_only_when_no_other_take_may_have_run_between() -> None:
    h = Ops()
    h.create("a", at=1)
    got = h.take("a", at=2, hide=1)
    h.delete("a", at=2.5, receipt=got)  # nothing in between: it deleted
    h.take("a", at=5)
    report = h.check()
    assert [x.value for x in report.after_delete] == ["a"]

    h = Ops()
    h.create("a", at=1)
    got = h.take("a", at=2, hide=1)
    h.take("a", at=3.5)  # received again: the first receipt is stale, its delete deletes nothing
    h.delete("a", at=4, receipt=got)
    h.take("a", at=9)
    h.delete("a", at=9.5)
    assert h.check().after_delete == []

    h = Ops()
    h.create("a", at=1)
    got = h.take("a", at=2, hide=1)
    h.add("take", at=3, outcome=UNKNOWN)  # it may have received "a" in between
    h.delete("a", at=4, receipt=got)
    h.take("a", at=9)
    h.delete("a", at=9.5)
    assert h.check().after_delete == []


def test_delivered_or_listed_after_its_ttl() -> None:
    h = Ops()
    h.create("a", at=1, ttl=2)  # deadline by 3.01
    h.take("a", at=3.1)
    h.delete("a", at=3.2)
    h.create("b", at=1, ttl=2)
    h.take("b", at=2.9)  # may have run before the deadline
    h.delete("b", at=3)
    h.create("c", at=1, ttl=2)  # listed by the drain at 100
    h.create("d", at=1, ttl=2, outcome=UNKNOWN)  # may have run any time later
    report = h.check("c", "d")
    assert sorted((x.value, x.ops[-1].kind) for x in report.after_ttl) == [("a", "take"), ("c", "drain")]


class SteppedClock:
    """A TimeSource for hand-driven histories: real time and a server clock with an offset."""

    def __init__(self) -> None:
        self.real = 0.0
        self.offset = 1000.0
        self.epochs: list[tuple[float, float]] = [(-math.inf, self.offset)]  # (since, offset)

    def jump(self, seconds: float) -> None:
        self.offset += seconds
        self.epochs.append((self.real, self.offset))

    def stamp(self) -> Stamp:
        return Stamp(self.real, self.real + self.offset, len(self.epochs) - 1)

    def span(self, start: Stamp, end: Stamp) -> tuple[float, float]:
        offsets = [offset for _, offset in self.epochs[start.epoch : end.epoch + 1]]
        return start.real + min(offsets), end.real + max(offsets)

    def highest(self, start: float, end: float) -> float | None:
        best = -math.inf
        for k, (since, offset) in enumerate(self.epochs):
            until = self.epochs[k + 1][0] if k + 1 < len(self.epochs) else math.inf
            if since <= end and until >= start:
                best = max(best, min(end, until) + offset)
        return best


def test_recorder_with_a_clock_that_jumps_back() -> None:
    clock = SteppedClock()
    history = History(clock)
    create = history.invoke("create", "p", ["a"], ttl=2)
    clock.real = 0.01
    history.ok(create)
    assert (create.server_lo, create.server_hi) == (1000.0, 1000.01)
    clock.real = 0.5
    clock.jump(30)  # the deadline (1002.01 at the latest) has passed
    clock.real = 0.6
    clock.jump(-30)  # and the clock is back at 1000.6
    clock.real = 0.7
    take = history.invoke("take", "t", hide=5)
    clock.real = 0.71
    history.ok(take, ["a"])
    assert take.server_hi < create.server_lo + create.ttl  # by its own reading, not expired
    drain = history.invoke("drain", "d")
    history.ok(drain, [])
    report = history.check()
    assert [(x.value, x.ops[-1].id) for x in report.after_ttl] == [("a", take.id)]


def test_a_jump_before_the_create_does_not_expire_it() -> None:
    clock = SteppedClock()
    history = History(clock)
    clock.jump(30)
    clock.real = 0.1
    clock.jump(-30)
    clock.real = 0.2
    create = history.invoke("create", "p", ["a"], ttl=2)
    history.ok(create)
    clock.real = 0.3
    take = history.invoke("take", "t", hide=5)
    history.ok(take, ["a"])
    delete = history.invoke("delete", "t", ["a"])
    history.ok(delete)
    history.ok(history.invoke("drain", "d"), [])
    report = history.check()
    assert report.ok, report.details()


def test_recorder_open_and_unknown_operations() -> None:
    history = History()  # the wall clock
    create = history.invoke("create", "p", ["a"], ttl=60)
    history.ok(create)
    assert create.server_lo <= create.server_hi < math.inf and create.invoked <= create.completed
    lost_reply = history.invoke("delete", "t", ["a"])
    history.unknown(lost_reply)
    pending = history.invoke("take", "t", hide=5)  # never ended
    history.ok(history.invoke("drain", "d"), [])
    with pytest.raises(ValueError, match="ended twice"):
        history.failed(lost_reply)
    report = history.check()
    assert report.ok, report.details()  # "a" may have been deleted
    assert pending.server_hi == math.inf and lost_reply.server_hi == math.inf
    assert report.figures["take unknown"] == 1 and report.figures["delete unknown"] == 1
    assert len(history.ops) == 4
