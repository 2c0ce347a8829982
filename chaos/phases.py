"""A scenario's phases on the monotonic clock, and whether its load actually ran in each. Pure.

A phase's checks mean something only if requests reached the bridge during it: a load that ran
out before a phase began would let the phase pass on nothing, so that is a failure of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chaos.harness import Check
from chaos.load import Attempt

# The share of the offered rate a judged phase must see in flight. During an outage each call
# waits on its unanswered event (up to the publish timeout, then a retry pause), so new requests
# fall well below the offered rate but the waiting ones still count; a load that ran out has none.
MIN_LOAD_SHARE = 0.05


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
