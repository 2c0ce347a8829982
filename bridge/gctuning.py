"""The cyclic garbage collector's settings for a serving process, set once at its start."""

from __future__ import annotations

import gc

# CPython collects the youngest generation every 700 net container allocations; a serving
# process's requests free nearly all of theirs, so most of those collections find nothing
# (bench/OPTIMISATIONS.md). Cycles are still collected, ten times less often.
GEN0_THRESHOLD = 7_000


def tune_for_serving() -> None:
    """Freeze what start-up allocated (modules, classes, settings) and raise gen 0's threshold.

    Frozen objects are never walked again: a full collection walks only what was allocated
    since, about a tenth of the process's objects.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
