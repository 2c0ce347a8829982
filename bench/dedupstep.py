"""CPU per record of the dedup stage's step, in-process: two variants paired in ABBA rounds.

    python -m bench.dedupstep [--variant NAME ...] [--step 4] [--rounds 40] [--per-round 2000]
    python -m bench.dedupstep --profile [--step 4] [--rounds 10]

What runs: `StageProducer.guard(PartitionTask.process(records, out))`, as the stage's loop runs
each partition's step, over ingest records as the bridge writes them (`bridge.ingest.record.encode`
of a CloudEvent of about 200 bytes with three headers, a new id each, of 200 calls, appended now),
steps of `--step` records handed to 12 partitions in turn, a commit (`StageProducer.commit`, which
counts the transaction's metrics) every `--commit-every` records, as one at 1,000/s every 100 ms
would. The producer is the unit tests' `FakeProducer` (sends that do not suspend, no Kafka I/O),
the metrics real; uvloop. The old variant is today's code with one change undone by patching (the
old functions are copied below), each variant its own stage (its own windows: `window` swaps the
class the tasks make); `control` runs today's code against itself. `--profile` ranks
today's code's own time instead (cProfile on `time.process_time`). Nothing expires from the windows
(the default TTL): past its TTL a window expires about a record per record. Rounds, order and
report as in `bench.handlerpath`, whose machinery this shares: µs per record, not per event.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import pstats
import sys
import time
from array import array
from collections.abc import Callable

from aiokafka import TopicPartition

from bench.handlerpath import Outcome, _patched, _run, report
from bridge.config import DedupSettings
from bridge.dedup import task as task_module
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import StageProducer, _Transaction
from bridge.dedup.window import (
    _COMPACT_AFTER,
    _COMPACT_SHARE,
    _COMPACT_STEP,
    _ENTRY_OBJECTS,
    _EXPIRE_STEP,
    _HALF_MS,
    _LOW,
    ttl_ms,
)
from bridge.groups import GroupMetadata
from bridge.ingest.record import encode
from bridge.metrics import Metrics
from bridge.sink.limits import TopicLimits
from bridge.sink.record import Record
from tests.unit.dedup.fakes import FakeProducer, FakeRecord, install

Patch = Callable[[], contextlib.AbstractContextManager[None]]
PARTITIONS = 12
GROUP = GroupMetadata("bench", generation_id=1, member_id="bench-1")


# --- The old functions, as they were before each change -----------------------------------------


def _old_count(self: StageProducer, txn: _Transaction) -> None:
    """A copy, on purpose (the A/B's old side), of bridge/dedup/transaction.py's
    `StageProducer._count` before the histograms' buckets were counted per transaction: it
    observed each record's two latencies one by one."""
    m = self._metrics
    m.dedup_transactions.labels("committed").inc()
    for topic, n in txn.published.items():
        m.published_by(topic).inc(n)
    for channel, n in txn.duplicates.items():
        m.duplicates_by(channel).inc(n)
    if txn.too_large:
        m.dedup_output_too_large.inc(txn.too_large)
    now = time.time()
    for received_at, event_time in txn.timings:
        m.end_to_end.observe(max(now - received_at, 0.0))
        if event_time is not None:
            m.event_lag.observe(max(now - event_time, 0.0))


class _OldSeenWindow:
    """A copy, on purpose (the A/B's old side), of bridge/dedup/window.py's `SeenWindow` before
    its ids were split over `_SHARDS` dicts: one dict, rebuilt whole by CPython when used up."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be > 0 and max_entries >= 1")
        # Half a ms over the TTL in whole ms: append times are whole ms (k / 1000 s), so a copy
        # exactly TTL after its first, a float difference off by ~1e-7 s either way, stays a
        # duplicate and one a ms later does not. Decided as in integer ms, at no cost a record.
        self._ttl = ttl_ms(ttl) / 1000 + _HALF_MS
        self._max = max_entries
        # digest → its last-seen time; the arrays queue its sightings (one per id and time) in
        # arrival order, which is expiry order because stream time never goes back (`observe`).
        self._last: dict[int, float] = {}
        self._high = array("Q")
        self._low = array("Q")
        self._times = array("d")
        self._head = 0
        # While a pass dropping stale slots runs (`_drop_stale`, started past twice the live ids'
        # slots, a few slots a sighting, shifting the latest sightings down in place, in order):
        # the slots from the head up to `_kept` are those it kept, from there up to `_read`
        # garbage, from `_read` on not yet examined. Both -1 when none runs.
        self._kept = self._read = -1
        self.stream_time = float("-inf")
        self.evicted_early = 0

    def __len__(self) -> int:
        """Ids held: those whose TTL passed by stream time too, until `_evict` reaches them."""
        return len(self._last)

    def size_bytes(self) -> int:
        """Estimated bytes held: the table and queues as allocated, plus each id's objects. O(1)."""
        # sys.getsizeof counts a dict's or array's allocation, not its length: the slack a
        # growth or a takeover left behind shows too.
        tables = sys.getsizeof(self._last) + sys.getsizeof(self._high)
        queues = sys.getsizeof(self._low) + sys.getsizeof(self._times)
        return tables + queues + len(self._last) * _ENTRY_OBJECTS

    def __contains__(self, key: int) -> bool:
        seen = self._last.get(key)
        return seen is not None and seen >= self.stream_time - self._ttl

    def observe(self, key: int, appended_at: float) -> bool:
        """Record a sighting; True when the id is new (not seen within the TTL before it)."""
        # A broker clock step back must not reorder the queue: time only moves forward here.
        now = appended_at if appended_at > self.stream_time else self.stream_time
        self.stream_time = now
        self._evict(now, _EXPIRE_STEP)
        previous = self._last.get(key)
        if previous == now:
            # Its slot at this time stands for it already. A second one would outlive the id's
            # eviction by the cap and, the id back at this same time, evict it again at once:
            # the id just seen forgotten, an older one kept.
            return False
        fresh = previous is None or previous < now - self._ttl
        self._last[key] = now
        self._high.append(key >> 64)
        self._low.append(key & _LOW)
        self._times.append(now)
        if len(self._last) > self._max:
            self._evict(now, 0, over_cap=True)
        if self._read >= 0 or len(self._times) - self._head > 2 * len(self._last) + _COMPACT_AFTER:
            self._drop_stale()
        return fresh

    def drop_expired(self, limit: int) -> int:
        """Drop ids whose TTL passed by stream time, examining at most `limit` slots (returned)."""
        return self._evict(self.stream_time, limit)

    def _drop_stale(self) -> None:
        """Examine the next `_COMPACT_STEP` slots of a pass keeping only each id's latest sighting.

        Else copies of a few ids (a retry storm) grow the queue a slot each for a whole TTL.
        """
        last, high, low, times = self._last, self._high, self._low, self._times
        if self._read < 0:
            self._kept = self._read = self._head
        kept, read, end = self._kept, self._read, len(times)
        stop = min(read + _COMPACT_STEP, end)
        while read < stop:
            when = times[read]
            # An id has one slot at its latest time (`observe`): any other of its slots is stale.
            if last.get((high[read] << 64) | low[read]) == when:
                if kept != read:
                    high[kept], low[kept], times[kept] = high[read], low[read], when
                kept += 1
            read += 1
        if read == end:  # the pass is done: what follows what it kept is garbage
            del high[kept:]
            del low[kept:]
            del times[kept:]
            self._kept = self._read = -1
        elif kept == self._head:  # nothing kept before the garbage: the queue starts after it
            self._head = self._kept = self._read = read
        else:
            self._kept, self._read = kept, read

    def _evict(self, now: float, limit: int, *, over_cap: bool = False) -> int:
        """Drop the slots expired at `now`, at most `limit`; `over_cap`, as many more as bring the
        ids down to the cap, oldest first (the expired ones are). Returns the slots examined."""
        last, high, low, times = self._last, self._high, self._low, self._times
        head, end, horizon = self._head, len(times), now - self._ttl
        garbage = self._kept  # where a running pass's garbage starts (-1: no pass runs)
        examined = 0
        while head < end:
            when = times[head]
            if (when >= horizon or examined >= limit) and not (over_cap and len(last) > self._max):
                break
            examined += 1
            key = (high[head] << 64) | low[head]
            head += 1
            if head == garbage:
                # Every slot the pass kept is gone: on to those it has not read. Its garbage holds
                # the slots it moved down as they were: one could pass for the latest sighting of
                # an id evicted by the cap and seen again at that time, and forget it.
                head = self._read
            if last.get(key) == when:  # its latest sighting: nothing later keeps it
                del last[key]
                if when >= horizon:
                    self.evicted_early += 1
        if garbage >= 0 and head >= garbage:  # the pass goes on from the head
            self._kept = self._read = head
        if head > _COMPACT_AFTER and head * _COMPACT_SHARE > end:
            # Amortised O(1): a compaction moves the live slots, at most three times the
            # consumed ones that set it off.
            del high[:head]
            del low[:head]
            del times[:head]
            if self._read >= 0:
                self._kept -= head
                self._read -= head
            head = 0
        self._head = head
        return examined


VARIANTS: dict[str, Patch] = {
    "histograms": lambda: _patched((StageProducer, "_count", _old_count)),
    "window": lambda: _patched((task_module, "SeenWindow", _OldSeenWindow)),
    "control": contextlib.nullcontext,
}


# --- The path --------------------------------------------------------------------------------


class _Stage:
    """One producer and its partitions' tasks, as a DedupStage holds them."""

    def __init__(self) -> None:
        settings = DedupSettings(group="bench")
        self.metrics = Metrics()
        self.out = StageProducer(settings, {}, self.metrics, TopicLimits(1_048_576))
        self.producer = FakeProducer()
        install(self.out, self.producer)
        self.tasks = [
            PartitionTask(TopicPartition("ingest", p), settings, dict, self.metrics)
            for p in range(PARTITIONS)
        ]

    async def commit(self) -> None:
        offsets = {task.tp: task.position for task in self.tasks}
        await self.out.commit(offsets, GROUP)
        # The fake keeps every call and delivery: dropped, so a round's flush stays its own.
        self.producer.calls.clear()
        self.producer.deliveries.clear()


def _records(stage: _Stage, salt: int, count: int) -> list[list[FakeRecord]]:
    """`count` ingest records, each a new event of one of 200 calls, per partition in order."""
    now = time.time()
    per: list[list[FakeRecord]] = [[] for _ in range(PARTITIONS)]
    for index in range(count):
        call = f"call-{salt}-{index % 200}"
        event_id = f"{call}:{index}"
        value = b'{"specversion":"1.0","id":"%s","type":"call.transcript","data":{"text":"%s"}}' % (
            event_id.encode(),
            b"x" * 120,
        )
        output = Record(
            "pinecall.events",
            call.encode(),
            value,
            (("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("content-type", b"json")),
        )
        r = encode("ingest", event_id, output, "webhook", now - 0.02, now - 0.5)
        task = stage.tasks[index % PARTITIONS]
        offset = task.position + len(per[index % PARTITIONS])
        per[index % PARTITIONS].append(
            FakeRecord(offset, int(now * 1000), r.key, r.value, list(r.headers))
        )
    return per


def _steps(per: list[list[FakeRecord]], step: int) -> list[tuple[int, list[FakeRecord]]]:
    """The records as steps of `step` records of one partition, the partitions in turn."""
    out: list[tuple[int, list[FakeRecord]]] = []
    longest = max(len(records) for records in per)
    for first in range(0, longest, step):
        for p, records in enumerate(per):
            if records[first : first + step]:
                out.append((p, records[first : first + step]))
    return out


async def _timed(
    stage: _Stage, steps: list[tuple[int, list[FakeRecord]]], commit_every: int
) -> float:
    """CPU seconds to process `steps`, committing every `commit_every` records."""
    out, tasks = stage.out, stage.tasks
    since = 0
    started = time.process_time()
    for p, records in steps:
        await out.guard(tasks[p].process(records, out))
        since += len(records)
        if since >= commit_every:
            await stage.commit()
            since = 0
    await stage.commit()
    return time.process_time() - started


async def measure(
    variant: str, rounds: int, per_round: int, step: int, commit_every: int
) -> Outcome:
    """`rounds` paired rounds of `per_round` records of the old and the new variant each."""
    old_patch = VARIANTS[variant]
    # A stage each, the old one made under its patch: its windows are the old class, and each
    # side's windows hold its own rounds' ids (as many on either side).
    with old_patch():
        stages = {"old": _Stage()}
    stages["new"] = _Stage()
    for which, stage in stages.items():
        with old_patch() if which == "old" else contextlib.nullcontext():
            await _timed(stage, _steps(_records(stage, 0, per_round), step), commit_every)
    outcome = Outcome([], [])
    for n in range(rounds):
        order = ("old", "new") if n % 2 == 0 else ("new", "old")
        for k, which in enumerate(order):
            stage = stages[which]
            # Made just before its turn: the tasks' positions move with every batch.
            steps = _steps(_records(stage, 2 * n + k + 1, per_round), step)
            gc.collect()
            gc.freeze()  # the prepared records are no collection's work inside the timed part
            patch = old_patch() if which == "old" else contextlib.nullcontext()
            with patch:
                seconds = await _timed(stage, steps, commit_every)
            gc.unfreeze()
            getattr(outcome, which).append(seconds / per_round * 1e6)
    return outcome


async def profile(per_round: int, step: int, commit_every: int, rounds: int) -> str:
    """Own time per function, CPU-timed, over `rounds` batches of today's code."""
    stage = _Stage()
    await _timed(stage, _steps(_records(stage, 0, per_round), step), commit_every)
    profiler = cProfile.Profile(time.process_time)
    for n in range(rounds):
        steps = _steps(_records(stage, n + 1, per_round), step)
        profiler.enable()
        await _timed(stage, steps, commit_every)
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--step", type=int, default=4, help="records per partition's step")
    parser.add_argument("--commit-every", type=int, default=100, help="records per transaction")
    parser.add_argument("--profile", action="store_true", help="rank own time instead")
    args = parser.parse_args(argv)

    async def each() -> None:
        if args.profile:
            print(await profile(args.per_round, args.step, args.commit_every, args.rounds))
            return
        for variant in args.variant or sorted(VARIANTS):
            outcome = await measure(
                variant, args.rounds, args.per_round, args.step, args.commit_every
            )
            print(report(variant, outcome).replace("µs/event", "µs/record"), flush=True)

    _run(each())


if __name__ == "__main__":
    main()
