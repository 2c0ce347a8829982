"""`make bench`: start a dedicated broker, run every scenario and baseline, write the report.

  .venv/bin/python -m bench.run [--quick] [--kafka-port 19092] [--profile] [--only NAME,...]

Each target (the bridge, its no-op-publisher variant, the naive handler, the naive handler with
the bridge's exactly-once contract and none of its logic (`naive-eos`), kcat) runs as its own
process, fed by open-loop load generators in their own processes, read back from Kafka by kcat
(read_committed). The bridge is the two-stage one: webhooks are answered once their records are
in its ingest topic, and the dedup stage writes the output topic in transactions; every bridge
target gets its own ingest topic and dedup group. `replicas` runs two bridge processes sharing
them, round-robin; `workers` runs one pod of as many worker processes as cores on one port
(SO_REUSEPORT); `split` runs one webhook process beside its dedup stage's own process
(BRIDGE_DEDUP__OWN_PROCESS); `restore` and `stage` run bench.restore and bench.dedupstage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import platform
import random
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import broker, measure, profile, report

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = "bench-secret"
HTTP_PORT = 18080
HTTP_PORT_2 = 18081  # the second bridge process of `replicas`
WS_PORT = 18765


@dataclass
class Plan:
    """Durations and sizes: full for the committed report, quick for a smoke run.

    A step-up climbs the coarse `steps` until one fails, then bisects between the last pass
    and that failure `bisect` times (or until they are within `resolution` of each other).
    """

    steps: list[float]
    step_seconds: float
    batch_steps: list[float]
    fixed_seconds: float
    ws_events: int
    kcat_events: int
    restore_sizes: list[int]
    stage_records: int
    warm_seconds: float = 10.0  # each system, at its first step's rate, before that step
    broker_warm_seconds: float = 30.0  # the broker, once, through a throw-away bridge
    bisect: int = 3
    resolution: float = 0.05  # stop bisecting once (fail - pass) / fail is below this

    @classmethod
    def make(cls, quick: bool, steps: str | None = None, step_seconds: float = 0) -> Plan:
        plan = cls._make(quick)
        if steps:
            plan.steps = [float(x) for x in steps.split(",")]
        if step_seconds:
            plan.step_seconds = step_seconds
        return plan

    @classmethod
    def _make(cls, quick: bool) -> Plan:
        # The feed's reader holds at most BRIDGE_WEBSOCKET__MAX_INFLIGHT (20,000) events waiting
        # for Kafka and drops (and counts) what comes beyond: "flat out" sends fewer at once.
        if quick:
            # Steps too short for a steady state: the report says so.
            return cls(
                [1000, 2000, 4000, 8000], 5.0, [5000, 15000], 5.0, 18_000, 30_000, [100_000],
                50_000, warm_seconds=3.0, broker_warm_seconds=5.0, bisect=1,
            )  # fmt: skip
        return cls(
            [1000, 2000, 4000, 6000, 8000, 10000, 12000],
            20.0,
            [4000, 8000, 12000, 16000, 24000],
            20.0,
            18_000,
            150_000,
            [100_000, 1_000_000],
            200_000,
        )


@dataclass
class Measured:
    """One measured run of one target: the report's row."""

    scenario: str
    target: str
    offered: float  # events/s; 0 = as fast as the target takes them
    events: int
    throughput: float = math.nan
    e2e_ms: list[float] = field(default_factory=lambda: [math.nan] * 3)  # p50, p95, p99
    client_ms: list[float] = field(default_factory=lambda: [math.nan] * 3)
    hist_ms: list[float] = field(default_factory=lambda: [math.nan] * 3)
    cpu_per_10k: float = math.nan
    broker_cpu_per_10k: float = math.nan
    loadgen_cpu_s: float = math.nan
    transactions: float = math.nan  # dedup transactions committed during the row (bridge only)
    # The bridge's event loop lag (a timer every 0.25 s): its largest, as a bucket bound.
    loop_lag_max_ms: float = math.nan
    peak_rss: int = 0
    lost: int = 0
    doubled: int = 0
    errors: int = 0
    load: str = ""
    note: str = ""

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and self.errors == 0


class Proc:
    """A child process we started and stop by its own pid; `port` is its HTTP port."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path,
        port: int = HTTP_PORT,
    ) -> None:
        self.log = log
        self.port = port
        self._log = log.open("wb")
        self.p = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()


class Loadgen:
    """A load generator process, driven with the ready / go / done handshake."""

    def __init__(self, args: list[str], out: Path) -> None:
        self.out = out
        self.p = subprocess.Popen(
            [PY, "-m", "bench.loadgen", *args, "--out", str(out)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, word: str) -> None:
        assert self.p.stdout is not None
        line = self.p.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"load generator said {line!r}, expected {word!r}")

    def go(self, t0: float) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(f"go {t0}\n")
        self.p.stdin.flush()

    def result(self) -> tuple[dict[str, Any], array[float], array[float]]:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(timeout=30)
        sched, lat = array("d"), array("d")
        sched.frombytes(self.out.with_suffix(".sched").read_bytes())
        lat.frombytes(self.out.with_suffix(".lat").read_bytes())
        return orjson.loads(self.out.read_bytes()), sched, lat


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan.make(args.quick, args.steps, args.step_seconds)
        self.brokers = f"127.0.0.1:{args.kafka_port}"
        self.work = ROOT / ".cache" / "bench" / f"{int(time.time())}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows: list[Measured] = []
        self.steps: dict[str, list[Measured]] = {}
        self.extra: dict[str, Any] = {}
        self.salt = random.getrandbits(31)
        self.next_index = 0
        self.broker_pid = 0
        # The two settings that set the broker's transaction load: about ingest partitions x
        # 1000 / commit interval transactions/s, whatever the rate (2026-12-02-probe's notes).
        self.extra["bridge_settings"] = {
            "ingest_partitions": args.ingest_partitions,
            "commit_interval_ms": int(os.environ.get("BRIDGE_DEDUP__COMMIT_INTERVAL_MS", "100")),
        }

    # --- infrastructure -------------------------------------------------------------------

    def broker_cpu(self) -> float:
        try:
            return measure.cpu_seconds(self.broker_pid)
        except (OSError, ValueError):
            return math.nan

    def topics(self, prefix: str) -> dict[str, str]:
        """Output topics, created here; names for the ingest and lease topics the bridge creates."""
        names = {k: f"bench.{self.salt:x}.{prefix}.{k}" for k in ("events", "alerts", "dlq")}
        internal = {
            "ingest": f"bench.{self.salt:x}.{prefix}.ingest",
            "lease": f"bench.{self.salt:x}.{prefix}.feed-lease",
            "group": f"bench-{self.salt:x}-{prefix}",
        }

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.brokers)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(n, 3, 1) for n in names.values()])
                # kcat exits at once on a topic it cannot see yet: a fresh broker (the first
                # scenario of a run) can take a moment before every partition has a leader.
                for _ in range(100):
                    described = await admin.describe_topics(list(names.values()))
                    if all(
                        not t["error_code"]
                        and len(t["partitions"]) == 3
                        and all(p["leader"] >= 0 for p in t["partitions"])
                        for t in described
                    ):
                        break
                    await asyncio.sleep(0.1)
            finally:
                await admin.close()

        asyncio.run(create())
        return names | internal

    def target(
        self,
        kind: str,
        topics: dict[str, str],
        *,
        ws: bool = False,
        port: int = HTTP_PORT,
        workers: int = 1,
        own_dedup: bool = False,
    ) -> Proc:
        """Start the bridge (`bridge`, `noop`) or a naive handler; return once it is ready."""
        env = {
            **os.environ,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.brokers,
            "BRIDGE_HTTP__HOST": "127.0.0.1",
            "BRIDGE_HTTP__PORT": str(port),
            "BRIDGE_WEBHOOK__SECRETS": SECRET,
            "BRIDGE_TOPICS__EVENTS": topics["events"],
            "BRIDGE_TOPICS__ALERTS": topics["alerts"],
            "BRIDGE_TOPICS__DLQ": topics["dlq"],
            # Per target: a fresh ingest topic (--ingest-partitions, LogAppendTime, created by
            # the bridge) and dedup group, shared only by the processes of one target.
            "BRIDGE_TOPICS__INGEST": topics["ingest"],
            "BRIDGE_TOPICS__INGEST_PARTITIONS": str(self.args.ingest_partitions),
            "BRIDGE_TOPICS__FEED_LEASE": topics["lease"],
            "BRIDGE_DEDUP__GROUP": topics["group"],
            "BRIDGE_LOG__LEVEL": "INFO",
            "BRIDGE_LOG__FORMAT": "json",
            # More than one: a pod of worker processes sharing the port (SO_REUSEPORT).
            "BRIDGE_HTTP__WORKERS": str(workers),
            # The dedup stage in a process of its own beside the webhook workers.
            "BRIDGE_DEDUP__OWN_PROCESS": "true" if own_dedup else "false",
        }
        if ws:
            env |= {
                "BRIDGE_WEBSOCKET__ENABLED": "true",
                "BRIDGE_WEBSOCKET__URL": f"ws://127.0.0.1:{WS_PORT}/v1/ws",
                "BRIDGE_WEBSOCKET__AUTH": "bearer",
                "BRIDGE_PINECALL__API_KEY": "bench-key",
                "BRIDGE_PINECALL__API_URL": "http://127.0.0.1:9",
            }
        args = target_command(kind, self.brokers, topics, port, self.args.ingest_partitions)
        log = self.work / f"{kind}-{len(self.rows)}-{port}-{time.monotonic_ns()}.log"
        proc = Proc(args, env=env, log=log, port=port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.p.poll() is not None:
                raise RuntimeError(f"{kind} exited; see {proc.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    return proc
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        proc.stop()
        raise RuntimeError(f"{kind} not ready after 60 s; see {proc.log}")

    # --- one measured run -----------------------------------------------------------------

    def _indices(self, count: int) -> int:
        first = self.next_index
        self.next_index += count
        return first

    def webhook_args(
        self, rate: float, count: int, first: int, batch: int = 1, ports: str = str(HTTP_PORT)
    ) -> list[str]:
        return [
            "webhook", "--port", ports, "--secret", SECRET, "--rate", str(rate),
            "--count", str(count), "--first", str(first), "--salt", str(self.salt),
            "--batch", str(batch),
        ]  # fmt: skip

    def measured(
        self,
        row: Measured,
        target: Proc | list[Proc] | None,
        loadgens: list[Loadgen],
        consumer: measure.Consumer | None,
        first: int,
        *,
        cpu_pid: int | None = None,
        already_read: int = 0,
    ) -> Measured:
        """Start the load generators together, wait for the read-back, fill in the row.

        Several target processes (replicas) count together: CPU and peak RSS are summed, their
        receipt → ack histograms merged.
        """
        for gen in loadgens:
            gen.expect("ready")
        procs = target if isinstance(target, list) else ([target] if target else [])
        pids = [cpu_pid] if cpu_pid is not None else [p.pid for p in procs]
        hist_ports = [p.port for p in procs] if row.target == "bridge" else []
        hist0 = measure.histograms(hist_ports) if hist_ports else []
        lag0 = measure.histograms(hist_ports, measure.LOOP_LAG) if hist_ports else []
        txn0 = sum(measure.transactions(port) for port in hist_ports)
        cpu0 = sum(measure.tree_cpu_seconds(pid) for pid in pids) if pids and pids[0] else math.nan
        broker0 = self.broker_cpu()
        load0 = measure.loadavg()
        noop_ports = [p.port for p in procs] if consumer is None else []
        ingested0 = sum(measure.ingested(port) for port in noop_ports)
        noop_done = 0.0
        t0 = time.time() + 0.3
        for gen in loadgens:
            gen.go(t0)
        for gen in loadgens:
            gen.expect("done")
        expected = row.events
        if consumer is not None:
            consumer.wait_for(already_read + expected, timeout=120)
        elif noop_ports:
            noop_done = self.wait_ingested(noop_ports, ingested0 + expected)
        cpu1 = sum(measure.tree_cpu_seconds(pid) for pid in pids) if pids and pids[0] else math.nan
        broker1 = self.broker_cpu()
        hist1 = measure.histograms(hist_ports) if hist_ports else []
        lag1 = measure.histograms(hist_ports, measure.LOOP_LAG) if hist_ports else []
        if hist_ports:
            row.loop_lag_max_ms = measure.highest_bucket(lag0, lag1) * 1000
            row.transactions = sum(measure.transactions(port) for port in hist_ports) - txn0
        results = [gen.result() for gen in loadgens]
        row.load = f"{load0} → {measure.loadavg()}"
        row.loadgen_cpu_s = sum(r[0]["cpu_s"] + r[0].get("kcat_cpu_s", 0.0) for r in results)
        if row.target == "kcat":
            cpu1, cpu0 = results[0][0]["kcat_cpu_s"], 0.0
        sched = results[0][1]
        # Answered requests only (unanswered ones are NaN): they are counted as errors instead.
        latencies = sorted(
            x for r in results if r[0]["mode"] == "webhook" for x in r[2] if not math.isnan(x)
        )
        row.client_ms = [measure.percentile(latencies, q) * 1000 for q in (50, 95, 99)]
        row.errors = sum(
            n
            for r in results
            for status, n in r[0]["statuses"].items()
            if status not in ("200", "sent") and not status.startswith("kcat_exit_0")
        )
        if hist_ports:
            row.hist_ms = [
                x * 1000 for x in measure.histogram_quantiles(hist0, hist1, (50, 95, 99))
            ]
        if consumer is not None:
            read = consumer.read
            got = [i for i in range(first, first + expected) if i in read.copies]
            row.lost = expected - len(got)
            row.doubled = sum(read.copies[i] - 1 for i in got)
            e2e = sorted(read.first_read[i] - sched[i - first] for i in got)
            row.e2e_ms = [measure.percentile(e2e, q) * 1000 for q in (50, 95, 99)]
            last = max((read.first_read[i] for i in got), default=t0)
            t_first = min(sched) if len(sched) else t0
            row.throughput = len(got) / max(last - t_first, 1e-9)
        else:
            # No-op publisher: nothing reaches Kafka; its own counter says what was "ingested".
            published = sum(measure.ingested(port) for port in noop_ports) - ingested0
            row.lost = max(expected - int(published), 0)
            end = max([noop_done, *(r[0]["end"] for r in results if r[0]["mode"] == "webhook")])
            row.throughput = published / max(end - t0, 1e-9)
        events = max(expected - row.lost, 1)
        row.cpu_per_10k = (cpu1 - cpu0) / events * 10_000
        row.broker_cpu_per_10k = (broker1 - broker0) / events * 10_000
        if procs:
            row.peak_rss = sum(measure.peak_rss(p.pid) for p in procs)
        print(
            f"  {row.scenario:<18} {row.target:<9} offered {row.offered:>7.0f}/s"
            f"  got {row.throughput:>8.0f}/s  e2e p99 {row.e2e_ms[2]:7.1f} ms"
            f"  client p99 {row.client_ms[2]:7.1f} ms  bridge p99 {row.hist_ms[2]:6.1f} ms"
            f"  cpu/10k {row.cpu_per_10k:5.2f}s  lost {row.lost} doubled {row.doubled}"
            f" errors {row.errors}",
            flush=True,
        )
        return row

    @staticmethod
    def wait_ingested(
        ports: list[int], expected: float, timeout: float = 120, idle: float = 5.0
    ) -> float:
        """Poll the targets' ingested counters until they reach `expected`; when they did."""
        deadline = time.monotonic() + timeout
        last, changed = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            now = sum(measure.ingested(port) for port in ports)
            if now >= expected:
                return time.time()
            if now != last:
                last, changed = now, time.monotonic()
            elif time.monotonic() - changed > idle:
                break
            time.sleep(0.02)
        return time.time()

    @contextlib.contextmanager
    def serving(
        self,
        kind: str,
        prefix: str,
        *,
        consume: bool = True,
        replicas: int = 1,
        workers: int = 1,
        own_dedup: bool = False,
    ) -> Iterator[tuple[list[Proc], measure.Consumer | None]]:
        topics = self.topics(prefix)
        consumer = measure.Consumer(self.brokers, topics["events"]) if consume else None
        procs: list[Proc] = []
        try:
            if kind != "kcat":
                for port in (HTTP_PORT, HTTP_PORT_2)[:replicas]:
                    procs.append(
                        self.target(kind, topics, port=port, workers=workers, own_dedup=own_dedup)
                    )
            yield procs, consumer
        finally:
            for proc in procs:
                proc.stop()
            if consumer is not None:
                consumer.stop()

    def settled(self, procs: list[Proc], timeout: float = 60) -> None:
        """Until the dedup group is stable: every ingest partition owned, the same for 2 s.

        A second replica joining moves half the partitions (revoke, fence, restore); measuring
        during that would charge the rebalance to the steady rate.
        """
        want = self.args.ingest_partitions
        deadline = time.monotonic() + timeout
        stable_since, last = time.monotonic(), None
        while time.monotonic() < deadline:
            counts = [measure.owned(p.port) for p in procs]
            if counts != last:
                stable_since, last = time.monotonic(), counts
            elif sum(counts) == want and all(counts) and time.monotonic() - stable_since > 2:
                print(f"  dedup group settled: partitions owned {counts}", flush=True)
                return
            time.sleep(0.2)
        print(f"  dedup group NOT settled after {timeout:.0f} s: owned {last}", flush=True)

    # --- scenarios ------------------------------------------------------------------------

    def warm_up(
        self,
        procs: list[Proc],
        consumer: measure.Consumer | None,
        kind: str = "bridge",
        *,
        rate: float = 1000,
        seconds: float | None = None,
    ) -> int:
        """Traffic at `rate` for the plan's warm-up, unmeasured: connections, caches, JIT.

        Returns the events sent, all read back when there is a consumer.
        """
        if kind == "bridge" and procs:
            self.settled(procs)
        count = max(int(rate * (self.plan.warm_seconds if seconds is None else seconds)), 1)
        first = self._indices(count)
        ports = ",".join(str(p.port) for p in procs) or str(HTTP_PORT)
        gen = Loadgen(
            self.webhook_args(rate, count, first, ports=ports), self.work / f"warm-{first}.json"
        )
        gen.expect("ready")
        gen.go(time.time() + 0.1)
        gen.expect("done")
        gen.result()
        if consumer is not None:
            consumer.wait_for(count, timeout=120)
        return count

    def warm_broker(self) -> None:
        """The broker's JIT and page cache, once per run: idempotent and transactional writes,
        read_committed reads, through a throw-away bridge on its own topics."""
        seconds = self.plan.broker_warm_seconds
        print(f"warm-up: the broker, {seconds:.0f} s through a throw-away bridge", flush=True)
        with self.serving("bridge", "warm-broker") as (procs, consumer):
            self.warm_up(procs, consumer, rate=self.plan.steps[0], seconds=seconds)

    def step_up(
        self,
        kind: str,
        name: str,
        rates: list[float],
        batch: int = 1,
        replicas: int = 1,
        workers: int = 1,
        own_dedup: bool = False,
    ) -> list[Measured]:
        """Scenario 5: rising offered load on one running target, then a bisection.

        The coarse steps climb until one fails; the steps after it bisect between the last
        pass (0 when none) and the lowest failure, each step as long as the coarse ones.
        """
        rows: list[Measured] = []
        consume = kind != "noop"
        serving = self.serving(
            kind,
            f"{name}-{kind}",
            consume=consume,
            replicas=replicas,
            workers=workers,
            own_dedup=own_dedup,
        )
        with serving as (procs, consumer):
            read = self.warm_up(procs, consumer, kind, rate=rates[0])
            ports = ",".join(str(p.port) for p in procs) or str(HTTP_PORT)

            def step(rate: float, note: str) -> bool:
                nonlocal read
                count = max(int(rate * self.plan.step_seconds) // batch * batch, batch)
                first = self._indices(count)
                gen = Loadgen(
                    self.webhook_args(rate, count, first, batch, ports=ports),
                    self.work / f"{name}-{kind}-{rate:.0f}.json",
                )
                row = Measured(name, kind, rate, count, note=note)
                if replicas > 1:
                    row.note = f"{note}; {replicas} processes, round-robin"
                if workers > 1:
                    row.note = f"{note}; one pod of {workers} worker processes, one port"
                if own_dedup:
                    row.note = f"{note}; the dedup stage in a process of its own"
                self.measured(row, procs, [gen], consumer, first, already_read=read)
                read += count
                rows.append(row)
                passed = self.sustained(row)
                if not passed:
                    time.sleep(2.0)  # let a backlog's stragglers clear before the next step
                return passed

            passed, failed = 0.0, math.inf
            for rate in rates:
                if step(rate, "coarse"):
                    passed = rate
                else:
                    failed = rate
                    break
            for _ in range(self.plan.bisect if failed < math.inf else 0):
                mid = bisection(passed, failed, self.plan.resolution)
                if mid is None:
                    break
                if step(mid, "bisection"):
                    passed = mid
                else:
                    failed = mid
        self.steps[f"{name}:{kind}"] = rows
        return rows

    @staticmethod
    def sustained(row: Measured) -> bool:
        """The one pass criterion, for every system: see `report.sustained`."""
        return report.sustained(asdict(row))

    @staticmethod
    def best(rows: list[Measured]) -> Measured | None:
        ok = [r for r in rows if Bench.sustained(r)]
        return max(ok, key=lambda r: r.offered) if ok else None

    def fixed_webhook(self, kind: str, name: str, rate: float, batch: int = 1) -> Measured:
        count = int(rate * self.plan.fixed_seconds) // batch * batch
        with self.serving(kind, f"{name}-{kind}", consume=kind != "noop") as (procs, consumer):
            read = self.warm_up(procs, consumer, kind)
            first = self._indices(count)
            gen = Loadgen(
                self.webhook_args(rate, count, first, batch), self.work / f"{name}-{kind}.json"
            )
            row = Measured(name, kind, rate, count)
            self.measured(row, procs, [gen], consumer, first, already_read=read)
        self.rows.append(row)
        return row

    def ws_run(
        self,
        kind: str,
        name: str,
        rate: float,
        count: int,
        both: bool = False,
        own_dedup: bool = False,
    ) -> Measured:
        """Scenarios 3 and 4: the feed flat out, or both channels carrying every event."""
        topics = self.topics(f"{name}-{kind}")
        first = self._indices(count)
        ws_gen = Loadgen(
            [
                "ws",
                "--listen-port",
                str(WS_PORT),
                "--rate",
                str(rate),
                "--count",
                str(count),
                "--first",
                str(first),
                "--salt",
                str(self.salt),
            ],
            self.work / f"{name}-{kind}-ws.json",
        )
        consumer = measure.Consumer(self.brokers, topics["events"]) if kind != "noop" else None
        proc = self.target(kind, topics, ws=True, own_dedup=own_dedup)
        try:
            if kind == "bridge":
                # As the step-ups do: the feed waits for go, but the dedup group would still be
                # joining (and starting a producer per partition, ~6 s) and be timed as the feed.
                self.settled([proc])
            gens = [ws_gen]
            if both:
                gens.append(
                    Loadgen(
                        self.webhook_args(rate, count, first), self.work / f"{name}-{kind}.json"
                    )
                )
            row = Measured(name, kind, rate, count)
            if own_dedup:
                row.note = "the dedup stage in a process of its own; the feed in the other"
            self.measured(row, proc, gens, consumer, first)
        finally:
            proc.stop()
            if consumer is not None:
                consumer.stop()
        self.rows.append(row)
        return row

    def kcat_run(self, name: str, rate: float, count: int) -> Measured:
        topics = self.topics(f"{name}-kcat")
        consumer = measure.Consumer(self.brokers, topics["events"])
        first = self._indices(count)
        gen = Loadgen(
            [
                "kcat",
                "--brokers",
                self.brokers,
                "--topic",
                topics["events"],
                "--rate",
                str(rate),
                "--count",
                str(count),
                "--first",
                str(first),
                "--salt",
                str(self.salt),
            ],
            self.work / f"{name}-kcat.json",
        )
        row = Measured(name, "kcat", rate, count)
        try:
            self.measured(row, None, [gen], consumer, first, cpu_pid=0)
        finally:
            consumer.stop()
        self.rows.append(row)
        return row

    def dedup_memory(self) -> None:
        from bench.restore import memory

        mem = memory()
        self.extra["dedup"] = {
            "window": "SeenWindow",
            "points": mem["rss"],
            "traced": mem["traced"],
        }
        last = mem["rss"][-1]
        print(f"  SeenWindow: {last['bytes_per_entry']:.0f} bytes per id at 1M ids", flush=True)

    def standalone(self, module: str, key: str, args: list[str]) -> None:
        """bench.restore or bench.dedupstage in its own process, on this run's broker."""
        out = self.work / f"{key}.json"
        cmd = [PY, "-m", module, "--kafka-port", str(self.args.kafka_port), "--out", str(out)]
        if self.args.profile:
            cmd.append("--profile")
        subprocess.run([*cmd, *args], cwd=ROOT, check=True)
        self.extra[key] = orjson.loads(out.read_bytes())

    def profile_bridge(self, rate: float) -> None:
        """py-spy on the bridge under scenario 1's load: where its CPU goes."""
        seconds = self.plan.fixed_seconds
        count = int(rate * seconds)
        with self.serving("bridge", "profile") as (procs, consumer):
            read = self.warm_up(procs, consumer, rate=rate)
            first = self._indices(count)
            gen = Loadgen(self.webhook_args(rate, count, first), self.work / "profile.json")
            spy = profile.start(procs[0].pid, seconds, self.work / "profile.raw")
            row = Measured("profile", "bridge", rate, count)
            self.measured(row, procs, [gen], consumer, first, already_read=read)
            self.extra["profile"] = profile.finish(spy, self.work / "profile.raw")

    # --- the whole run --------------------------------------------------------------------

    def run(self) -> Path:
        only = set(self.args.only.split(",")) if self.args.only else None

        def want(name: str) -> bool:
            return only is None or name in only

        self.extra["machine"] = machine()
        self.extra["uptime_start"] = uptime()
        self.extra["tree"] = tree_state()
        started = time.time()
        self.extra["plan"] = asdict(self.plan)
        try:
            self.scenarios(only, want)
        except Exception as exc:
            # A scenario that broke must not cost the ones measured before it: they are written,
            # the report says where the run stopped, and the exit status says it failed.
            traceback.print_exc()
            self.extra["aborted"] = f"{type(exc).__name__}: {exc}"
        self.extra["uptime_end"] = uptime()
        self.extra["wall_s"] = time.time() - started
        self.extra["quick"] = self.args.quick
        return self.write()

    def scenarios(self, only: set[str] | None, want: Callable[[str], bool]) -> None:
        """Every scenario `want` picks, in the report's order."""
        plan = self.plan
        if only is None or only & {
            "stepup", "webhook", "batch", "ws", "ws-split", "both", "replicas", "workers", "split"
        }:  # fmt: skip
            self.warm_broker()
        if want("stepup") or want("webhook"):
            print("scenario 5: step-up, one event per request", flush=True)
            bridge_best = self.best(self.step_up("bridge", "stepup", plan.steps))
            rate = 0.7 * bridge_best.offered if bridge_best else 0.7 * plan.steps[0]
            self.extra["max_rate"] = bridge_best.offered if bridge_best else 0.0
            if not self.args.no_baselines:
                self.step_up("naive", "stepup", plan.steps)
                self.step_up("naive-eos", "stepup", plan.steps)
                self.step_up("noop", "stepup", plan.steps)
            print(f"scenario 1: one event per request at {rate:.0f}/s (70% of max)", flush=True)
            self.fixed_webhook("bridge", "webhook-single", rate)
            if not self.args.no_baselines:
                self.fixed_webhook("naive", "webhook-single", rate)
                self.fixed_webhook("naive-eos", "webhook-single", rate)
                self.fixed_webhook("noop", "webhook-single", rate)
                self.kcat_run("webhook-single", rate, int(rate * plan.fixed_seconds))
        if want("batch"):
            print("scenario 2: batches of 10, step-up", flush=True)
            self.step_up("bridge", "batch10", plan.batch_steps, batch=10)
        if want("ws"):
            print("scenario 3: the feed flat out", flush=True)
            self.ws_run("bridge", "ws-flat-out", 0, plan.ws_events)
            if not self.args.no_baselines:
                self.ws_run("noop", "ws-flat-out", 0, plan.ws_events)
        if want("ws-split"):
            print(
                "scenario 3, the dedup stage in a process of its own: the feed flat out", flush=True
            )
            self.ws_run("bridge", "ws-flat-out-split", 0, plan.ws_events, own_dedup=True)
            if only is not None and "ws" not in only and not self.args.no_baselines:
                self.ws_run("noop", "ws-flat-out", 0, plan.ws_events)  # its baseline, once
        if want("kcat") and not self.args.no_baselines:
            print("baseline (a): kcat flat out", flush=True)
            self.kcat_run("flat-out", 0, plan.kcat_events)
        if want("both"):
            rate = 0.5 * self.extra.get("max_rate", 0.0) or 1000.0
            print(f"scenario 4: both channels, every event twice, {rate:.0f} events/s", flush=True)
            self.ws_run("bridge", "both-channels", rate, int(rate * plan.fixed_seconds), both=True)
        if want("replicas"):
            print("two-stage: step-up with two bridge processes, round-robin", flush=True)
            self.step_up("bridge", "stepup-2proc", plan.steps, replicas=2)
        if want("workers"):
            workers = len(os.sched_getaffinity(0))
            self.extra["pod_workers"] = workers
            print(f"two-stage: step-up with one pod of {workers} workers, one port", flush=True)
            self.step_up("bridge", "stepup-pod", plan.steps, workers=workers)
        if want("split"):
            print("two-stage: step-up with the dedup stage in a process of its own", flush=True)
            self.step_up("bridge", "stepup-split", plan.steps, own_dedup=True)
        if want("restore"):
            print("two-stage: restore of the seen-window", flush=True)
            sizes = self.args.restore_sizes or ",".join(str(n) for n in plan.restore_sizes)
            self.standalone("bench.restore", "restore", ["--sizes", sizes, "--no-memory"])
        if want("stage"):
            print("two-stage: the dedup stage's own throughput", flush=True)
            records = self.args.stage_records or plan.stage_records
            self.standalone("bench.dedupstage", "stage", ["--records", str(records)])
        if want("memory"):
            print("scenario 6: dedup window memory", flush=True)
            self.dedup_memory()
        if self.args.profile:
            rate = self.args.profile_rate or 0.7 * (self.extra.get("max_rate") or plan.steps[0])
            print(f"profile: py-spy on the bridge at {rate:.0f}/s", flush=True)
            self.profile_bridge(rate)

    def write(self) -> Path:
        out_dir = Path(self.args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = self.args.name or report_name(
            datetime.date.today().isoformat(),
            commit(),
            quick=self.args.quick,
            only=self.args.only,
            taken={p.stem for p in out_dir.glob("*.json")},
        )
        data = {
            "rows": [asdict(r) for r in self.rows],
            "steps": {k: [asdict(r) for r in v] for k, v in self.steps.items()},
            **self.extra,
        }
        raw = out_dir / f"{name}.json"
        raw.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        md = report.write(data, out_dir, name)
        print(f"report: {md}", flush=True)
        return md


def target_command(
    kind: str, brokers: str, topics: dict[str, str], port: int, ingest_partitions: int
) -> list[str]:
    """The command line of a target: the bridge, its no-op variant or a naive handler. Pure.

    `naive-eos` gets the bridge's contract without its logic: an ingest topic like the bridge's
    (same partitions) and a group of its own, writing the output topic the consumer reads.
    """
    if kind == "bridge":
        return [str(Path(PY).parent / "pinecall-bridge"), "run"]
    if kind == "noop":
        return [PY, "-m", "bench.baselines.noop"]
    if kind == "naive-eos":
        return [
            PY, "-m", "bench.baselines.naive_eos", "--port", str(port), "--brokers", brokers,
            "--ingest", topics["ingest"], "--output", topics["events"], "--group", topics["group"],
            "--partitions", str(ingest_partitions),
        ]  # fmt: skip
    if kind == "naive":
        return [
            PY, "-m", "bench.baselines.naive", "--port", str(port),
            "--brokers", brokers, "--topic", topics["events"],
        ]  # fmt: skip
    raise ValueError(f"no such target: {kind}")


def report_name(
    stamp: str, revision: str, *, quick: bool, only: str | None, taken: set[str]
) -> str:
    """<date>-<commit>[-quick][-<scenarios>], numbered past the names already taken. Pure.

    A later run of the day (a single scenario, say) must not overwrite the full run's report.
    """
    base = f"{stamp}-{revision}{'-quick' if quick else ''}"
    if only:
        base += "-" + "+".join(part.strip() for part in only.split(",") if part.strip())
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def bisection(passed: float, failed: float, resolution: float) -> float | None:
    """The next rate between a pass and a failure, rounded to 50/s; None once close enough."""
    if failed - passed <= resolution * failed:
        return None
    mid = round((passed + failed) / 2 / 50) * 50
    return mid if passed < mid < failed else None


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    kcat = subprocess.run(["kcat", "-V"], capture_output=True, text=True).stdout
    librdkafka = next((ln.strip() for ln in kcat.splitlines() if "librdkafka" in ln), "")
    import aiohttp
    import aiokafka

    pom = (ROOT / "tools/kafka/pom.xml").read_text()
    kafka = pom.split("<kafka.version>", 1)[1].split("<", 1)[0] if "<kafka.version>" in pom else ""
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "aiokafka": aiokafka.__version__,
        "kafka": kafka,
        "broker_jvm": " ".join(broker.jvm().values()),
        "kcat": librdkafka,
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head or "nocommit"


def tree_state() -> list[str]:
    """`git status --short` of bridge/: what the measured code was, beyond the commit."""
    out = subprocess.run(
        ["git", "status", "--short", "--", "bridge"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s steps")
    parser.add_argument("--kafka-port", type=int, default=19092)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--only",
        help=(
            "stepup,batch,ws,ws-split,kcat,both,replicas,workers,split,restore,stage,memory"
            " (none: profile)"
        ),
    )
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also py-spy the bridge")
    parser.add_argument(
        "--profile-rate", type=float, default=0, help="events/s under py-spy (default 70%% of max)"
    )
    parser.add_argument(
        "--name", help="the report's file name (default <date>-<commit>[-quick][-<only>], numbered)"
    )
    parser.add_argument("--restore-sizes", help="ids per restore, e.g. 100000,1000000")
    parser.add_argument("--stage-records", type=int, help="distinct ids for the stage run")
    parser.add_argument("--steps", help="step-up rates, events/s, e.g. 500,1000,2000")
    parser.add_argument("--step-seconds", type=float, default=0, help="seconds per step")
    parser.add_argument(
        "--ingest-partitions",
        type=int,
        default=int(os.environ.get("BRIDGE_TOPICS__INGEST_PARTITIONS", "12")),
        help="the bridge's ingest partitions (default 12, the bridge's own)",
    )
    args = parser.parse_args()
    measure.ensure_kcat()
    bench = Bench(args)
    # Stopped afterwards when this run started it (it is ours alone: it would hold memory on a
    # shared box); one that was already up is left running.
    with broker.session(args.kafka_port) as (_bootstrap, reused):
        bench.extra["broker_reused"] = reused
        bench.broker_pid = broker.pid(args.kafka_port)
        bench.run()
    if "aborted" in bench.extra:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
