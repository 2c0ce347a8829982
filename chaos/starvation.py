"""Time a request lost to CPU starvation rather than to the bridge's own waits. Pure.

Two accounts of it: the harness's own event loop running late (stalls, as intervals), and the
bridge's main thread waiting on a run queue (a cumulative counter, sampled periodically). Both
come from the same starved CPUs and may overlap in wall time, so per sampling period the larger
of the two counts, never their sum: the check can then still fail on a wait of the bridge's own.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise

# (monotonic time, cumulative seconds waited), time ascending
Series = Sequence[tuple[float, float]]
# The grace after an answer in which a harness stall still counts (as load.own_delay has it).
GRACE = 0.1


def value_at(series: Series, at: float) -> float:
    """The counter at `at`, linear between samples; outside them the nearest sample's value.

    Never extrapolated: a wait nobody sampled is not subtracted.
    """
    if not series:
        return 0.0
    index = bisect_right([t for t, _ in series], at)
    if index == 0:
        return series[0][1]
    if index == len(series):
        return series[-1][1]
    (t0, v0), (t1, v1) = series[index - 1], series[index]
    return v0 + (v1 - v0) * (at - t0) / (t1 - t0)


def accrued(series: Series, start: float, end: float) -> float:
    """How much the counter grew during [start, end] (0 for an empty or inverted interval)."""
    if end <= start:
        return 0.0
    return max(0.0, value_at(series, end) - value_at(series, start))


def overlap(stalls: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """The length of the stall intervals (begin, end) inside [start, end]."""
    return sum(max(0.0, min(e, end) - max(b, start)) for b, e in stalls)


def excused(
    stalls: Sequence[tuple[float, float]], waits: Series, start: float, end: float
) -> float:
    """The starvation to subtract from an answer sent at `start` and received at `end`.

    `stalls`: the harness's own late intervals during it; `waits`: the bridge's run-queue
    counter. Per period between two of its samples, the larger of the two.
    """
    inside = [t for t, _ in waits if start < t < end + GRACE]
    cuts = [start, *inside, end + GRACE]
    return sum(
        max(overlap(stalls, a, b), accrued(waits, a, min(b, end))) for a, b in pairwise(cuts)
    )
