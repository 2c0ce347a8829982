"""A scenario's phases on the monotonic clock, and whether its load actually ran in each. Pure.

A phase's checks mean something only if requests reached the bridge during it: a load that ran
out before a phase began would let the phase pass on nothing, so that is a failure of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from chaos.harness import Check
from chaos.load import Attempt

# The share of the offered rate a judged phase must see in flight. During an outage each call
# waits on its unanswered event (up to the publish timeout, then a retry pause), so new requests
# fall well below the offered rate but the waiting ones still count; a load that ran out has none.
MIN_LOAD_SHARE = 0.05

# A SIGKILLed broker stays in every partition's ISR until the controller fences it (after the
# cluster's broker.session.timeout.ms): no acks=all write anywhere is acknowledged meanwhile.
# After the fencing: leaders elected, the bridge's producer refreshing its metadata (2 s probe
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


def acknowledged_by(first_sent: float, killed_at: float, session_timeout: float) -> float:
    """The latest an event first sent at `first_sent` may be acknowledged, a broker SIGKILLed at
    `killed_at`: writes stall until the broker is fenced, then fail over."""
    return max(first_sent, killed_at + session_timeout) + FAILOVER_SECONDS


def failover_check(
    phase: Phase,
    attempts: Sequence[Attempt],
    killed_at: float,
    session_timeout: float,
    starved: Callable[[Attempt], float] = lambda attempt: 0.0,
) -> Check:
    """Every event in flight during a crash phase acknowledged by `acknowledged_by`, and some
    acknowledged after the fencing within the phase: the bridge failed over by itself.

    `starved`: the CPU starvation during an attempt (the harness's loop lag, the bridge's wait
    for a CPU: harness.Starvation), subtracted from its answer time as not the bridge's wait.
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
    due = {event: acknowledged_by(first[event], killed_at, session_timeout) for event in held}
    late = sorted(event for event in held if answered.get(event, float("inf")) > due[event])
    excused = [less[e] for e in held if e in less and answered[e] <= due[e] < answered[e] + less[e]]
    fenced = killed_at + session_timeout
    served = sum(1 for at in answered.values() if fenced <= at < phase.end)
    acks_after_kill = [
        a.started + a.elapsed - killed_at
        for a in attempts
        if 200 <= a.status < 300 and a.started >= phase.start
    ]
    stall = f"{min(acks_after_kill):+.1f}s" if acks_after_kill else "never"
    return Check(
        f"failover during '{phase.name}' within fencing + {FAILOVER_SECONDS:.0f}s",
        not late and served > 0,
        f"{len(held)} events in flight, {len(late)} acknowledged later than fencing"
        f" ({session_timeout:.1f}s after the kill) + {FAILOVER_SECONDS:.0f}s or after their own"
        f" first attempt + {FAILOVER_SECONDS:.0f}s{f', e.g. {late[0]}' if late else ''};"
        f" {served} acknowledged between the fencing and the phase's end; the first answer"
        f" acknowledged after the kill came {stall}; {len(excused)} late only by CPU starvation"
        f" (up to {max(excused, default=0.0):.1f}s of it, {sum(excused):.1f}s in all)",
    )


def least_requests(rate: float, seconds: float, share: float = MIN_LOAD_SHARE) -> int:
    """The fewest requests a phase of `seconds` under `rate` events/s must see in flight (>= 1)."""
    return max(1, int(share * rate * seconds))


def started_during(attempts: Iterable[Attempt], phase: Phase) -> list[Attempt]:
    return [a for a in attempts if phase.holds(a.started)]


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


def summary(timeline: Timeline, attempts: Sequence[Attempt]) -> str:
    """`name 4.5s (N started), ...`: every phase with the requests started in it, for notes."""
    return ", ".join(
        f"{p.name} {p.seconds:.1f}s ({len(started_during(attempts, p))} started)"
        for p in timeline.phases
    )
