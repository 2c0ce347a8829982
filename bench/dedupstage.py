"""The dedup stage's own throughput: a pre-filled ingest topic drained by one DedupStage.

  .venv/bin/python -m bench.dedupstage [--records 200000] [--partitions 12] [--profile]

The ingest topic (LogAppendTime, partitioned by call id as the ingest producer does) is filled
first with M records: every id once, plus a late second copy of every `--dup-every`-th. Then a
DedupStage with a fresh group is started in this process (uvloop, default settings: 100 ms
commit interval, one transactional producer for all its partitions) and timed until a
read_committed kcat consumer of the output topic has seen every distinct id. Nothing else runs
in the process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import uvloop
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import broker, ingest, measure, profile
from bridge import looplag
from bridge.config import DedupSettings, KafkaSettings
from bridge.dedup.stage import DedupStage
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import StageProducer
from bridge.metrics import Metrics
from bridge.sink.kafka import client_options

LAG = 500  # records between an id and its late copy
# Finer than the bridge's own probe: what a webhook in the same process would wait at worst.
LOOP_PROBE_S = 0.005
Span = tuple[float, float]


def instrument() -> dict[str, list[Span]]:
    """Time every PartitionTask.process and StageProducer.commit call (wall clock spans).

    The stage runs them under one lock, so the union of each kind's spans is the share of the
    wall time the stage spent deciding and sending, and waiting for transactions to commit.
    """
    spans: dict[str, list[Span]] = {"process": [], "commit": []}
    process, commit = PartitionTask.process, StageProducer.commit

    async def timed_process(task: PartitionTask, records: list[Any], out: StageProducer) -> None:
        started = time.perf_counter()
        try:
            await process(task, records, out)
        finally:
            spans["process"].append((started, time.perf_counter()))

    async def timed_commit(out: StageProducer, offsets: Any, group: Any) -> frozenset[Any]:
        started = time.perf_counter()
        try:
            # What the commit left out, returned: the stage reads it (None crashed its loop).
            return await commit(out, offsets, group)
        finally:
            spans["commit"].append((started, time.perf_counter()))

    PartitionTask.process = timed_process  # type: ignore[method-assign,assignment]
    StageProducer.commit = timed_commit  # type: ignore[method-assign,assignment]
    return spans


def covered(spans: list[Span]) -> float:
    """Seconds covered by the union of the spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


async def _output_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1)])
    finally:
        await admin.close()


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(f"pinecall_bridge_{name}", labels or {})
    return float(value or 0.0)


async def run(
    bootstrap: str,
    distinct: int,
    dup_every: int,
    partitions: int,
    work: Path,
    spy: bool,
    broker_pid: int,
) -> dict[str, Any]:
    salt = random.getrandbits(31)
    ingest_topic = f"bench.{salt:x}.stage.ingest"
    output_topic = f"bench.{salt:x}.stage.events"
    await ingest.create_topic(bootstrap, ingest_topic, partitions)
    await _output_topic(bootstrap, output_topic)
    order = ingest.with_duplicates(distinct, dup_every, LAG)
    started = time.perf_counter()
    written = await ingest.write(bootstrap, ingest_topic, output_topic, salt, order, partitions)
    fill_s = time.perf_counter() - started
    print(
        f"  wrote {written:,} ingest records ({distinct:,} distinct ids, "
        f"{written - distinct:,} copies) over {partitions} partitions in {fill_s:.1f} s",
        flush=True,
    )

    consumer = measure.Consumer(bootstrap, output_topic)
    metrics = Metrics()
    settings = DedupSettings(group=f"bench-{salt:x}-stage")
    stage = DedupStage(
        settings,
        ingest_topic,
        client_options(KafkaSettings(bootstrap_servers=[bootstrap])),
        metrics,
    )
    sampler = None
    raw = work / "stage.raw"
    if spy:
        sampler = profile.start_open(os.getpid(), raw)
        profile.wait_attached(sampler)
    spans = instrument()
    broker0 = measure.cpu_seconds(broker_pid) if broker_pid else float("nan")
    lags: list[float] = []
    probe = asyncio.create_task(looplag.watch(lags.append, LOOP_PROBE_S))
    cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
    await stage.start()
    last, changed = -1, time.monotonic()
    while True:
        seen = consumer.distinct()
        if seen >= distinct:
            break
        if seen != last:
            last, changed = seen, time.monotonic()
        elif time.monotonic() - changed > 30:
            break  # stalled: report what arrived
        await asyncio.sleep(0.02)
    total_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    probe.cancel()
    lags.sort()
    broker_s = (measure.cpu_seconds(broker_pid) if broker_pid else float("nan")) - broker0
    busy = {kind: covered(list(v)) for kind, v in spans.items()}
    commits = sorted(b - a for a, b in spans["commit"])
    prof = profile.interrupt(sampler, raw) if sampler is not None else None
    await asyncio.sleep(1.0)  # let late doubles, if any, arrive before counting
    await stage.stop()
    read = consumer.stop()
    got = [i for i in range(distinct) if i in read.copies]
    first_out = min(read.first_read.values(), default=wall0) - wall0
    last_out = max(read.first_read.values(), default=wall0) - wall0
    out: dict[str, Any] = {
        "partitions": partitions,
        "records": written,
        "distinct": distinct,
        "fill_s": fill_s,
        "total_s": total_s,
        "events_per_s": len(got) / total_s,
        "records_per_s": written / total_s,
        "first_output_s": first_out,
        "steady_events_per_s": len(got) / max(last_out - first_out, 1e-9),
        "cpu_s": cpu_s,
        "cpu_share": cpu_s / total_s,
        "broker_cpu_share": broker_s / total_s,
        "process_share": busy["process"] / total_s,
        "commit_share": busy["commit"] / total_s,
        "commit_ms": [measure.percentile(commits, q) * 1000 for q in (50, 99)],
        # How late a timer due every 5 ms fired: how long the stage held the loop at a stretch.
        "loop_lag_ms": [
            measure.percentile(lags, 99) * 1000 if lags else math.nan,
            max(lags, default=math.nan) * 1000,
        ],
        "lost": distinct - len(got),
        "doubled": sum(read.copies[i] - 1 for i in got),
        "foreign": read.foreign,
        "transactions": _sample(metrics, "dedup_transactions_total", {"outcome": "committed"}),
        "published": _sample(metrics, "events_published_total", {"topic": output_topic}),
        "duplicates": _sample(metrics, "events_duplicate_total", {"channel": "webhook"}),
    }
    if prof is not None:
        out["profile"] = prof
    print(
        f"  stage: {len(got):,} distinct events in {total_s:.2f} s = {out['events_per_s']:,.0f}"
        f" events/s ({out['records_per_s']:,.0f} ingest records/s; first output after "
        f"{first_out:.2f} s, {out['steady_events_per_s']:,.0f}/s after it); CPU "
        f"{out['cpu_share']:.0%} (broker {out['broker_cpu_share']:.0%}); wall time in process "
        f"{out['process_share']:.0%}, in commit {out['commit_share']:.0%} (p50/p99 "
        f"{out['commit_ms'][0]:.0f}/{out['commit_ms'][1]:.0f} ms); loop held up to "
        f"{out['loop_lag_ms'][1]:.0f} ms (p99 {out['loop_lag_ms'][0]:.0f}); "
        f"{out['transactions']:.0f} transactions; lost {out['lost']} doubled {out['doubled']}",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.dedupstage", description=__doc__)
    parser.add_argument("--kafka-port", type=int, default=broker.default_port())
    parser.add_argument("--records", type=int, default=200_000, help="distinct ids")
    parser.add_argument("--dup-every", type=int, default=10, help="a late copy of every n-th id")
    parser.add_argument("--partitions", type=int, default=12, help="ingest partitions")
    parser.add_argument("--profile", action="store_true", help="py-spy over the stage's run")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--keep-broker", action="store_true", help="leave a broker we start")
    args = parser.parse_args()
    measure.ensure_kcat()
    work = broker.ROOT / ".cache" / "bench" / f"stage-{int(time.time())}"
    work.mkdir(parents=True, exist_ok=True)
    with broker.running(args.kafka_port, keep=args.keep_broker) as bootstrap:
        print(f"dedup stage benchmark on {bootstrap}", flush=True)
        result = uvloop.run(
            run(
                bootstrap,
                args.records,
                args.dup_every,
                args.partitions,
                work,
                args.profile,
                broker.pid(args.kafka_port),
            )
        )
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
