"""Two variants of one code path timed in the same process, paired in ABBA rounds.

The machinery `bench.handlerpath` and `bench.feedpath` share: each round times a prepared batch
of work under the old variant (today's code with one change undone by patching) and another
under the new, the order alternated per round (A B, B A, ...), `time.process_time` per batch,
the GC frozen over the prepared work. Only the paired ratios mean anything on a shared box; a
control (new against new) tells how far they move with no change.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

Patch = Callable[[], contextlib.AbstractContextManager[None]]
W = TypeVar("W")
CPYTHON_GEN0_THRESHOLD = 700  # CPython's default: the old side of a `gc-threshold` variant


@contextlib.contextmanager
def patched(*patches: tuple[Any, str, Any]) -> Iterator[None]:
    """Each (owner, name, value) set for the block, then put back."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


@contextlib.contextmanager
def gc_threshold(gen0: int) -> Iterator[None]:
    """Gen 0's collection threshold `gen0` for the block (the older generations' kept)."""
    saved = gc.get_threshold()
    gc.set_threshold(gen0, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@contextlib.contextmanager
def gc_unfrozen() -> Iterator[None]:
    """Nothing frozen for the block (the start-up objects and the prepared work back in the
    collected generations): a process that never calls `gc.freeze()`. Frozen again after."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.freeze()


def set_gen0_threshold(gen0: int | None) -> None:
    """The whole run's gen-0 threshold (a `gc-threshold` variant's new side), when given."""
    if gen0 is not None:
        gc.set_threshold(gen0, *gc.get_threshold()[1:])


@dataclass
class Outcome:
    old: list[float]  # µs per unit of work, per round
    new: list[float]

    def ratios(self) -> list[float]:
        return [n / o for o, n in zip(self.old, self.new, strict=True)]


async def paired(
    old_patch: Patch,
    prepare: Callable[[int, int], W],
    timed: Callable[[W], Awaitable[float]],
    rounds: int,
    per_round: int,
) -> Outcome:
    """`rounds` ABBA rounds; `prepare(round, k)` makes the k-th batch (0 the warm-up), `timed`
    runs one and answers its CPU seconds, for `per_round` units of work."""
    await timed(prepare(0, 0))  # warm-up: caches, first-call paths
    outcome = Outcome([], [])
    for n in range(rounds):
        batches = [prepare(n + 1, k) for k in range(2)]
        gc.collect()
        gc.freeze()  # the prepared work is no collection's work inside the timed part
        order = ("old", "new") if n % 2 == 0 else ("new", "old")
        for which, batch in zip(order, batches, strict=True):
            patch = old_patch() if which == "old" else contextlib.nullcontext()
            with patch:
                seconds = await timed(batch)
            getattr(outcome, which).append(seconds / per_round * 1e6)
        gc.unfreeze()
    return outcome


def report(variant: str, outcome: Outcome, unit: str = "event") -> str:
    ratios = outcome.ratios()
    lower = sum(r < 1 for r in ratios)

    def summary(values: list[float]) -> str:
        return f"min {min(values):.1f}, median {statistics.median(values):.1f} µs/{unit}"

    return (
        f"{variant}: old {summary(outcome.old)}; new {summary(outcome.new)}; "
        f"per-round new/old median {statistics.median(ratios):.3f}, "
        f"new lower in {lower} of {len(ratios)} rounds"
    )


def run(main: Coroutine[Any, Any, None]) -> None:
    """`main` on uvloop when installed, as the bridge runs."""
    try:
        import uvloop
    except ImportError:  # as the bridge: uvloop is optional
        asyncio.run(main)
    else:
        uvloop.run(main)
