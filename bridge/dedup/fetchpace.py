"""The dedup stage's fetches held until its open transaction is nearly due: one answer per commit.

A fetch that answers at its first record (fetch.min.bytes 1) comes back once per ingest produce
request, hundreds a second under load, each a request, an answer to parse and a loop wake-up on
both sides, while the records it brings wait for the transaction's commit anyway. With a
transaction open, the next fetch is held by the broker until shortly before that commit is due
and brings what came meanwhile in one answer; with none open, or one nearly due, a fetch answers
at its first record as before. A commit due while a held fetch is still out waits for it, a
little: its records belong to that commit, and would otherwise wait a whole interval more.

aiokafka fixes both settings when a consumer is built; its fetcher reads them from two attributes
each time it builds a FetchRequest, then sends each in `_proc_fetch_request`. `pace` puts
properties in their place and counts the held fetches out. It reads aiokafka's private fetcher
(0.12-0.14) defensively: where it lacks those parts, the consumer is left as is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)
_PARTS = ("_fetch_max_wait_ms", "_fetch_min_bytes", "_proc_fetch_request")
# A held fetch answers this long before the commit is due: time for the answer to arrive and its
# records to be decided, so they join that commit.
MARGIN_MS = 10
# How long past due a commit waits for a held fetch still out (a busy loop or broker answering
# late); past it, the commit goes and the fetch's records join the next one.
OWED_MS = 20
# Enough that the broker answers a held fetch at its wait, not at the next produce; a fetch that
# gathers this much before then answers early (a backlog or a burst), as a large one should.
HELD_MIN_BYTES = 1 << 20

Shape = tuple[int, int]


def fetch_wait_ms(interval_ms: int, age: float | None) -> int:
    """How long the stage's getmany may wait: an interval, or what is left of it for the open
    transaction.

    Pure. A whole interval's wait with a transaction open commits it up to an interval late
    whenever no record comes to end the wait: at a few events a second, most of them.
    """
    if age is None:
        return interval_ms
    return max(0, math.ceil(interval_ms - age * 1000))


def fetch_shape(interval_ms: int, age: float | None, idle_wait_ms: int) -> Shape:
    """The next fetch's (fetch.max.wait.ms, fetch.min.bytes), given the open transaction's age.

    Pure. Held until MARGIN_MS before the commit is due while more than that is left of it;
    otherwise answered at the first record, or after `idle_wait_ms` when none comes.
    """
    if age is None:
        return idle_wait_ms, 1
    left = math.floor(interval_ms - age * 1000) - MARGIN_MS
    if left <= 0:
        return idle_wait_ms, 1
    return left, HELD_MIN_BYTES


class FetchPace:
    """One stage's fetch shapes, and the held fetches still out that its commit is owed."""

    def __init__(
        self, interval_ms: int, idle_wait_ms: int, age: Callable[[], float | None]
    ) -> None:
        self._interval_ms = interval_ms
        self._idle_wait_ms = idle_wait_ms
        self._age = age
        self.held = False  # the last shape given was a held one
        self.out = 0  # held fetches sent whose records are not yet in the consumer's buffer

    def shape(self) -> Shape:
        """The shape of a fetch being built now."""
        shape = fetch_shape(self._interval_ms, self._age(), self._idle_wait_ms)
        self.held = shape[1] == HELD_MIN_BYTES
        return shape

    def owed(self, age: float) -> bool:
        """A commit due at `age` (seconds) still waits: a held fetch is out, not OWED_MS late."""
        return self.out > 0 and age * 1000 < self._interval_ms + OWED_MS

    def wait_ms(self, age: float | None) -> int:
        """How long the stage's next getmany may wait: fetch_wait_ms, or while a commit due waits
        for a held fetch, until that fetch's records come or it is OWED_MS late."""
        wait = fetch_wait_ms(self._interval_ms, age)
        if wait == 0 and age is not None and self.owed(age):
            return max(1, math.ceil(self._interval_ms + OWED_MS - age * 1000))
        return wait


class _Paced:
    """A fetcher's two settings read from its pace whenever aiokafka builds a request."""

    _pcb_pace: FetchPace

    @property
    def _fetch_max_wait_ms(self) -> int:
        return self._pcb_pace.shape()[0]

    @_fetch_max_wait_ms.setter
    def _fetch_max_wait_ms(self, _value: int) -> None:
        pass  # the pace decides; aiokafka sets it once, in __init__

    @property
    def _fetch_min_bytes(self) -> int:
        # Read with the wait, in one expression: the age can only have grown since, so the two
        # agree but for a wait that ends just as the fetch is no longer held (harmless).
        return self._pcb_pace.shape()[1]

    @_fetch_min_bytes.setter
    def _fetch_min_bytes(self, _value: int) -> None:
        pass

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> Any:
        # Started on the loop's next turn after its request was built, before another is.
        pace = self._pcb_pace
        proc = super()._proc_fetch_request  # type: ignore[misc]
        if not pace.held:
            return await proc(assignment, node_id, request)
        pace.out += 1
        try:
            return await proc(assignment, node_id, request)
        finally:
            pace.out -= 1


_classes: dict[type[Any], type[Any]] = {}


def pace(consumer: AIOKafkaConsumer, fetches: FetchPace) -> bool:
    """Make a started `consumer`'s fetches follow `fetches`; False if it cannot."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not all(hasattr(fetcher, part) for part in _PARTS):
        log.warning("aiokafka's fetcher has changed: the dedup stage's fetches are not held")
        return False
    kind = type(fetcher)
    if not issubclass(kind, _Paced):
        if kind not in _classes:
            _classes[kind] = type(f"Paced{kind.__name__}", (_Paced, kind), {})
        fetcher.__class__ = _classes[kind]
    fetcher._pcb_pace = fetches
    return True
