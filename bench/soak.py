"""On demand, not in `bench.run`: one bridge at its defaults under a steady load past its TTL.

  .venv/bin/python -m bench.soak [--rate 200] [--seconds 1200] [--kafka-port 19092]

One `pinecall-bridge run` (default settings: TTL 900 s, one process, dedup in-process) takes
`--rate` signed webhooks a second with new ids for `--seconds` (default the TTL plus 5 min, so
the window fills and then expires ids as fast as they come), sampled every `--every` seconds:
RSS, `dedup_entries`, `dedup_window_bytes`, threads and fds. Every event is read back from the
output topic (read_committed). Writes <name>.json and <name>.md to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import broker, measure
from bench.run import PY, Bench, Loadgen, Proc, commit, machine, uptime
from bridge.dedup.memoryfit import PROCESS_RESERVE_BYTES
from tests.sockets import free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TTL = 900.0
MIB = 1024 * 1024
# Sizing cases (events/s, ids per partition cap): the README's 8,000/s at the chart's cap and at
# the bridge's, and the rate that fills the bridge's cap (12 x 1,000,000 / 900 s).
CASES = ((8000.0, 600_000), (8000.0, 1_000_000), (13_333.0, 1_000_000))
# Steady windows measured besides the soak's own size: the chart's cap (also 8,000/s on 12
# partitions), the bridge's, and sizes just past the dict's growth steps (2^k / 3 ids), where
# an id costs the most.
STEADY_SIZES = (174_800, 349_600, 600_000, 699_100, 1_000_000)


@dataclass
class Sample:
    """One look at the bridge: seconds since the load began, its memory and its window."""

    t: float
    rss: int
    entries: int
    window_bytes: int
    threads: int
    fds: int


def bytes_per_id(base_rss: int, sample: Sample) -> tuple[float, float]:
    """(RSS growth since `base_rss`, the window's own estimate) per remembered id. Pure."""
    if sample.entries <= 0:
        return math.nan, math.nan
    return (sample.rss - base_rss) / sample.entries, sample.window_bytes / sample.entries


def pod_bytes(
    rate: float,
    ttl: float,
    per_id: float,
    *,
    partitions: int,
    cap: int,
    processes: int = 1,
    reserve: int = PROCESS_RESERVE_BYTES,
) -> int:
    """Memory one pod needs when it owns every ingest partition at `rate` events/s. Pure.

    The window holds rate x TTL ids, spread over the partitions; none holds more than `cap`.
    """
    per_partition = min(rate * ttl / partitions, cap)
    return math.ceil(partitions * per_partition * per_id) + reserve * processes


def look(proc: Proc, t: float) -> Sample:
    pid = proc.pid
    return Sample(
        t=round(t, 1),
        rss=measure.rss(pid),
        entries=int(measure.dedup_entries(proc.port)),
        window_bytes=int(measure.dedup_window_bytes(proc.port)),
        threads=len(os.listdir(f"/proc/{pid}/task")),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


def soak(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    port = free_port()
    topics = bench.topics("soak")
    consumer = measure.Consumer(bench.brokers, topics["events"])
    proc = bench.target("bridge", topics, port=port)
    samples: list[Sample] = []
    count = int(args.rate * args.seconds)
    try:
        bench.settled([proc])
        time.sleep(2)
        base = look(proc, 0.0)
        gen = Loadgen(
            bench.webhook_args(args.rate, count, 0, ports=str(port)), bench.work / "soak-load.json"
        )
        gen.expect("ready")
        t0 = time.time() + 0.3
        gen.go(t0)
        print(f"soak: {args.rate:.0f}/s for {args.seconds:.0f} s on :{port}", flush=True)
        # A sample every `every` seconds of the load, and one after it.
        k = 1
        while (due := t0 + k * args.every) <= t0 + args.seconds + args.every:
            time.sleep(max(due - time.time(), 0))
            s = look(proc, time.time() - t0)
            samples.append(s)
            print(
                f"  t={s.t:6.0f} s rss={s.rss / MIB:7.1f} MiB ids={s.entries:8d}"
                f" window={s.window_bytes / MIB:6.1f} MiB threads={s.threads} fds={s.fds}",
                flush=True,
            )
            k += 1
        gen.expect("done")
        load, _sched, _lat = gen.result()
        consumer.wait_for(count, timeout=180)
        peak = measure.peak_rss(proc.pid)
    finally:
        proc.stop()
        read = consumer.stop()
    lost = sum(1 for i in range(count) if i not in read.copies)
    doubled = sum(n - 1 for n in read.copies.values() if n > 1)
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "every": args.every,
        "ttl": DEFAULT_TTL,
        "events": count,
        "statuses": load.get("statuses", {}),
        "lost": lost,
        "doubled": doubled,
        "foreign": read.foreign,
        "base": asdict(base),
        "samples": [asdict(s) for s in samples],
        "peak_rss": peak,
        "ingest_partitions": bench.args.ingest_partitions,
    }


def steady_windows(sizes: list[int]) -> list[dict[str, float]]:
    """`bench.dedupmem --steady` for each size, each in a fresh process (RSS is per process)."""
    out = []
    for size in sizes:
        done = subprocess.run(
            [PY, "-m", "bench.dedupmem", "--steady", str(size)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        out.append(orjson.loads(done.stdout))
    return out


def per_id_at(steady: list[dict[str, float]], ids: float) -> float:
    """The larger of RSS and estimate per id, of the steady window nearest `ids` in size. Pure."""
    near = min(steady, key=lambda w: abs(w["entries"] - ids))
    return max(near["rss_per_entry"], near["estimate_per_entry"])


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """B/id at the last sample once the TTL has passed, and what a pod needs. Pure.

    A pod's need at each sizing case takes the per-id cost of a steady window of that case's
    size per partition (`steady`), the soak's own figure being for its small windows only.
    """
    base = Sample(**data["base"])
    full = [Sample(**s) for s in data["samples"] if s["t"] >= data["ttl"] and s["entries"] > 0]
    out: dict[str, Any] = {"full_window": bool(full)}
    if full:
        # The last: the most ids turned over, the nearest to a steady state.
        last = max(full, key=lambda s: s.t)
        rss_per_id, window_per_id = bytes_per_id(base.rss, last)
        out |= {"at": asdict(last), "rss_per_id": rss_per_id, "window_per_id": window_per_id}
    steady = data.get("steady") or []
    if steady:
        partitions, ttl = data["ingest_partitions"], data["ttl"]
        pods = {}
        for rate, cap in CASES:
            per_id = per_id_at(steady, min(rate * ttl / partitions, cap))
            need = pod_bytes(rate, ttl, per_id, partitions=partitions, cap=cap)
            pods[f"{rate:g}/s, cap {cap:,}"] = {"per_id": per_id, "bytes": need}
        out["pods"] = pods
    return out


def markdown(name: str, data: dict[str, Any]) -> str:
    s = data["summary"]
    base = data["base"]
    lines = [
        f"# Memory soak {name}: {data['rate']:.0f} webhooks/s for {data['seconds']:.0f} s, "
        f"TTL {data['ttl']:.0f} s",
        "",
        f"Commit {data['commit']}; `python -m bench.soak`; one `pinecall-bridge run` at its "
        "defaults (one process, dedup in-process, "
        f"{data['ingest_partitions']} ingest partitions). Load average "
        f"{data['uptime_start'].split('load average:')[-1].strip()} at start, "
        f"{data['uptime_end'].split('load average:')[-1].strip()} at the end.",
        "",
        f"Read back: {data['events']:,} events sent, lost {data['lost']}, doubled "
        f"{data['doubled']}; answers {data['statuses']}. Peak RSS {data['peak_rss'] / MIB:.1f} "
        f"MiB; before the load {base['rss'] / MIB:.1f} MiB.",
        "",
        "| t (s) | RSS (MiB) | ids | window (MiB) | RSS growth / id (B) | window / id (B) "
        "| threads | fds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["samples"]:
        sample = Sample(**row)
        rss_id, win_id = bytes_per_id(base["rss"], sample)
        lines.append(
            f"| {sample.t:.0f} | {sample.rss / MIB:.1f} | {sample.entries:,} | "
            f"{sample.window_bytes / MIB:.1f} | {rss_id:.0f} | {win_id:.0f} | "
            f"{sample.threads} | {sample.fds} |"
        )
    lines.append("")
    if not s["full_window"]:
        lines.append("**Partial: the run ended before the TTL had passed; no full-window figure.**")
    else:
        lines.append(
            f"At the last full-window sample (t = {s['at']['t']:.0f} s, "
            f"{s['at']['entries']:,} ids): "
            f"{s['rss_per_id']:.0f} B/id of RSS growth since before the load (everything the "
            f"process grew by, not only the window), {s['window_per_id']:.0f} B/id by "
            "`dedup_window_bytes`."
        )
    if data.get("steady"):
        lines += [
            "",
            "One window at steady state (`python -m bench.dedupmem --steady N`: N ids a TTL, "
            "three TTLs, a fresh process each):",
            "",
            "| ids per partition | RSS / id (B) | `dedup_window_bytes` / id (B) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {w['entries']:,.0f} | {w['rss_per_entry']:.0f} | {w['estimate_per_entry']:.0f} |"
            for w in data["steady"]
        ]
    if s.get("pods"):
        lines += [
            "",
            "One pod owning every partition, one process (the window nearest each case's ids "
            "per partition, the larger of its two figures, plus 256 MiB):",
            "",
            "| case | B/id | pod needs (MiB) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {case} | {pod['per_id']:.0f} | {pod['bytes'] / MIB:,.0f} |"
            for case, pod in s["pods"].items()
        ]
    if data.get("notes"):
        # Written by hand into the JSON after the run: kept when `--from` renders it again.
        lines += ["", "## Reading", "", data["notes"]]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks (events) a second")
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_TTL + 300, help="the load's length"
    )
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--kafka-port", type=int, default=broker.default_port())
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", help="file name (default <date>-soak-<rate>)")
    parser.add_argument(
        "--from", dest="from_json", help="no run: add the steady windows to this JSON, re-render"
    )
    args = parser.parse_args()
    if args.from_json:
        data = orjson.loads(Path(args.from_json).read_bytes())
        name = Path(args.from_json).stem
    else:
        measure.ensure_kcat()
        bench = Bench(
            argparse.Namespace(
                quick=False,
                steps=None,
                step_seconds=0,
                kafka_port=args.kafka_port,
                ingest_partitions=int(os.environ.get("BRIDGE_TOPICS__INGEST_PARTITIONS", "12")),
            )
        )
        name = args.name or f"{datetime.date.today().isoformat()}-soak-{args.rate:g}"
        with broker.session(args.kafka_port):
            start = uptime()
            data = soak(args, bench)
        data |= {"commit": commit(), "machine": machine(), "uptime_start": start}
        data["uptime_end"] = uptime()
    partitions, ttl = data["ingest_partitions"], data["ttl"]
    sizes = {round(data["rate"] * ttl / partitions), *STEADY_SIZES}
    data["steady"] = steady_windows(sorted(sizes))
    data["summary"] = summary(data)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    (out / f"{name}.md").write_text(markdown(name, data))
    print(f"report: {out / name}.md", flush=True)


if __name__ == "__main__":
    main()
