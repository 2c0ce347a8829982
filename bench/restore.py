"""Restore: how long a new owner of an ingest partition takes to rebuild its seen-window.

  .venv/bin/python -m bench.restore [--sizes 100000,1000000] [--profile] [--out F.json]

For each size N: write N ingest records (the bridge's own encoding of bench/events.py's entries,
one distinct id each) into one partition of a LogAppendTime topic on the bench broker, then time
`bridge.dedup.restore.restore` rebuilding a SeenWindow from it. What bounds the rate is named two
ways: the cost split (the same range fetched without decoding; decode, digest and window update
timed on records held in memory) and, with --profile, py-spy over the largest restore.
Memory per remembered id comes from `bench.dedupmem`, in a fresh process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import broker, ingest, profile
from bridge.config import KafkaSettings
from bridge.dedup.restore import RESTORE_FETCH_BYTES, restore
from bridge.dedup.window import SeenWindow, digest
from bridge.ingest.record import decode
from bridge.sink.kafka import client_options

TTL = 900.0
MAX_ENTRIES = 5_000_000  # the per-partition default: no early eviction at these sizes
SAMPLE = 100_000  # records held in memory for the per-step cost split


def _consumer(options: dict[str, Any]) -> AIOKafkaConsumer:
    # The options restore() itself uses, so the fetch-only pass reads the same way.
    return AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=RESTORE_FETCH_BYTES,
        fetch_max_bytes=RESTORE_FETCH_BYTES,
    )


async def _end_offset(options: dict[str, Any], tp: TopicPartition) -> int:
    consumer = _consumer(options)
    await consumer.start()
    try:
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def fetch_only(
    options: dict[str, Any], tp: TopicPartition, end: int, keep: int = 0
) -> tuple[float, list[Any]]:
    """Seconds to fetch [0, end) with no decoding; the first `keep` records are returned."""
    consumer = _consumer(options)
    await consumer.start()
    kept: list[Any] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        started = time.perf_counter()
        position = 0
        while position < end:
            batch = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            if batch:
                position = batch[-1].offset + 1
                if len(kept) < keep:
                    kept.extend(batch[: keep - len(kept)])
        return time.perf_counter() - started, kept
    finally:
        await consumer.stop()


def split(records: list[Any]) -> dict[str, float]:
    """Microseconds per record for each step restore takes after the fetch."""
    started = time.perf_counter()
    entries = [decode(r.key, r.value, r.headers) for r in records]
    decoded = time.perf_counter()
    keys = [digest(e.event_id) for e in entries if e is not None]
    digested = time.perf_counter()
    window = SeenWindow(TTL, MAX_ENTRIES)
    for key, r in zip(keys, records, strict=True):
        window.observe(key, r.timestamp / 1000)
    observed = time.perf_counter()
    n = max(len(records), 1)
    return {
        "decode_us": (decoded - started) / n * 1e6,
        "digest_us": (digested - decoded) / n * 1e6,
        "observe_us": (observed - digested) / n * 1e6,
    }


async def one_size(bootstrap: str, n: int, salt: int, work: Path, *, spy: bool) -> dict[str, Any]:
    topic = f"bench.{salt:x}.restore-{n}.ingest"
    await ingest.create_topic(bootstrap, topic, 1)
    started = time.perf_counter()
    written = await ingest.write(
        bootstrap, topic, f"bench.{salt:x}.events", salt, range(n), 1, only_partition=0
    )
    fill_s = time.perf_counter() - started
    tp = TopicPartition(topic, 0)
    options = client_options(KafkaSettings(bootstrap_servers=[bootstrap]))
    end = await _end_offset(options, tp)
    print(f"  {n:>9,} ids: wrote {written:,} records in {fill_s:.1f} s", flush=True)

    window = SeenWindow(TTL, MAX_ENTRIES)
    gc.collect()
    sampler = None
    raw = work / f"restore-{n}.raw"
    if spy:
        sampler = profile.start_open(os.getpid(), raw)
        profile.wait_attached(sampler)
    cpu0, t0 = time.process_time(), time.perf_counter()
    ids = await restore(options, tp, end, window, TTL)
    restore_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    prof = profile.interrupt(sampler, raw) if sampler is not None else None
    del window
    gc.collect()

    fetch_s, sample = await fetch_only(options, tp, end, keep=min(n, SAMPLE))
    costs = split(sample)
    del sample
    gc.collect()
    out: dict[str, Any] = {
        "ids": n,
        "records": end,
        "restored": ids,
        "fill_s": fill_s,
        "restore_s": restore_s,
        "records_per_s": ids / restore_s,
        "cpu_s": cpu_s,
        "cpu_share": cpu_s / restore_s,
        "fetch_only_s": fetch_s,
        "fetch_us": fetch_s / max(end, 1) * 1e6,
        **costs,
        "restore_us": restore_s / max(ids, 1) * 1e6,
    }
    if prof is not None:
        out["profile"] = prof
    print(
        f"  {n:>9,} ids: restore {restore_s:.2f} s ({ids / restore_s:,.0f} records/s, CPU "
        f"{cpu_s / restore_s:.0%}); per record: fetch {out['fetch_us']:.1f} µs, decode "
        f"{costs['decode_us']:.1f}, digest {costs['digest_us']:.1f}, observe "
        f"{costs['observe_us']:.1f} (restore {out['restore_us']:.1f})",
        flush=True,
    )
    return out


def memory() -> dict[str, Any]:
    """SeenWindow's bytes per remembered id: RSS and tracemalloc, each in a fresh process."""
    result: dict[str, Any] = {}
    for kind, extra in (("rss", []), ("traced", ["--traced"])):
        done = subprocess.run(
            [sys.executable, "-m", "bench.dedupmem", *extra],
            cwd=broker.ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        result[kind] = json.loads(done.stdout)["points"]
    return result


async def run(bootstrap: str, sizes: list[int], work: Path, spy: bool) -> dict[str, Any]:
    salt = random.getrandbits(31)
    results = []
    for n in sizes:
        results.append(await one_size(bootstrap, n, salt, work, spy=spy and n == max(sizes)))
    return {"sizes": results, "ttl_s": TTL}


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.restore", description=__doc__)
    parser.add_argument("--kafka-port", type=int, default=broker.default_port())
    parser.add_argument("--sizes", default="100000,1000000", help="ids per restore, comma list")
    parser.add_argument("--profile", action="store_true", help="py-spy over the largest restore")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--keep-broker", action="store_true", help="leave a broker we start")
    parser.add_argument("--no-memory", action="store_true", help="skip bench.dedupmem")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = broker.ROOT / ".cache" / "bench" / f"restore-{int(time.time())}"
    work.mkdir(parents=True, exist_ok=True)
    with broker.running(args.kafka_port, keep=args.keep_broker) as bootstrap:
        print(f"restore benchmark on {bootstrap}", flush=True)
        # uvloop, as `pinecall-bridge run` uses.
        result = uvloop.run(run(bootstrap, sizes, work, args.profile))
    if not args.no_memory:
        result["memory"] = memory()
    for rss, traced in zip(
        result.get("memory", {}).get("rss", [])[1:],
        result.get("memory", {}).get("traced", [])[1:],
        strict=True,
    ):
        print(
            f"  SeenWindow at {rss['entries']:,} ids: {rss['bytes_per_entry']:.0f} bytes per id"
            f" (RSS), {traced['bytes_per_entry']:.0f} (tracemalloc)"
        )
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
