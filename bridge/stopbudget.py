"""A graceful stop's deadlines, each derived from one budget: BRIDGE_SHUTDOWN__GRACE_SECONDS.

A Kafka client's stop cut at its stage's deadline runs on past it (sink/clienttasks.py): a
consumer's stop settles, the cancelled stop unwinds, what it left is cut short; a start cut there
no longer (its settle and its undo share the stop's settle time). The stages so
end `reserve` before the grace period does, and those cuts fit in that reserve; a short grace
period keeps a quarter of itself for them, and what they may then run past the grace period,
with the interpreter's exit, must fit in a worker supervisor's margin (`supervised_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass

# How long a consumer's stop whose caller was cancelled may still run, to leave its group and
# close its connections: a LeaveGroup round trip against a live broker (milliseconds); a second
# covers a loaded broker.
STOP_SETTLE_SECONDS = 1.0
# How long a cut waits for what it cancelled or closed: local work (no request is sent), so
# milliseconds; the bound is for a loop too busy to get there, or a task that ignores its cancel.
CUT_SECONDS = 0.5
# The most a stop cut at its deadline runs past it: one consumer's settle, the cancelled stop's
# unwinding, then two clients cut short (the dedup stage's transactional producer, its consumer).
# A start cut there (a partition's restore, a replacement client) as much: its bootstrap's settle
# and its undo within that one settle time, the cancelled start's and undo's unwinding, the
# client cut short (clienttasks.start_client).
CUT_OVERRUN_SECONDS = STOP_SETTLE_SECONDS + 3 * CUT_SECONDS
# A worker process's exit after its bridge logged "stopped": under 0.1 s measured, as it skips
# the interpreter's teardown (bridge/cli.py), which took 1.5-2 s on 2 busy cores.
EXIT_SECONDS = 1.0
# A worker supervisor kills the workers still running this long after the grace period.
SUPERVISOR_MARGIN_SECONDS = 3.0
# Kept from a stop's first phase after the drain delay, to close the inputs: the listener, the
# feed's close handshake and what it read, its lease's leave (1 s), the webhooks' answers.
CLOSE_SECONDS = 2.0


def reserve_seconds(grace: float) -> float:
    """The end of a grace period kept for cut Kafka client stops: at most a quarter of it."""
    return min(CUT_OVERRUN_SECONDS, max(grace, 0.0) / 4)


def overrun_seconds(grace: float) -> float:
    """The most a stop of `grace` s may run past it: cut stops that outgrow their reserve."""
    return CUT_OVERRUN_SECONDS - reserve_seconds(grace)


def drain_delay_seconds(delay: float, phase_one: float) -> float:
    """The drain delay a first phase of `phase_one` s allows: it keeps up to a quarter to close
    the inputs (a delay cut at the phase's end closed none: the port served, the feed read on)."""
    return max(min(delay, phase_one - min(CLOSE_SECONDS, phase_one / 4)), 0.0)


def first_phase_seconds(grace: float, by: float | None = None) -> float:
    """The first phase of a stop planned at its start (`by`: its sooner end, s from then): what
    the drain delay is cut against, as a stop cuts it (its inputs_by less its start)."""
    return StopBudget.plan(0.0, grace, by).inputs_by


def final_phase_seconds(grace: float) -> float:
    """The end of a grace period kept for the ingest flush, the dedup commit and its leave."""
    return min(5.0, grace / 4)


def min_supervised_grace() -> float:
    """The shortest grace period whose worst stop, and the exit, fit in the supervisor's margin."""
    return max(4 * (CUT_OVERRUN_SECONDS + EXIT_SECONDS - SUPERVISOR_MARGIN_SECONDS), 0.0)


def supervised_fits(grace: float, margin: float = SUPERVISOR_MARGIN_SECONDS) -> bool:
    """A worker with this grace period stops and exits before its supervisor kills it."""
    return overrun_seconds(grace) + EXIT_SECONDS <= margin


@dataclass(frozen=True)
class StopBudget:
    """One stop's deadlines (loop time), in the order they come."""

    # Input stopped: the listener, the feed, the call logs; what they took is in the producer.
    inputs_by: float
    # The ingest producer flushed (the first half of the final phase).
    flush_by: float
    # The dedup stage drained, committed and left: every stage's own deadline.
    stages_by: float
    # The grace period's end: cut stops are over by then (unless the period is too short).
    deadline: float

    @classmethod
    def plan(cls, now: float, grace: float, by: float | None = None) -> StopBudget:
        """The deadlines of a stop at `now`; `by`: a sooner end set by whoever stops us."""
        deadline = now + grace if by is None else min(now + grace, max(by, now))
        left = deadline - now
        stages_by = deadline - reserve_seconds(left)
        inputs_by = stages_by - final_phase_seconds(stages_by - now)
        return cls(
            inputs_by=inputs_by,
            flush_by=stages_by - (stages_by - inputs_by) / 2,
            stages_by=stages_by,
            deadline=deadline,
        )
