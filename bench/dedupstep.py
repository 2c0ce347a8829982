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
old functions are copied below); `control` runs today's code against itself. `--profile` ranks
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
import time
from collections.abc import Callable

from aiokafka import TopicPartition

from bench.handlerpath import Outcome, _patched, _run, report
from bridge.config import DedupSettings
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import StageProducer, _Transaction
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


VARIANTS: dict[str, Patch] = {
    "histograms": lambda: _patched((StageProducer, "_count", _old_count)),
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
    stage = _Stage()
    old_patch = VARIANTS[variant]
    await _timed(stage, _steps(_records(stage, 0, per_round), step), commit_every)  # warm-up
    outcome = Outcome([], [])
    for n in range(rounds):
        order = ("old", "new") if n % 2 == 0 else ("new", "old")
        for k, which in enumerate(order):
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
