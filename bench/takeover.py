"""Takeover: peak memory and time of one process restoring every ingest partition.

  .venv/bin/python -m bench.takeover [--partitions 12] [--ids 100000,300000] [--concurrency 0]
      [--out F.json]

What a pod left alone does (the last pod standing, or one restarting after an OOM kill): the
stage starts a restore per assigned partition, BRIDGE_DEDUP__RESTORE_CONCURRENCY at a time
(`--concurrency`; 0, the default here, all at once). For each size N: fill a LogAppendTime
topic with N ids in each of the partitions (bench/ingest.py's writer, the bridge's own encoding),
then in a fresh process run `restore` for every partition, that many at a time,
and read its peak RSS (VmHWM) against memoryfit's prediction for the same settings
(max_entries N). The child's own baseline is subtracted: the restore's growth is compared with
the window's worst case plus what the reserve leaves past the process and its buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import broker, ingest
from bridge.config import KafkaSettings
from bridge.dedup.memoryfit import BYTES_PER_ID, PROCESS_RESERVE_BYTES, WindowFit
from bridge.dedup.restore import restore
from bridge.dedup.window import SeenWindow
from bridge.sink.kafka import client_options

TTL = 900.0
_MIB = 1024 * 1024


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


async def _ends(options: dict[str, Any], tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: int(end) for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def child(
    bootstrap: str, topic: str, partitions: int, max_entries: int, concurrency: int = 0
) -> dict[str, Any]:
    """In a fresh process: restore every partition, `concurrency` at a time (0: all at once);
    peak RSS and times."""
    options = client_options(KafkaSettings(bootstrap_servers=[bootstrap]))
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = await _ends(options, tps)
    gc.collect()
    base = _status("VmRSS")
    peak_seen = 0

    async def sample() -> None:
        nonlocal peak_seen
        while True:
            peak_seen = max(peak_seen, _status("VmRSS"))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    windows = [SeenWindow(TTL, max_entries) for _ in tps]
    times: list[float] = []

    gate = asyncio.Semaphore(concurrency or partitions)

    async def one(tp: TopicPartition, window: SeenWindow) -> int:
        async with gate:
            started = time.perf_counter()
            ids = await restore(options, tp, ends[tp], window, TTL)
        times.append(time.perf_counter() - started)
        return ids

    started = time.perf_counter()
    ids = await asyncio.gather(*(one(tp, w) for tp, w in zip(tps, windows, strict=True)))
    wall = time.perf_counter() - started
    sampler.cancel()
    gc.collect()
    after = _status("VmRSS")
    return {
        "base_rss": base,
        "peak_rss": _status("VmHWM"),
        "peak_sampled": peak_seen,
        "after_rss": after,
        "window_estimate": sum(w.size_bytes() for w in windows),
        "ids": sum(ids),
        "wall_s": wall,
        "partition_s": sorted(times),
        "concurrency": concurrency,
    }


async def fill(bootstrap: str, topic: str, partitions: int, n: int, salt: int) -> float:
    await ingest.create_topic(bootstrap, topic, partitions)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            ingest.write(
                bootstrap,
                topic,
                f"bench.{salt:x}.events",
                salt,
                range(p * n, (p + 1) * n),
                partitions,
                only_partition=p,
            )
            for p in range(partitions)
        )
    )
    return time.perf_counter() - started


def compare(partitions: int, n: int, got: dict[str, Any]) -> dict[str, Any]:
    """The restore's growth against memoryfit's worst case and the reserve's slack past the
    process (about 100 MiB) and its default buffers (96 MiB)."""
    fit = WindowFit(partitions, n, None)
    growth = got["peak_rss"] - got["base_rss"]
    slack = PROCESS_RESERVE_BYTES - (100 + 96) * _MIB
    return {
        **got,
        "partitions": partitions,
        "ids_per_partition": n,
        "predicted_window": fit.worst_case,
        "predicted_needed": fit.needed,
        "growth": growth,
        "held": got["after_rss"] - got["base_rss"],
        "transient": got["peak_rss"] - got["after_rss"],
        "over_prediction": growth - fit.worst_case - slack,
        "bytes_per_id_held": (got["after_rss"] - got["base_rss"]) / max(got["ids"], 1),
        "s_per_100k_ids": got["wall_s"] / max(got["ids"], 1) * 100_000,
        "reserve_slack": slack,
        "bytes_per_id_predicted": BYTES_PER_ID,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.takeover", description=__doc__)
    parser.add_argument("--kafka-port", type=int, default=broker.default_port())
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--ids", default="100000,300000", help="ids per partition, comma list")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="restores at a time (0: all at once)"
    )
    parser.add_argument("--child", nargs=3, metavar=("TOPIC", "PARTITIONS", "MAX"))
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    bootstrap = f"127.0.0.1:{args.kafka_port}"
    if args.child:
        topic, parts, cap = args.child
        result = uvloop.run(child(bootstrap, topic, int(parts), int(cap), args.concurrency))
        sys.stdout.write(json.dumps(result) + "\n")
        return
    salt = random.getrandbits(31)
    results = []
    with broker.running(args.kafka_port, keep=True) as bootstrap:
        for n in (int(s) for s in args.ids.split(",") if s):
            topic = f"bench.{salt:x}.takeover-{n}.ingest"
            fill_s = uvloop.run(fill(bootstrap, topic, args.partitions, n, salt))
            print(f"  {args.partitions} x {n:,} ids: filled in {fill_s:.0f} s", flush=True)
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "bench.takeover", "--kafka-port"),
                    *(str(args.kafka_port), "--child", topic, str(args.partitions), str(n)),
                    *("--concurrency", str(args.concurrency)),
                ],
                cwd=broker.ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
            got = compare(args.partitions, n, json.loads(done.stdout.splitlines()[-1]))
            results.append(got)
            print(
                f"  {args.partitions} x {n:,} ids: restored {got['ids']:,} in"
                f" {got['wall_s']:.1f} s ({got['s_per_100k_ids']:.2f} s per 100k ids); RSS"
                f" {got['base_rss'] / _MIB:.0f} -> peak {got['peak_rss'] / _MIB:.0f} -> after"
                f" {got['after_rss'] / _MIB:.0f} MiB; held {got['bytes_per_id_held']:.0f} B/id,"
                f" transient {got['transient'] / _MIB:.0f} MiB; predicted window"
                f" {got['predicted_window'] / _MIB:.0f} MiB; over prediction + slack:"
                f" {got['over_prediction'] / _MIB:+.0f} MiB",
                flush=True,
            )
    text = json.dumps({"results": results}, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
