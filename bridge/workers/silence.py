"""The watchdog's decision: is a worker silent for too long, and for how long?

A worker never heard from is still starting, so it is measured against a start-up allowance
(as Kubernetes' startupProbe comes before its livenessProbe); once it has answered, the silence
bound counts from its last answer.
"""

from __future__ import annotations

from typing import NamedTuple

# A worker's start-up before its first answer: an interpreter, imports, settings, its socket
# bound, nothing else (no Kafka: that comes after). About 0.8 s of CPU each, all at the pod's
# start: measured 2.4 s for two workers and a dedup process on one CPU, 3.3 s on half of one,
# 25 s on an eighth (near the chart's 100m CPU request on a busy node). Killed at the 3 s least
# bound, they were killed again and again until the restart budget stopped the pod.
START_UP_SECONDS = 60.0


def answered_since(spawned: float, answered: float) -> bool:
    """Whether the answer is this worker's: one to a round asked before its spawn (the round
    outlasting its predecessor's exit and restart pause) was its predecessor's."""
    return answered >= spawned


class Silence(NamedTuple):
    """A worker silent too long: for how long, and whether it was still starting (no answer)."""

    quiet: float
    starting: bool


def silent_past_bound(
    spawned: float,
    answered: float | None,
    now: float,
    silent: float,
    start_up: float = START_UP_SECONDS,
) -> Silence | None:
    """How long the worker has been silent (since its last answer, else its spawn) and whether
    it was still starting, if too long.

    None while within `silent` of its last answer or, never answered, within `start_up` (at
    least `silent`) of its spawn.
    """
    if answered is not None and answered_since(spawned, answered):
        quiet, bound, starting = now - answered, silent, False
    else:
        quiet, bound, starting = now - spawned, max(silent, start_up), True
    return Silence(quiet, starting) if quiet > bound else None
