"""A history checker for queue workloads: proof that nothing is lost, by the clients' own record.

Clients of one queue record every operation twice: when they invoke it and when they learn
its outcome, which is

* ``ok``: the server acknowledged it (a take that found nothing is ``ok`` with no values),
* ``failed``: the server surely did not do it (a 4xx, or a 404 for a delete),
* ``unknown``: it may or may not have happened, now or later (a reset connection, a timeout,
  a 5xx, a server killed or stopped with the request in flight). An operation never ended
  counts as unknown.

Every message carries a unique *value* (its body, and its id where the client picks ids), so
each delivery names the create it came from. After the load, a final *drain* lists every
message left (hidden ones included). :func:`check` then reports, from the record alone:

lost
    A create was acknowledged, no delete of the value was attempted that may have taken
    effect (``ok`` or ``unknown``), it cannot have expired by the end of the drain, and the
    drain did not list it. (Stronger than "never seen again": a message taken once and then
    dropped by the store is lost too.)
unexpected
    A value was delivered or listed that no create could have sent (none ``ok`` or
    ``unknown``), or it was delivered before any create of it was invoked.
duplicates
    Values delivered more than once. At-least-once delivery allows them: they are counted,
    not anomalies.
after delete
    A delivery (or the drain) showed a value after a delete of it had surely taken effect:
    an unconditional delete (v1.0 ``DELETE`` by id) acknowledged before the delivery was
    invoked. A delete by receipt (SQS) deletes nothing if the message was received again in
    between (as AWS), so it counts only when no other take may have run between its
    receipt's take and the delete.
hide overlap
    A take delivered a message while a hide on it was surely still running: another take's
    (the visibility timeout of a receive) or the create's own delay (``hide`` on PUT, SQS
    ``DelaySeconds``), or the same take returned it twice.
after ttl
    A delivery (or the drain) showed a message after the server's clock had surely passed
    its deadline, ``ttl`` seconds after its create ran.

Time, conservatively
--------------------
Hides and ttls are deadlines on the *server's* clock, so each operation carries bounds on
the server's clock while it ran: ``server_lo`` (read just before the request was sent) and
``server_hi`` (read just after its response; infinity when the outcome is unknown, since
the server may run it any time later, e.g. after a SIGCONT). Real time (``invoked``,
``completed``, a monotonic client clock) only orders operations: a response received before
another request was sent means the first ran first. Every judgement needs the worst case to
be a violation, so the checker never reports an anomaly that a correct server could have
produced (but may miss one that timing leaves ambiguous). For a take A with hide ``h`` that
delivered a value, and a later take B that delivered it again: B surely ran while A's hide
ran if ``B.server_hi < A.server_lo + h - margin`` (B answered before the earliest moment
A's hide could have ended); when neither response preceded the other request, both orders
must be violations. ``margin`` (seconds) absorbs the rounding of clock readings.

A clock that jumps backwards brings a passed deadline round again, but a message whose
deadline the clock has passed must stay expired. So :func:`check` takes ``highest(a, b)``:
the highest reading the server's clock showed between real times ``a`` and ``b`` (None, or
a None answer, for a clock that only moves forward: then an operation's own readings are the
highest so far). "After ttl" asks whether the clock surely passed the deadline after the
create ran and before the delivery was invoked; "cannot have expired" whether it may have
done so before the drain ended.

Not modelled: a take that ends its own hide early (``hide=0``, ``ChangeMessageVisibility``),
replacing a message (PUT on an existing id), get-and-delete. Record one :class:`History`
per queue. Recording is thread-safe; :func:`check` is a pure function of the operations, so
tests can hand-build histories (``tests/test_history.py``).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

__all__ = [
    "Anomaly",
    "History",
    "Kind",
    "Op",
    "Outcome",
    "Report",
    "Stamp",
    "TimeSource",
    "WallTime",
    "check",
]

Kind = Literal["create", "take", "delete", "drain"]

#: Default slack (seconds) against rounding in clock readings.
MARGIN = 0.02


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(slots=True, eq=False)
class Op:
    """One operation as the client saw it.

    ``values``: create and delete, the one value they name; take, the values delivered
    (in order, as returned); drain, every value listed. ``hide``: a take's hide (visibility
    timeout), a create's delay. ``ttl``: a create's lifetime (0 = none). ``receipt``: for a
    delete by receipt handle, the id of the take that returned the handle (None: a delete by
    id, unconditional).
    """

    id: int
    kind: Kind
    client: str
    invoked: float
    server_lo: float
    values: tuple[str, ...] = ()
    hide: float = 0.0
    ttl: float = 0.0
    receipt: int | None = None
    outcome: Outcome | None = None
    completed: float = math.inf
    server_hi: float = math.inf

    @property
    def acknowledged(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def may_have_happened(self) -> bool:
        """Ok, unknown, or never ended."""
        return self.outcome is not Outcome.FAILED

    def __str__(self) -> str:
        what = ",".join(self.values[:3]) + ("..." if len(self.values) > 3 else "")
        extra = f" hide={self.hide:g}" if self.hide else ""
        extra += f" ttl={self.ttl:g}" if self.ttl else ""
        extra += f" receipt=#{self.receipt}" if self.receipt is not None else ""
        return (
            f"#{self.id} {self.kind}({what}){extra} by {self.client}: {self.outcome or 'never ended'},"
            f" server time [{self.server_lo:.3f}, {self.server_hi:.3f}]"
        )


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One violation: what, which value, and the operations that prove it."""

    kind: str
    value: str
    ops: tuple[Op, ...]
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} of {self.value!r}: {self.detail}\n" + "".join(f"    {op}\n" for op in self.ops)


@dataclass
class Report:
    """What :func:`check` found. ``ok`` when there is no anomaly (duplicates are allowed)."""

    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    after_delete: list[Anomaly] = field(default_factory=list)
    hide_overlaps: list[Anomaly] = field(default_factory=list)
    after_ttl: list[Anomaly] = field(default_factory=list)
    #: value -> number of deliveries, for values delivered more than once
    duplicates: dict[str, int] = field(default_factory=dict)
    #: counts of what the history holds (see :meth:`summary`)
    figures: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.after_delete or self.hide_overlaps or self.after_ttl)

    def summary(self) -> str:
        """One paragraph of figures and anomaly counts, for test output."""
        f = self.figures

        def outcomes(kind: str) -> str:
            return f"{f[kind + ' ok']} ok/{f[kind + ' failed']} failed/{f[kind + ' unknown']} unknown"

        return (
            f"{f['ops']} ops: creates {outcomes('create')}; takes {outcomes('take')}"
            f" ({f['deliveries']} deliveries of {f['delivered']} messages);"
            f" deletes {outcomes('delete')}; drained {f['drained']};"
            f" duplicates {len(self.duplicates)} messages ({f['redeliveries']} extra deliveries);"
            f" hide pairs judged {f['hide pairs']}; expired unseen {f['expired unseen']}."
            f" Anomalies: lost {len(self.lost)}, unexpected {len(self.unexpected)},"
            f" hide overlaps {len(self.hide_overlaps)}, after delete {len(self.after_delete)},"
            f" after ttl {len(self.after_ttl)}"
        )

    def details(self, limit: int = 10) -> str:
        """The first ``limit`` anomalies of each kind, with their operations (for assertion messages)."""
        parts = []
        if self.lost:
            parts.append(f"lost: {self.lost[:limit]}\n")
        if self.unexpected:
            parts.append(f"unexpected: {self.unexpected[:limit]}\n")
        for found in (self.hide_overlaps, self.after_delete, self.after_ttl):
            parts.extend(str(a) for a in found[:limit])
        return "".join(parts)


#: ``highest(a, b)``: the highest reading of the server's clock between real times a and b.
Highest = Callable[[float, float], float | None]


def check(ops: Iterable[Op], margin: float = MARGIN, highest: Highest | None = None) -> Report:
    """Judge a finished history (see the module docstring); ``ops`` must include the final drain."""
    ops = list(ops)

    def peak(start: float, end: float, own: float) -> float:
        """The highest reading between two real times, at least ``own`` (an operation's reading)."""
        found = highest(start, end) if highest is not None and start <= end else None
        return own if found is None else max(own, found)

    report = Report()
    f = report.figures
    f["ops"] = len(ops)
    creates: defaultdict[str, list[Op]] = defaultdict(list)
    deletes: defaultdict[str, list[Op]] = defaultdict(list)
    deliveries: defaultdict[str, list[Op]] = defaultdict(list)  # one entry per delivery
    sightings: defaultdict[str, list[Op]] = defaultdict(list)  # deliveries and drain listings
    unknown_takes: list[Op] = []
    drains: list[Op] = []
    for op in ops:
        f[f"{op.kind} {(op.outcome or Outcome.UNKNOWN).value}"] += 1
        if op.kind == "create":
            creates[op.values[0]].append(op)
        elif op.kind == "delete":
            deletes[op.values[0]].append(op)
        elif op.kind == "take":
            if op.acknowledged:
                for value in op.values:
                    deliveries[value].append(op)
                    sightings[value].append(op)
            elif op.may_have_happened:
                unknown_takes.append(op)
        elif op.acknowledged:  # drain
            drains.append(op)
            for value in op.values:
                sightings[value].append(op)
    if not drains:
        raise ValueError("the history has no acknowledged drain: nothing can be judged lost")
    drained = {value for d in drains for value in d.values}
    drain_end = max(d.completed for d in drains)
    drain_hi = max(d.server_hi for d in drains)
    f["deliveries"] = sum(len(d) for d in deliveries.values())
    f["delivered"] = len(deliveries)
    f["drained"] = len(drained)

    for value, seen in sightings.items():
        made = [c for c in creates.get(value, ()) if c.may_have_happened]
        if not made or min(s.completed for s in seen) < min(c.invoked for c in made):
            report.unexpected.append(value)

    for value, made in creates.items():
        if not any(c.acknowledged for c in made) or value in drained:
            continue
        if any(x.may_have_happened for x in deletes.get(value, ())):
            continue
        if any(
            c.ttl and peak(c.invoked, drain_end, drain_hi) + margin >= c.server_lo + c.ttl
            for c in made
            if c.may_have_happened
        ):
            if value not in deliveries:
                f["expired unseen"] += 1
            continue
        report.lost.append(value)

    for value, got in deliveries.items():
        if len(got) > 1:
            report.duplicates[value] = len(got)
            f["redeliveries"] += len(got) - 1
        _hide_overlaps(report, value, got, creates.get(value, []), margin)

    for value, seen in sightings.items():
        _after_delete(report, value, seen, deletes.get(value, []), deliveries.get(value, []), unknown_takes)
        _after_ttl(report, value, seen, creates.get(value, []), margin, peak)
    report.lost.sort()
    report.unexpected.sort()
    return report


def _hide_overlaps(report: Report, value: str, got: list[Op], made: list[Op], margin: float) -> None:
    for create in made:
        if create.hide and create.may_have_happened:
            for take in got:
                if take.server_hi < create.server_lo + create.hide - margin:
                    report.hide_overlaps.append(
                        Anomaly("hide overlap", value, (create, take), "delivered during the create's delay")
                    )
    for a, b in itertools.combinations(got, 2):
        report.figures["hide pairs"] += 1
        if a is b:
            report.hide_overlaps.append(Anomaly("hide overlap", value, (a,), "one take returned it twice"))
            continue
        orders = []  # (first, second) for each order the two may have run in
        if not b.completed < a.invoked:
            orders.append((a, b))
        if not a.completed < b.invoked:
            orders.append((b, a))
        if orders and all(
            second.server_hi < first.server_lo + first.hide - margin for first, second in orders
        ):
            report.hide_overlaps.append(
                Anomaly("hide overlap", value, (a, b), "taken again while the other take's hide surely ran")
            )


def _surely_deleted(delete: Op, got: Sequence[Op], unknown_takes: Sequence[Op]) -> bool:
    """Whether an acknowledged delete surely removed the message (see "after delete")."""
    if not delete.acknowledged:
        return False
    if delete.receipt is None:
        return True
    receipt = next((t for t in got if t.id == delete.receipt), None)
    if receipt is None:
        return False
    for take in got:  # another delivery that may have run between the receipt's take and the delete
        if take is not receipt and take.invoked < delete.completed and take.completed > receipt.invoked:
            return False
    # a take whose outcome is unknown may have received it, at any time after its invocation
    return not any(take.invoked < delete.completed for take in unknown_takes)


def _after_delete(
    report: Report, value: str, seen: list[Op], removed: list[Op], got: list[Op], unknown_takes: list[Op]
) -> None:
    for delete in removed:
        if not _surely_deleted(delete, got, unknown_takes):
            continue
        for sight in seen:
            if sight.invoked > delete.completed:
                what = "listed by the drain" if sight.kind == "drain" else "delivered"
                report.after_delete.append(
                    Anomaly("after delete", value, (delete, sight), f"{what} after an acknowledged delete")
                )


def _after_ttl(
    report: Report,
    value: str,
    seen: list[Op],
    made: list[Op],
    margin: float,
    peak: Callable[[float, float, float], float],
) -> None:
    possible = [c for c in made if c.may_have_happened]
    if not possible or any(not c.ttl for c in possible):
        return
    latest = max(c.server_hi + c.ttl for c in possible)  # the latest deadline any create could have set
    created = max(c.completed for c in possible)  # every create had run by then
    for sight in seen:
        # it ran at a reading >= server_lo, after the clock had shown every reading before it
        if peak(created, sight.invoked, sight.server_lo) >= latest + margin:
            what = "listed by the drain" if sight.kind == "drain" else "delivered"
            report.after_ttl.append(
                Anomaly("after ttl", value, (*possible, sight), f"{what} after its deadline {latest:.3f}")
            )


# -- recording ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stamp:
    """One moment: client real time (a clock that never jumps) and the server's clock then.

    ``epoch`` lets a :class:`TimeSource` whose clock jumps tell which offsets a span covered.
    """

    real: float
    server: float
    epoch: int = 0


class TimeSource(Protocol):
    """How a client reads the server's clock."""

    def stamp(self) -> Stamp: ...

    def span(self, start: Stamp, end: Stamp) -> tuple[float, float]:
        """Lowest and highest reading the server's clock may have shown between two stamps."""
        ...

    def highest(self, start: float, end: float) -> float | None:
        """The highest reading between two real times; None if the clock only moves forward."""
        ...


class WallTime:
    """The server reads ``time.time()`` on this machine: the default engine clock in-process,
    or a ``burrow serve`` process on the same host."""

    def stamp(self) -> Stamp:
        return Stamp(time.monotonic(), time.time())

    def span(self, start: Stamp, end: Stamp) -> tuple[float, float]:
        return start.server, end.server

    def highest(self, start: float, end: float) -> float | None:
        return None


class History:
    """The record of one queue's operations, appended by any number of clients (threads too).

    ``op = history.invoke(...)`` just before sending a request; then exactly one of
    :meth:`ok`, :meth:`failed`, :meth:`unknown` as soon as the outcome is known.
    """

    def __init__(self, time_source: TimeSource | None = None) -> None:
        self.time: TimeSource = WallTime() if time_source is None else time_source
        self._ops: list[Op] = []
        self._started: dict[int, Stamp] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def invoke(
        self,
        kind: Kind,
        client: str,
        values: Sequence[str] = (),
        *,
        hide: float = 0.0,
        ttl: float = 0.0,
        receipt: int | None = None,
    ) -> Op:
        stamp = self.time.stamp()
        with self._lock:
            op = Op(
                next(self._ids),
                kind,
                client,
                stamp.real,
                stamp.server,
                tuple(values),
                hide,
                ttl,
                receipt,
            )
            self._ops.append(op)
            self._started[op.id] = stamp
        return op

    def ok(self, op: Op, values: Sequence[str] | None = None) -> None:
        """Acknowledged; a take or drain passes the values it got."""
        if values is not None:
            op.values = tuple(values)
        self._end(op, Outcome.OK)

    def failed(self, op: Op) -> None:
        """Surely not done."""
        self._end(op, Outcome.FAILED)

    def unknown(self, op: Op) -> None:
        """Maybe done, maybe later."""
        self._end(op, Outcome.UNKNOWN)

    def _end(self, op: Op, outcome: Outcome) -> None:
        if op.outcome is not None:
            raise ValueError(f"operation ended twice: {op}")
        end = self.time.stamp()
        op.completed = end.real
        op.outcome = outcome
        if outcome is not Outcome.UNKNOWN:
            op.server_lo, op.server_hi = self.time.span(self._started[op.id], end)

    def check(self, margin: float = MARGIN) -> Report:
        """Judge the history: operations not acknowledged or failed get open-ended server times
        (the server may run them at any moment up to now, and after)."""
        end = self.time.stamp()
        ops = self.ops
        for op in ops:
            if op.outcome is None or op.outcome is Outcome.UNKNOWN:
                op.server_lo = self.time.span(self._started[op.id], end)[0]
                op.server_hi = math.inf
        return check(ops, margin, self.time.highest)
