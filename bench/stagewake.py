"""The dedup stage's transactional producer under a steady load: its sender's wakes, and CPU.

    python -m bench.stagewake --bootstrap 127.0.0.1:9092 [--variant wake|batch|control]
                              [--rate 1000]
                              [--seconds 4] [--rounds 12] [--count-only]

What runs: one `DedupStage` (default settings: 100 ms commit interval, 12 ingest partitions, 3
output partitions) in this process, fed by a writer in a child process that sends ingest records
(`bench.ingest.record`, every id new) at `--rate`, paced by its loop's clock, for the whole run.
The stage runs throughout; the variants alternate on it in windows of `--seconds`, ABBA, with
`bench.paired`'s rounds and control. `wake`: the new variant has `bridge.sink.drain`'s shims
(whole-broker drains, a batch due within the timer's resolution sent now, new batches that wake the
sender only when needed) on the stage's producer, installed here over its own drain; the old has
the stage's own (aiokafka's drain within the request limit, aiokafka's `_append_batch`). `batch`
(and `control`), both sides without the shims, as the stage runs: the new has the stage's own batch
size, the old aiokafka's 16 KiB (`OLD_BATCH_BYTES`), set on the accumulator, whose next batches
take it. The switch is made on the live producer, so the stage is not restarted. Per
window: `time.process_time` per record the stage published (the whole process: consumer,
decisions, producer), and, per commit, the sender's drains (one a wake-up), its linger timers
fired, and the requests it sent: produce (in the commit's flush or before it),
AddPartitionsToTxn, EndTxn; and the broker's CPU per record (its pid from kafka.sh's pid file,
as `bench.broker` finds it). The box is shared, so only the paired ratios mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaProducer

from bench import broker, ingest, measure
from bench.paired import paired, report, run
from bridge.config import DedupSettings, KafkaSettings
from bridge.dedup import transaction
from bridge.dedup.groupcommit import GroupCommitProducer
from bridge.dedup.stage import DedupStage
from bridge.metrics import Metrics
from bridge.partitioning import partition_for
from bridge.sink import drain
from bridge.sink.kafka import client_options

INGEST_PARTITIONS = 12
OUTPUT_PARTITIONS = 3
OLD_BATCH_BYTES = 16_384  # aiokafka's default, the stage producer's before it set its own
COUNTED = ("drains", "empty", "timers", "produce", "produce_in_commit", "add_partitions", "end")


class Switch:
    """Which variant the stage's producer runs now, and what its sender did meanwhile."""

    def __init__(self) -> None:
        self.new = True
        self.shims = True  # the new side has `bridge.sink.drain`'s shims (the wake variant)
        self.producer: AIOKafkaProducer | None = None  # the stage's live producer
        self.committing = False
        self.counts: Counter[str] = Counter()


SWITCH = Switch()


class Instrumented(GroupCommitProducer):
    """The stage's producer, its sender counted, and `bridge.sink.drain`'s shims switchable."""

    async def start(self) -> None:
        switchable(self)
        SWITCH.producer = self
        await super().start()


def switchable(producer: AIOKafkaProducer) -> None:
    """Count `producer`'s sender, and give it `bridge.sink.drain`'s shims while SWITCH.new."""
    accumulator: Any = producer._message_accumulator
    sender: Any = producer._sender
    kind = type(accumulator)
    # The plain side is the stage's producer as the stage builds it (its drain kept within the
    # brokers' request limit by `drain.cap_requests`), not aiokafka's class: the shims go on top
    # of that. A module check could not tell the stage's cap from the shims (one module's both).
    plain_drain, plain_append = accumulator.drain_by_nodes, accumulator._append_batch
    drain.drain_whole_brokers(producer)
    drain.wake_only_when_needed(producer)
    shimmed_drain, shimmed_append = accumulator.drain_by_nodes, accumulator._append_batch
    counts = SWITCH.counts

    def drain_by_nodes(*args: Any, **kwargs: Any) -> Any:
        counts["drains"] += 1
        shimmed = SWITCH.new and SWITCH.shims
        nodes, unknown = (shimmed_drain if shimmed else plain_drain)(*args, **kwargs)
        counts["empty"] += not nodes
        return nodes, unknown

    def append_batch(builder: Any, tp: Any) -> Any:
        return (shimmed_append if SWITCH.new and SWITCH.shims else plain_append)(builder, tp)

    def wakeup(fut: Any) -> None:
        counts["timers"] += 1
        kind._wakeup(fut)

    accumulator.drain_by_nodes = drain_by_nodes
    accumulator._append_batch = append_batch
    accumulator._wakeup = wakeup
    for name, key in (
        ("_send_produce_req", "produce"),
        ("_do_add_partitions_to_txn", "add_partitions"),
        ("_do_txn_commit", "end"),
    ):
        setattr(sender, name, _counting(getattr(sender, name), key))


def _counting(method: Callable[..., Any], key: str) -> Callable[..., Any]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        SWITCH.counts[key] += 1
        if key == "produce" and SWITCH.committing:
            SWITCH.counts["produce_in_commit"] += 1
        return await method(*args, **kwargs)

    return counted


@contextlib.contextmanager
def _old() -> Iterator[None]:
    SWITCH.new = False
    try:
        yield
    finally:
        SWITCH.new = True


@contextlib.contextmanager
def _small_batches() -> Iterator[None]:
    accumulator: Any = SWITCH.producer._message_accumulator  # type: ignore[union-attr]
    saved, accumulator._batch_size = accumulator._batch_size, OLD_BATCH_BYTES
    try:
        with _old():
            yield
    finally:
        accumulator._batch_size = saved


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "wake": _old,
    "batch": _small_batches,
    "control": contextlib.nullcontext,
}


def _count_commits_and_records() -> None:
    commit, publish = transaction.StageProducer.commit, transaction.StageProducer.publish

    async def counted_commit(out: transaction.StageProducer, *args: Any) -> frozenset[Any]:
        SWITCH.counts["commits"] += out.age is not None
        SWITCH.committing = True
        try:
            # What it left out: the stage reads it (None failed its first commit).
            return await commit(out, *args)
        finally:
            SWITCH.committing = False

    async def counted_publish(out: transaction.StageProducer, *args: Any) -> None:
        SWITCH.counts["records"] += 1
        await publish(out, *args)

    transaction.StageProducer.commit = counted_commit  # type: ignore[method-assign,assignment]
    transaction.StageProducer.publish = counted_publish  # type: ignore[method-assign,assignment]
    transaction.GroupCommitProducer = Instrumented  # type: ignore[attr-defined]


class Windows:
    """Each timed window: the stage's CPU per record, and the sender's counts per commit."""

    def __init__(self, seconds: float, expected: int, broker_pid: int) -> None:
        self.seconds, self.expected, self.broker_pid = seconds, expected, broker_pid
        self.per_commit: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        self.broker: dict[str, list[float]] = {"old": [], "new": []}  # its CPU µs per record

    async def timed(self, _: object) -> float:
        await asyncio.sleep(0.5)  # the other variant's last transaction committed
        SWITCH.counts.clear()
        broker_cpu = measure.cpu_seconds(self.broker_pid) if self.broker_pid else math.nan
        cpu = time.process_time()
        await asyncio.sleep(self.seconds)
        cpu = time.process_time() - cpu
        broker_cpu = (
            measure.cpu_seconds(self.broker_pid) if self.broker_pid else math.nan
        ) - broker_cpu
        counts = Counter(SWITCH.counts)
        commits, records = max(counts["commits"], 1), max(counts["records"], 1)
        which = "new" if SWITCH.new else "old"
        per = {key: counts[key] / commits for key in COUNTED}
        per["records"] = records / commits
        self.per_commit[which].append(per)
        self.broker[which].append(broker_cpu / records * 1e6)
        # paired divides by its fixed count: CPU per record the window published, scaled to it.
        return cpu / records * self.expected


async def _writer(bootstrap: str, topic: str, output: str, salt: int, rate: float) -> None:
    """Ingest records at `rate`, every id new, until killed (the child process's job)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, partitioner=partition_for
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(sys.maxsize):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = ingest.record(topic, output, salt, i)
        await producer.send(topic, rec.value, key=rec.key, headers=list(rec.headers))


async def main(args: argparse.Namespace) -> None:
    salt = random.getrandbits(31)
    topic, output = f"bench.{salt:x}.wake.ingest", f"bench.{salt:x}.wake.events"
    await ingest.create_topic(args.bootstrap, topic, INGEST_PARTITIONS)
    await ingest.create_topic(args.bootstrap, output, OUTPUT_PARTITIONS, log_append_time=False)
    _count_commits_and_records()
    SWITCH.shims = args.variant == "wake"
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.stagewake",
        "--bootstrap",
        args.bootstrap,
        "--write",
        f"{topic},{output},{salt},{args.rate}",
    )
    stage = DedupStage(
        DedupSettings(group=f"bench-{salt:x}-wake"),
        topic,
        client_options(KafkaSettings(bootstrap_servers=[args.bootstrap])),
        Metrics(),
    )
    await stage.start()
    try:
        await asyncio.sleep(5)  # joined, its partitions started, the writer at its rate
        per_round = int(args.rate * args.seconds)
        port = int(args.bootstrap.rsplit(":", 1)[1])
        windows = Windows(args.seconds, per_round, broker.pid(port))
        if args.count_only:
            for _ in range(args.rounds):
                await windows.timed(None)
                with VARIANTS[args.variant]():
                    await windows.timed(None)
        else:
            outcome = await paired(
                VARIANTS[args.variant], lambda n, k: None, windows.timed, args.rounds, per_round
            )
            print(report(args.variant, outcome, unit="record"))
        for which, rows in windows.per_commit.items():
            if rows:
                medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                print(f"{which} per commit, median of {len(rows)} windows: ", end="")
                print(", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
        old, new = windows.broker["old"], windows.broker["new"]
        if old and new and windows.broker_pid:
            ratios = [n / o for o, n in zip(old, new, strict=False)]
            print(
                f"broker CPU per record: old median {statistics.median(old):.1f} µs, new"
                f" {statistics.median(new):.1f} µs; per-round new/old median"
                f" {statistics.median(ratios):.3f}, new lower in"
                f" {sum(r < 1 for r in ratios)} of {len(ratios)}"
            )
    finally:
        writer.kill()
        await writer.wait()
        await stage.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.stagewake")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="wake")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--count-only", action="store_true", help="counts only, no CPU pairing")
    parser.add_argument("--write", help=argparse.SUPPRESS)  # the child process: the writer
    args = parser.parse_args()
    if args.write:
        topic, output, salt, rate = args.write.split(",")
        run(_writer(args.bootstrap, topic, output, int(salt), float(rate)))
    else:
        run(main(args))
