"""`make bench`: start a dedicated broker, run every scenario and baseline, write the report.

  .venv/bin/python -m bench.run [--quick] [--kafka-port 19092] [--profile] [--only NAME,...]

Each target (the bridge, its no-op-publisher variant, the naive handler, kcat) runs as its own
process, fed by open-loop load generators in their own processes, read back from Kafka by kcat.
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
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import measure, profile, report

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = "bench-secret"
P99_GOAL = 0.025
HTTP_PORT = 18080
WS_PORT = 18765


@dataclass
class Plan:
    """Durations and sizes: full for the committed report, quick for a smoke run."""

    steps: list[float]
    step_seconds: float
    batch_steps: list[float]
    fixed_seconds: float
    ws_events: int
    kcat_events: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls([1000, 3000, 5000], 2.0, [5000, 15000], 3.0, 30_000, 30_000)
        return cls(
            [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000],
            4.0,
            [4000, 8000, 12000, 16000, 24000],
            8.0,
            150_000,
            150_000,
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
    """A child process we started and stop by its own pid."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, log: Path) -> None:
        self.log = log
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
        self.plan = Plan.make(args.quick)
        self.brokers = f"127.0.0.1:{args.kafka_port}"
        self.work = ROOT / ".cache" / "bench" / f"{int(time.time())}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows: list[Measured] = []
        self.steps: dict[str, list[Measured]] = {}
        self.extra: dict[str, Any] = {}
        self.salt = random.getrandbits(31)
        self.next_index = 0
        self.broker_pid = 0

    # --- infrastructure -------------------------------------------------------------------

    def kafka(self, action: str) -> None:
        env = {**os.environ, "KAFKA_PORT": str(self.args.kafka_port)}
        subprocess.run([str(ROOT / "tools/kafka/kafka.sh"), action], env=env, check=True)

    def broker_cpu(self) -> float:
        try:
            return measure.cpu_seconds(self.broker_pid)
        except (OSError, ValueError):
            return math.nan

    def topics(self, prefix: str) -> dict[str, str]:
        names = {k: f"bench.{self.salt:x}.{prefix}.{k}" for k in ("events", "alerts", "dlq")}

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.brokers)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(n, 3, 1) for n in names.values()])
            finally:
                await admin.close()

        asyncio.run(create())
        return names

    def target(self, kind: str, topics: dict[str, str], *, ws: bool = False) -> Proc:
        """Start the bridge (`bridge`, `noop`) or the naive handler; return once it is ready."""
        env = {
            **os.environ,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.brokers,
            "BRIDGE_HTTP__HOST": "127.0.0.1",
            "BRIDGE_HTTP__PORT": str(HTTP_PORT),
            "BRIDGE_WEBHOOK__SECRETS": SECRET,
            "BRIDGE_TOPICS__EVENTS": topics["events"],
            "BRIDGE_TOPICS__ALERTS": topics["alerts"],
            "BRIDGE_TOPICS__DLQ": topics["dlq"],
            "BRIDGE_LOG__LEVEL": "INFO",
            "BRIDGE_LOG__FORMAT": "json",
        }
        if ws:
            env |= {
                "BRIDGE_WEBSOCKET__ENABLED": "true",
                "BRIDGE_WEBSOCKET__URL": f"ws://127.0.0.1:{WS_PORT}/v1/ws",
                "BRIDGE_WEBSOCKET__AUTH": "bearer",
                "BRIDGE_PINECALL__API_KEY": "bench-key",
                "BRIDGE_PINECALL__API_URL": "http://127.0.0.1:9",
            }
        if kind == "bridge":
            args = [str(Path(PY).parent / "pinecall-bridge"), "run"]
        elif kind == "noop":
            args = [PY, "-m", "bench.baselines.noop"]
        else:
            args = [
                PY, "-m", "bench.baselines.naive", "--port", str(HTTP_PORT),
                "--brokers", self.brokers, "--topic", topics["events"],
            ]  # fmt: skip
        proc = Proc(args, env=env, log=self.work / f"{kind}-{len(self.rows)}.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.p.poll() is not None:
                raise RuntimeError(f"{kind} exited; see {proc.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/readyz", timeout=1):
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

    def webhook_args(self, rate: float, count: int, first: int, batch: int = 1) -> list[str]:
        return [
            "webhook", "--port", str(HTTP_PORT), "--secret", SECRET, "--rate", str(rate),
            "--count", str(count), "--first", str(first), "--salt", str(self.salt),
            "--batch", str(batch),
        ]  # fmt: skip

    def measured(
        self,
        row: Measured,
        target: Proc | None,
        loadgens: list[Loadgen],
        consumer: measure.Consumer | None,
        first: int,
        *,
        cpu_pid: int | None = None,
        already_read: int = 0,
    ) -> Measured:
        """Start the load generators together, wait for the read-back, fill in the row."""
        for gen in loadgens:
            gen.expect("ready")
        pid = cpu_pid if cpu_pid is not None else (target.pid if target else None)
        hist_port = HTTP_PORT if target is not None and row.target == "bridge" else None
        hist0 = measure.histogram(hist_port) if hist_port else []
        cpu0 = measure.cpu_seconds(pid) if pid else math.nan
        broker0 = self.broker_cpu()
        load0 = measure.loadavg()
        published0 = measure.published(HTTP_PORT) if consumer is None and target else 0.0
        noop_done = 0.0
        t0 = time.time() + 0.3
        for gen in loadgens:
            gen.go(t0)
        for gen in loadgens:
            gen.expect("done")
        expected = row.events
        if consumer is not None:
            consumer.wait_for(already_read + expected, timeout=120)
        elif target is not None:
            noop_done = self.wait_published(published0 + expected)
        cpu1 = measure.cpu_seconds(pid) if pid else math.nan
        broker1 = self.broker_cpu()
        hist1 = measure.histogram(hist_port) if hist_port else []
        results = [gen.result() for gen in loadgens]
        row.load = f"{load0} → {measure.loadavg()}"
        row.loadgen_cpu_s = sum(r[0]["cpu_s"] + r[0].get("kcat_cpu_s", 0.0) for r in results)
        if row.target == "kcat":
            cpu1, cpu0 = results[0][0]["kcat_cpu_s"], 0.0
        sched = results[0][1]
        latencies = sorted(x for r in results if r[0]["mode"] == "webhook" for x in r[2])
        row.client_ms = [measure.percentile(latencies, q) * 1000 for q in (50, 95, 99)]
        row.errors = sum(
            n
            for r in results
            for status, n in r[0]["statuses"].items()
            if status not in ("200", "sent") and not status.startswith("kcat_exit_0")
        )
        if hist_port:
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
            # No-op publisher: nothing reaches Kafka; its own counter says what was "published".
            published = measure.published(HTTP_PORT) - published0
            row.lost = max(expected - int(published), 0)
            end = max([noop_done, *(r[0]["end"] for r in results if r[0]["mode"] == "webhook")])
            row.throughput = published / max(end - t0, 1e-9)
        events = max(expected - row.lost, 1)
        row.cpu_per_10k = (cpu1 - cpu0) / events * 10_000
        row.broker_cpu_per_10k = (broker1 - broker0) / events * 10_000
        if target is not None:
            row.peak_rss = measure.peak_rss(target.pid)
        print(
            f"  {row.scenario:<18} {row.target:<7} offered {row.offered:>7.0f}/s"
            f"  got {row.throughput:>8.0f}/s  e2e p99 {row.e2e_ms[2]:7.1f} ms"
            f"  client p99 {row.client_ms[2]:7.1f} ms  bridge p99 {row.hist_ms[2]:6.1f} ms"
            f"  cpu/10k {row.cpu_per_10k:5.2f}s  lost {row.lost} doubled {row.doubled}"
            f" errors {row.errors}",
            flush=True,
        )
        return row

    @staticmethod
    def wait_published(expected: float, timeout: float = 120, idle: float = 5.0) -> float:
        """Poll the target's published counter until it reaches `expected`; when it did."""
        deadline = time.monotonic() + timeout
        last, changed = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            now = measure.published(HTTP_PORT)
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
        self, kind: str, prefix: str, *, consume: bool = True
    ) -> Iterator[tuple[Proc | None, measure.Consumer | None]]:
        topics = self.topics(prefix)
        consumer = measure.Consumer(self.brokers, topics["events"]) if consume else None
        proc = None
        try:
            if kind != "kcat":
                proc = self.target(kind, topics)
            yield proc, consumer
        finally:
            if proc is not None:
                proc.stop()
            if consumer is not None:
                consumer.stop()

    # --- scenarios ------------------------------------------------------------------------

    def warm_up(self, proc: Proc | None, consumer: measure.Consumer | None) -> int:
        """A second of light traffic first, so connection set-up is not measured."""
        first = self._indices(1000)
        gen = Loadgen(self.webhook_args(1000, 1000, first), self.work / f"warm-{first}.json")
        gen.expect("ready")
        gen.go(time.time() + 0.1)
        gen.expect("done")
        gen.result()
        if consumer is not None:
            consumer.wait_for(1000, timeout=30)
        return 1000

    def step_up(self, kind: str, name: str, rates: list[float], batch: int = 1) -> list[Measured]:
        """Scenario 5: rising offered load on one running target until it fails twice."""
        rows: list[Measured] = []
        consume = kind != "noop"
        with self.serving(kind, f"{name}-{kind}", consume=consume) as (proc, consumer):
            read = self.warm_up(proc, consumer)
            failures = 0
            for rate in rates:
                count = int(rate * self.plan.step_seconds) // batch * batch
                first = self._indices(count)
                gen = Loadgen(
                    self.webhook_args(rate, count, first, batch),
                    self.work / f"{name}-{kind}-{rate:.0f}.json",
                )
                row = Measured(name, kind, rate, count)
                self.measured(row, proc, [gen], consumer, first, already_read=read)
                read += count
                rows.append(row)
                failures = 0 if self.sustained(row) else failures + 1
                if failures >= 2:
                    break
        self.steps[f"{name}:{kind}"] = rows
        return rows

    @staticmethod
    def sustained(row: Measured) -> bool:
        """Kept up with no errors and p99 under the goal (the bridge's own histogram if any)."""
        p99 = row.hist_ms[2] if not math.isnan(row.hist_ms[2]) else row.client_ms[2]
        return row.clean and p99 < P99_GOAL * 1000 and row.throughput >= 0.95 * row.offered

    @staticmethod
    def best(rows: list[Measured]) -> Measured | None:
        ok = [r for r in rows if Bench.sustained(r)]
        return max(ok, key=lambda r: r.offered) if ok else None

    def fixed_webhook(self, kind: str, name: str, rate: float, batch: int = 1) -> Measured:
        count = int(rate * self.plan.fixed_seconds) // batch * batch
        with self.serving(kind, f"{name}-{kind}", consume=kind != "noop") as (proc, consumer):
            read = self.warm_up(proc, consumer)
            first = self._indices(count)
            gen = Loadgen(
                self.webhook_args(rate, count, first, batch), self.work / f"{name}-{kind}.json"
            )
            row = Measured(name, kind, rate, count)
            self.measured(row, proc, [gen], consumer, first, already_read=read)
        self.rows.append(row)
        return row

    def ws_run(self, kind: str, name: str, rate: float, count: int, both: bool = False) -> Measured:
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
        proc = self.target(kind, topics, ws=True)
        try:
            gens = [ws_gen]
            if both:
                gens.append(
                    Loadgen(
                        self.webhook_args(rate, count, first), self.work / f"{name}-{kind}.json"
                    )
                )
            row = Measured(name, kind, rate, count)
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
        out = subprocess.run(
            [PY, "-m", "bench.dedupmem"], cwd=ROOT, check=True, capture_output=True, text=True
        )
        self.extra["dedup"] = orjson.loads(out.stdout)
        last = self.extra["dedup"]["points"][-1]
        print(f"  dedup window: {last['bytes_per_entry']:.0f} bytes per id at 1M ids", flush=True)

    def profile_bridge(self, rate: float) -> None:
        """py-spy on the bridge under scenario 1's load: where its CPU goes."""
        seconds = self.plan.fixed_seconds
        count = int(rate * seconds)
        with self.serving("bridge", "profile") as (proc, consumer):
            assert proc is not None
            read = self.warm_up(proc, consumer)
            first = self._indices(count)
            gen = Loadgen(self.webhook_args(rate, count, first), self.work / "profile.json")
            spy = profile.start(proc.pid, seconds, self.work / "profile.raw")
            row = Measured("profile", "bridge", rate, count)
            self.measured(row, proc, [gen], consumer, first, already_read=read)
            self.extra["profile"] = profile.finish(spy, self.work / "profile.raw")

    # --- the whole run --------------------------------------------------------------------

    def run(self) -> Path:
        only = set(self.args.only.split(",")) if self.args.only else None

        def want(name: str) -> bool:
            return only is None or name in only

        self.extra["machine"] = machine()
        self.extra["uptime_start"] = uptime()
        started = time.time()
        plan = self.plan
        if want("stepup") or want("webhook"):
            print("scenario 5: step-up, one event per request", flush=True)
            bridge_best = self.best(self.step_up("bridge", "stepup", plan.steps))
            rate = 0.7 * bridge_best.offered if bridge_best else 0.7 * plan.steps[0]
            self.extra["max_rate"] = bridge_best.offered if bridge_best else 0.0
            if not self.args.no_baselines:
                self.step_up("naive", "stepup", plan.steps)
                self.step_up("noop", "stepup", plan.steps)
            print(f"scenario 1: one event per request at {rate:.0f}/s (70% of max)", flush=True)
            self.fixed_webhook("bridge", "webhook-single", rate)
            if not self.args.no_baselines:
                self.fixed_webhook("naive", "webhook-single", rate)
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
        if want("kcat") and not self.args.no_baselines:
            print("baseline (a): kcat flat out", flush=True)
            self.kcat_run("flat-out", 0, plan.kcat_events)
        if want("both"):
            rate = 0.5 * self.extra.get("max_rate", 0.0) or 1000.0
            print(f"scenario 4: both channels, every event twice, {rate:.0f} events/s", flush=True)
            self.ws_run("bridge", "both-channels", rate, int(rate * plan.fixed_seconds), both=True)
        if want("memory"):
            print("scenario 6: dedup window memory", flush=True)
            self.dedup_memory()
        if self.args.profile:
            rate = 0.7 * self.extra.get("max_rate", 0.0) or 3000.0
            print(f"profile: py-spy on the bridge at {rate:.0f}/s", flush=True)
            self.profile_bridge(rate)
        self.extra["uptime_end"] = uptime()
        self.extra["wall_s"] = time.time() - started
        self.extra["quick"] = self.args.quick
        return self.write()

    def write(self) -> Path:
        stamp = datetime.date.today().isoformat()
        name = f"{stamp}-{commit()}{'-quick' if self.args.quick else ''}"
        out_dir = Path(self.args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
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


def ensure_kcat() -> None:
    """kcat is Debian's package; install it when missing (needs root, like the Makefile's tools)."""
    if shutil.which("kcat"):
        return
    if os.geteuid() != 0:
        raise SystemExit("kcat is missing: apt-get install -y kcat (as root)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "kcat"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    parser.add_argument("--kafka-port", type=int, default=19092)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--only", help="stepup,batch,ws,kcat,both,memory")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also py-spy the bridge")
    args = parser.parse_args()
    ensure_kcat()
    bench = Bench(args)
    bench.kafka("up")
    try:
        bench.broker_pid = int(
            (ROOT / ".cache" / "kafka-data" / str(args.kafka_port) / "broker.pid").read_text()
        )
    except (OSError, ValueError):
        bench.broker_pid = 0
    try:
        bench.run()
    finally:
        # The bench broker is ours alone: stop it so it does not hold memory on a shared box.
        bench.kafka("down")


if __name__ == "__main__":
    main()
