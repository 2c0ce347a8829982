"""The one checker: what was sent and answered against what the output topics hold. Pure.

A Jepsen-style history check: every event acknowledged (2xx) must be in the read_committed
output exactly once, each call's events in the order it sent them; a 5xx other than 503 is a
failure even when nothing was lost, since Pinecall reads it as "the bridge is broken".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

TRANSPORT_ERROR = 0  # the status recorded for an attempt that got no HTTP answer at all


@dataclass(frozen=True)
class History:
    """One run: ids per call in send order, every attempt's status per id, ids read in order.

    `read` holds (call, id) as a read_committed consumer saw them, each partition in offset
    order; a call's records share a partition, so their relative order is the log's.
    """

    sent: Mapping[str, Sequence[str]]
    answers: Mapping[str, Sequence[int]]
    read: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Counts:
    sent: int
    requests: int
    acknowledged: int
    status_503: int
    other_5xx: int
    transport_errors: int
    lost: int
    doubled: int
    order_violations: int
    unexpected: int
    lost_ids: tuple[str, ...] = field(default=(), repr=False)
    doubled_ids: tuple[str, ...] = field(default=(), repr=False)

    @property
    def failures(self) -> list[str]:
        """The broken invariants, in words; empty when the run holds."""
        broken = []
        if self.lost:
            broken.append(f"{self.lost} acknowledged event(s) lost")
        if self.doubled:
            broken.append(f"{self.doubled} event(s) published more than once")
        if self.order_violations:
            broken.append(f"{self.order_violations} per-call order violation(s)")
        if self.other_5xx:
            broken.append(f"{self.other_5xx} 5xx answer(s) other than 503")
        if self.unexpected:
            broken.append(f"{self.unexpected} record(s) of events never sent")
        return broken


def order_violations(sent: Mapping[str, Sequence[str]], read: Iterable[tuple[str, str]]) -> int:
    """Adjacent pairs of a call's output records whose events were sent in the other order.

    A second copy of an event is not an order violation (it is counted as doubled).
    """
    rank = {event: n for events in sent.values() for n, event in enumerate(events)}
    last: dict[str, int] = {}
    seen: set[str] = set()
    violations = 0
    for call, event in read:
        position = rank.get(event)
        if position is None or event in seen:
            continue
        seen.add(event)
        previous = last.get(call)
        if previous is not None and position < previous:
            violations += 1
        last[call] = max(position, previous if previous is not None else position)
    return violations


def check(history: History) -> Counts:
    """Count the run; `Counts.failures` names the broken invariants."""
    sent_ids = {event for events in history.sent.values() for event in events}
    statuses = [status for attempts in history.answers.values() for status in attempts]
    acknowledged = {
        event
        for event, attempts in history.answers.items()
        if any(200 <= status < 300 for status in attempts)
    }
    copies = Counter(event for _, event in history.read)
    lost = sorted(acknowledged - copies.keys())
    doubled = sorted(event for event, n in copies.items() if n > 1)
    return Counts(
        sent=len(sent_ids),
        requests=len(statuses),
        acknowledged=len(acknowledged),
        status_503=sum(1 for status in statuses if status == 503),
        other_5xx=sum(1 for status in statuses if 500 <= status < 600 and status != 503),
        transport_errors=sum(1 for status in statuses if status == TRANSPORT_ERROR),
        lost=len(lost),
        doubled=len(doubled),
        order_violations=order_violations(history.sent, history.read),
        unexpected=sum(1 for event in copies if event not in sent_ids),
        lost_ids=tuple(lost),
        doubled_ids=tuple(doubled),
    )


def producer_doubles(answers: Mapping[str, Sequence[int]], ingest_copies: Mapping[str, int]) -> int:
    """Ingest copies beyond the requests that carried an event: a producer retry that doubled.

    Each request may leave one ingest copy (even a 503'd one, when Kafka took it late); more
    copies than requests can only come from the producer writing one send twice.
    """
    return sum(
        max(0, copies - len(answers.get(event, ()))) for event, copies in ingest_copies.items()
    )


def feed_tail_losses(
    sends: Sequence[tuple[int, str]], present: set[str], cut: set[int]
) -> tuple[dict[int, int], list[str]]:
    """Feed frames missing from Kafka: (tolerated per cut connection, the ids not tolerated).

    The feed has no replay, so frames still in a socket when a fault cut that connection die
    with it: tolerated only as the tail of a cut connection. A hole before a frame that did
    arrive, or a loss on a connection nobody cut, is not. `sends`: (connection, id) in order.
    """
    by_connection: dict[int, list[str]] = {}
    for connection, event in sends:
        by_connection.setdefault(connection, []).append(event)
    tolerated: dict[int, int] = {}
    untolerated: list[str] = []
    for connection, events in by_connection.items():
        arrived = [n for n, event in enumerate(events) if event in present]
        last_arrived = arrived[-1] if arrived else -1
        for n, event in enumerate(events):
            if event in present:
                continue
            if connection in cut and n > last_arrived:
                tolerated[connection] = tolerated.get(connection, 0) + 1
            else:
                untolerated.append(event)
    return tolerated, untolerated


def call_log_history(
    ledger: Iterable[Mapping[str, object]], read: Sequence[tuple[str, str]]
) -> History:
    """The history of a call-log run from the simulator's ledger: what its logs hold, as sent.

    Every durable entry of a call's log is owed to the output (the bridge reads the log, nobody
    has to deliver it), so each counts as acknowledged; a call's entries are owed in seq order,
    whatever order the ledger took them in. Ephemeral entries and alerts (webhook only) are not.
    """
    owed: dict[str, list[tuple[int, str]]] = {}
    for record in ledger:
        seq, channels = record.get("seq"), record.get("channels")
        in_log = isinstance(channels, list | tuple) and "sse" in channels
        if record.get("durable") is not True or not in_log or not isinstance(seq, int):
            continue
        owed.setdefault(str(record["call"]), []).append((seq, str(record["id"])))
    sent = {call: [event for _, event in sorted(set(pairs))] for call, pairs in owed.items()}
    answers = {event: [200] for events in sent.values() for event in events}
    return History(sent=sent, answers=answers, read=read)
