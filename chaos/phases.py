"""A scenario's phases on the monotonic clock, and whether its load actually ran in each. Pure
but for `fenced_after`, which polls through the reader it is given.

A phase's checks mean something only if requests reached the bridge during it: a load that ran
out before a phase began would let the phase pass on nothing, so that is a failure of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from chaos.harness import Check
from chaos.load import Attempt

# The share of the offered rate a judged phase must see in flight. During an outage each call
# waits on its unanswered event (up to the publish timeout, then a retry pause), so new requests
# fall well below the offered rate but the waiting ones still count; a load that ran out has none.
MIN_LOAD_SHARE = 0.05

# A SIGKILLed broker stays in every partition's ISR until the controller fences it (after the
# cluster's broker.session.timeout.ms, counted from the kill's last heartbeat, or from the new
# controller's election when the broker killed was the active controller: seconds later): no
# acks=all write anywhere is acknowledged meanwhile. After the fencing (as the metadata shows
# it): leaders elected, the bridge's producer refreshing its metadata (2 s probe
# here), and a call whose attempt timed out at the fencing retrying (the load pauses up to 2 s).
FAILOVER_SECONDS = 5.0
# How long a crash phase still runs once failed over, so that the served load is judged too.
SERVED_SECONDS = 3.0


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def holds(self, at: float) -> bool:
        return self.start <= at < self.end


@dataclass
class Timeline:
    """Back-to-back phases: `enter` ends the current phase and begins the next; `close` the last."""

    _marks: list[tuple[str, float]] = field(default_factory=list)
    _closed: float | None = None

    def enter(self, name: str, at: float) -> None:
        if self._closed is not None:
            raise ValueError(f"the timeline closed at {self._closed}; cannot enter {name!r}")
        if self._marks and at < self._marks[-1][1]:
            raise ValueError(f"{name!r} at {at} begins before {self._marks[-1][0]!r}")
        self._marks.append((name, at))

    def close(self, at: float) -> None:
        if not self._marks or at < self._marks[-1][1]:
            raise ValueError(f"nothing to close at {at}")
        self._closed = at

    @property
    def phases(self) -> list[Phase]:
        ends = [at for _, at in self._marks[1:]]
        if self._closed is not None:
            ends.append(self._closed)
        return [
            Phase(name, start, end) for (name, start), end in zip(self._marks, ends, strict=False)
        ]


def crash_seconds(scaled: float, session_timeout: float) -> float:
    """How long a crashed broker stays down: the scenario's (scaled) length, but never less than
    fencing, failover and a few seconds of service after, or the phase could only see the stall."""
    return max(scaled, session_timeout + FAILOVER_SECONDS + SERVED_SECONDS)


def acknowledged_by(first_sent: float, fenced: float) -> float:
    """The latest an event first sent at `first_sent` may be acknowledged, the crashed broker
    fenced at `fenced`: writes stall until then, then fail over."""
    return max(first_sent, fenced) + FAILOVER_SECONDS


async def fenced_after(
    isrs: Callable[[], Awaitable[list[list[int]] | None]],
    node: int,
    since: float,
    every: float = 0.2,
) -> float:
    """When the controllers fenced `node`, crashed at `since`: the start of the last read of
    `isrs` (None: unanswered) that still listed it in an ISR. Never later than the fencing."""
    listed = since
    while True:
        asked = time.monotonic()
        seen = await isrs()
        if seen and all(node not in isr for isr in seen):
            return listed
        if seen:
            listed = asked
        await asyncio.sleep(every)


def failover_check(
    phase: Phase,
    attempts: Sequence[Attempt],
    killed_at: float,
    fenced: float | None,
    session_timeout: float,
    starved: Callable[[Attempt], float] = lambda attempt: 0.0,
) -> Check:
    """Every event in flight during a crash phase acknowledged by `acknowledged_by`, and some
    acknowledged after the fencing within the phase: the bridge failed over by itself.

    `fenced`: when the metadata showed the broker out of the ISRs (`fenced_after`); None, never
    within the phase: nothing could fail over, and the check fails. `starved`: the CPU starvation
    during an attempt (harness.Starvation), subtracted from its answer time as not the bridge's.
    """
    first: dict[str, float] = {}
    answered: dict[str, float] = {}  # event -> when its first 2xx came, less the starvation
    less: dict[str, float] = {}
    for a in sorted(attempts, key=lambda a: a.started):
        first.setdefault(a.event, a.started)
        if 200 <= a.status < 300 and a.event not in answered:
            less[a.event] = starved(a)
            answered[a.event] = a.started + a.elapsed - less[a.event]
    held = {a.event for a in in_flight_during(attempts, phase)}
    # Never seen fenced: the check fails, and the phase's end only keeps the counts meaningful.
    at = phase.end if fenced is None else fenced
    due = {event: acknowledged_by(first[event], at) for event in held}
    late = sorted(event for event in held if answered.get(event, float("inf")) > due[event])
    excused = [less[e] for e in held if e in less and answered[e] <= due[e] < answered[e] + less[e]]
    served = sum(1 for t in answered.values() if at <= t < phase.end)
    acks_after_kill = [
        a.started + a.elapsed - killed_at
        for a in attempts
        if 200 <= a.status < 300 and a.started >= phase.start
    ]
    stall = f"{min(acks_after_kill):+.1f}s" if acks_after_kill else "never"
    return Check(
        f"failover during '{phase.name}' within fencing + {FAILOVER_SECONDS:.0f}s",
        fenced is not None and not late and served > 0,
        f"{len(held)} events in flight, {len(late)} acknowledged later than fencing"
        f" ({fencing_text(fenced, killed_at, session_timeout)}) + {FAILOVER_SECONDS:.0f}s or"
        f" after their own"
        f" first attempt + {FAILOVER_SECONDS:.0f}s{f', e.g. {late[0]}' if late else ''};"
        f" {served} acknowledged between the fencing and the phase's end; the first answer"
        f" acknowledged after the kill came {stall}; {len(excused)} late only by CPU starvation"
        f" (up to {max(excused, default=0.0):.1f}s of it, {sum(excused):.1f}s in all)",
    )


def fencing_text(fenced: float | None, killed_at: float, session_timeout: float) -> str:
    """When the fencing came, against the session timeout it waits for at least."""
    if fenced is None:
        return (
            f"never seen in the metadata within the phase; session timeout {session_timeout:.1f}s"
        )
    return f"seen {fenced - killed_at:.1f}s after the kill; session timeout {session_timeout:.1f}s"


def least_requests(rate: float, seconds: float, share: float = MIN_LOAD_SHARE) -> int:
    """The fewest requests a phase of `seconds` under `rate` events/s must see in flight (>= 1)."""
    return max(1, int(share * rate * seconds))


def started_during(attempts: Iterable[Attempt], phase: Phase) -> list[Attempt]:
    return [a for a in attempts if phase.holds(a.started)]


def answered_during(attempts: Iterable[Attempt], phase: Phase) -> list[Attempt]:
    """Requests both sent and answered within the phase: what the bridge said under its fault
    alone. One sent late in it may be answered after the next phase undid the fault."""
    return [a for a in started_during(attempts, phase) if a.started + a.elapsed < phase.end]


def in_flight_during(attempts: Iterable[Attempt], phase: Phase) -> list[Attempt]:
    """Requests the bridge held during the phase: started before it ended, answered after it began.

    A stalled bridge starts few new requests (each call waits on its answer) yet is under load.
    """
    return [a for a in attempts if a.started < phase.end and a.started + a.elapsed >= phase.start]


def load_check(phase: Phase, attempts: Sequence[Attempt], rate: float) -> Check:
    """At least `least_requests` in flight during the phase: else its checks judged nothing."""
    held = len(in_flight_during(attempts, phase))
    least = least_requests(rate, phase.seconds)
    return Check(
        f"load ran during '{phase.name}'",
        held >= least,
        f"{held} requests in flight ({len(started_during(attempts, phase))} started) in"
        f" {phase.seconds:.1f}s, at least {least} needed"
        + ("" if held >= least else ": the harness judged this phase on too little load"),
    )


def lasted_check(ran_out: bool, count: int) -> Check:
    """The load ran by time until its last phase ended: no phase judged on a load already gone."""
    return Check(
        "the load lasted until the last phase ended",
        not ran_out,
        "stopped at the end" if not ran_out else f"all {count} events sent earlier",
    )


def summary(timeline: Timeline, attempts: Sequence[Attempt]) -> str:
    """`name 4.5s (N started), ...`: every phase with the requests started in it, for notes."""
    return ", ".join(
        f"{p.name} {p.seconds:.1f}s ({len(started_during(attempts, p))} started)"
        for p in timeline.phases
    )
