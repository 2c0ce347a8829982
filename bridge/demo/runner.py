"""`pinecall-bridge demo`: the simulator, the bridge with its three sources, a live Kafka view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from bridge import logsetup
from bridge.config import (
    DEFAULT_BOOTSTRAP_SERVERS,
    KafkaSettings,
    Loaded,
    Settings,
    load,
    log_unknown_variables,
)
from bridge.demo.stats import Snapshot, take
from bridge.demo.view import render
from bridge.normalise.binding import decode
from bridge.service import Bridge
from bridge.simulator import Simulator, SimulatorConfig
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.connectsetup import for_role
from bridge.sink.kafka import client_options, topic_partitions
from bridge.tail import given_headers
from bridge.tail import render as render_record

log = logging.getLogger(__name__)
DEV_SECRET = "dev-secret"
READY_TIMEOUT_SECONDS = 120.0
CATCH_UP_SECONDS = 30.0
# After every expected event was read once: a copy published later still shows within this.
SETTLE_SECONDS = 3.0
EXIT_CANNOT_LISTEN = 1  # as `run` and `simulate` exit when a port is taken
SIMULATOR_PORT_MOVED_BY = "--simulator-port (make: SIMULATOR_PORT=) picks another"
HTTP_PORT_MOVED_BY = "--http-port (make: HTTP_PORT=) picks another"
ADMIN_PORT_MOVED_BY = "BRIDGE_HTTP__ADMIN_PORT picks another (or, unset, none)"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    calls: int = 0  # 0: keep calling until Ctrl-C
    rate: float = 40.0
    concurrency: int = 8
    duplicates: float = 0.05
    reorder: float = 0.2
    alerts: float = 0.2  # calls that end with an alert of their agent's (webhook only)
    http_port: int = 8080
    simulator_port: int = 8765
    seed: int | None = None
    headless: bool = False


def demo_simulator_config(options: DemoOptions) -> SimulatorConfig:
    """The simulated Pinecall: an earlier run's calls, which the bridge resumes, count as ended."""
    # The bridge resumes the unfinished calls an interrupted run left in the ingest topic, as it
    # must; this simulator never saw them. A 404 would give each up with an ERROR line.
    return SimulatorConfig(
        port=options.simulator_port, keep_records=options.headless, unknown_calls_sealed=True
    )


def demo_loaded(options: DemoOptions, simulator: Simulator) -> Loaded:
    """The environment's settings (Kafka and so on), with every source wired to the simulator."""
    return load(
        webhook={"secrets": [DEV_SECRET]},
        http={"host": "127.0.0.1", "port": options.http_port},
        pinecall={"api_url": simulator.url, "api_key": simulator.config.api_key},
        websocket={"enabled": True, "url": simulator.ws_url, "backoff_max_seconds": 2.0},
        sse={"enabled": True, "backoff_max_seconds": 2.0},
        log={"format": "console", "level": "WARNING" if options.headless else "ERROR"},
    )


class RecentEvents:
    """Reads what downstream teams read, from the end of the bridge's topics."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.lines: deque[Text] = deque(maxlen=8)
        self.ids: Counter[str] = Counter()
        self.call_of: dict[str, str] = {}  # event id -> its call, the CloudEvent's subject
        self.read = 0  # records read, CloudEvents or not
        self.undecodable = 0  # records that are not CloudEvents
        self._settings = settings
        self._topics = topics
        # Made by start(): a consumer counts as open from its construction, and one made here
        # would leak whenever the demo ended before its run.
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Position at the current end, so exactly what comes after is read."""
        if self._consumer is not None:
            return
        partitions = await topic_partitions(self._settings.kafka, self._topics)
        consumer = AIOKafkaConsumer(
            **for_role(client_options(self._settings.kafka), "demo"),
            group_id=None,
            enable_auto_commit=False,
            # Aborted dedup transactions stay in the log; downstream readers skip them.
            isolation_level="read_committed",
        )
        await start_consumer(consumer)
        try:
            consumer.assign(partitions)
            for partition, offset in (await consumer.end_offsets(partitions)).items():
                consumer.seek(partition, offset)
        except BaseException:
            await stop_consumer(consumer)
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Close the consumer; safe before start() and twice."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)

    async def run(self) -> None:
        """Read until cancelled; the owner stops the consumer (stop())."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        while True:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                for message in batch:
                    headers = given_headers(message.headers)
                    # Whichever content mode BRIDGE_CLOUDEVENTS__MODE picked.
                    event: Any = decode(headers, message.value)
                    self.read += 1
                    if event is None:
                        self.undecodable += 1
                        event = message.value
                    else:
                        event_id = str(event.get("id"))
                        self.ids[event_id] += 1
                        if event.get("subject") is not None:
                            self.call_of[event_id] = str(event["subject"])
                    line = render_record(message.topic, message.key, event, headers)
                    self.lines.append(line)


def tail_command(kafka: KafkaSettings) -> str:
    """`tail` for another terminal, naming the brokers when they are not its default."""
    if tuple(kafka.bootstrap_servers) == DEFAULT_BOOTSTRAP_SERVERS:
        return ".venv/bin/pinecall-bridge tail"
    servers = ",".join(kafka.bootstrap_servers)
    return f"BRIDGE_KAFKA__BOOTSTRAP_SERVERS={servers} .venv/bin/pinecall-bridge tail"


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run until Ctrl-C (or, headless, until the calls are done); returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim_config = demo_simulator_config(options)
    simulator = Simulator(sim_config)
    try:
        await simulator.start()  # a failed start closes what it opened
    except OSError as exc:
        where = f"{sim_config.host}:{sim_config.port}"
        print(
            _cannot_listen("the simulated Pinecall", where, SIMULATOR_PORT_MOVED_BY, exc),
            file=sys.stderr,
        )
        return EXIT_CANNOT_LISTEN
    async with simulator:  # started: entering starts nothing more, leaving stops it
        loaded = demo_loaded(options, simulator)
        settings = loaded.settings
        logsetup.configure(settings.log.level, settings.log.format)
        log_unknown_variables(loaded.dotenv)
        bridge = Bridge(settings)
        try:
            await bridge.start()
        except OSError as exc:
            await bridge.stop()
            print(_bridge_cannot_listen(bridge, exc), file=sys.stderr)
            return EXIT_CANNOT_LISTEN
        recent = RecentEvents(settings, [settings.topics.events, settings.topics.alerts])
        tasks: list[asyncio.Task[Any]] = []
        if options.headless:
            # Held until the bridge has stopped: its stop says what its log thinning held back
            # (a start's group-join retries), which otherwise came after the verdict.
            console.begin_capture()
        try:
            await _wait_ready(bridge, stop, console)
            url = f"http://127.0.0.1:{bridge.port}{settings.webhook.path}"
            simulator.register_webhook(url, secret=DEV_SECRET)
            await recent.start()
            tasks.append(asyncio.create_task(recent.run(), name="demo-consumer"))
            traffic = asyncio.create_task(_traffic(simulator, options), name="demo-traffic")
            tasks.append(traffic)
            hint = (
                f"[dim]Ctrl-C stops everything. Send your own signed event: "
                f".venv/bin/pinecall-bridge send --secret {DEV_SECRET} --url {url}\n"
                f"Metrics: http://127.0.0.1:{bridge.port}/metrics  Cut the feed: "
                f"curl -X POST {simulator.url}/_sim/drop  Cut the call logs: "
                f"curl -X POST {simulator.url}/_sim/sse/cut  Downstream view: "
                f"{tail_command(settings.kafka)}[/]"
            )
            if options.headless:
                return await _headless(bridge, simulator, recent, traffic, stop, console)
            return await _live(bridge, simulator, recent, traffic, stop, hint, console)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            try:
                await recent.stop()
            finally:
                try:
                    await bridge.stop()
                finally:
                    if options.headless:
                        console.file.write(console.end_capture())
                        console.file.flush()


def _cannot_listen(what: str, where: str, moved_by: str, error: OSError) -> str:
    """The one line a port the demo cannot take ends it with: whose, and what picks another."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    return f"pinecall-bridge demo: cannot listen on {where} for {what}: {reason}; {moved_by}"


def _bridge_cannot_listen(bridge: Bridge, error: OSError) -> str:
    """`_cannot_listen` for the port that failed (`bridge.port` is set once the webhook one is)."""
    http = bridge.settings.http
    if bridge.port is None:
        where = f"{http.host}:{http.port}"
        return _cannot_listen("the bridge's webhooks", where, HTTP_PORT_MOVED_BY, error)
    where = f"{http.host}:{http.admin_port}"
    return _cannot_listen("the bridge's admin port", where, ADMIN_PORT_MOVED_BY, error)


async def _wait_ready(bridge: Bridge, stop: asyncio.Event, console: Console) -> None:
    """Until the bridge is ready; a clear exit, not a silent wait, when it never is."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not bridge.readiness.ready():
        if stop.is_set():
            raise SystemExit(130)
        if time.monotonic() > deadline:
            console.print(
                f"[red]the bridge is not ready after {READY_TIMEOUT_SECONDS:.0f} s: Kafka at"
                f" {','.join(bridge.settings.kafka.bootstrap_servers)} unreachable, or its"
                " topics missing (make kafka-up starts a local broker)[/]"
            )
            raise SystemExit(1)
        await asyncio.sleep(0.1)


async def _traffic(simulator: Simulator, options: DemoOptions) -> int:
    """Calls in rounds; returns how many events were generated."""
    generated, round_number = 0, 0
    while options.calls == 0 or round_number == 0:
        seed = None if options.seed is None else options.seed + round_number
        report = await simulator.run_traffic(
            calls=options.calls or options.concurrency,
            concurrency=options.concurrency,
            rate=options.rate,
            channel="all",  # webhooks, the WebSocket feed and the call logs over SSE
            duplicates=options.duplicates,
            reorder=options.reorder,
            alerts=options.alerts,  # by webhook alone, as Pinecall posts them: to the alerts topic
            seed=seed,
            subscribers=1,
            feed_subscribers=1,  # the call-log source's org feed: it announces the calls
            subscriber_timeout=60,
        )
        generated += report.events
        round_number += 1
    return generated


def _simulator_line(simulator: Simulator) -> str:
    stats = simulator.snapshot()
    return (
        f"[bold]simulator[/] calls in progress, events generated {stats['events_generated']:,}"
        f" (durable {stats['events_durable']:,}), alerts {stats['alerts_generated']:,},"
        f" webhook deliveries ok"
        f" {stats['deliveries_ok']:,} retried {stats['deliveries_retried']:,},"
        f" frames sent {stats['frames_sent']:,}, call-log entries streamed"
        f" {stats['sse_entries_streamed']:,}"
    )


def _traffic_failure(traffic: asyncio.Task[int]) -> str | None:
    """Why the simulated traffic failed; None while it runs or once it has ended well."""
    if not traffic.done():
        return None
    if traffic.cancelled():
        return "cancelled"
    error = traffic.exception()
    return None if error is None else repr(error)


async def _live(
    bridge: Bridge,
    simulator: Simulator,
    recent: RecentEvents,
    traffic: asyncio.Task[int],
    stop: asyncio.Event,
    hint: str,
    console: Console,
) -> int:
    """The live view until Ctrl-C (exit 0), or until the traffic fails (exit 1, saying why)."""
    before = take(bridge.metrics.registry, time.monotonic())
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        # A failed traffic (a bad --rate, no feed subscriber in time) would otherwise leave a
        # view of zeros, "waiting for events..." forever, its reason never shown.
        while not stop.is_set() and _traffic_failure(traffic) is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            now = take(bridge.metrics.registry, time.monotonic())
            live.update(render(now, before, list(recent.lines), _simulator_line(simulator), hint))
            before = now
    if (why := _traffic_failure(traffic)) is not None:
        console.print(f"[red]the simulated traffic failed: {escape(why)}[/]")
        return 1
    return 0


async def _headless(
    bridge: Bridge,
    simulator: Simulator,
    recent: RecentEvents,
    traffic: asyncio.Task[int],
    stop: asyncio.Event,
    console: Console,
) -> int:
    start = time.monotonic()
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({traffic, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not traffic.done():
        console.print("interrupted")
        return 130
    if (why := _traffic_failure(traffic)) is not None:
        console.print(f"[red]the simulated traffic failed: {escape(why)}[/]")
        return 1
    expected = simulator.ledger.expected_ids()
    refused = simulator.ledger.refused_ids()
    if not expected:
        console.print("[red]the simulated traffic made no durable event: nothing was checked[/]")
        return 1
    # Output trails the answers by a dedup commit interval and a poll or two: let it catch up.
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while time.monotonic() < deadline and not stop.is_set():
        if expected <= set(recent.ids):
            break
        await asyncio.sleep(0.1)
    # Then read on until nothing new comes for a while: a late second copy must be counted too.
    seen, until = -1, time.monotonic() + CATCH_UP_SECONDS
    while seen != recent.read and time.monotonic() < until and not stop.is_set():
        seen = recent.read
        await asyncio.sleep(SETTLE_SECONDS)
    if stop.is_set():
        # Ctrl-C while output catches up (a slow Kafka): not held for it, and no verdict on
        # output it did not wait for.
        console.print("interrupted")
        return 130
    snapshot: Snapshot = take(bridge.metrics.registry, time.monotonic())
    lost = expected - set(recent.ids)
    # Only this run's calls and alerts are judged: a backlog an interrupted earlier run left may
    # come out now. An alert has no call (nor subject): its id, its content's, is known or not.
    calls = {record["call"] for record in simulator.ledger.durable() if record["call"] is not None}
    ours = {i: n for i, n in recent.ids.items() if i in expected or recent.call_of.get(i) in calls}
    doubled = [event_id for event_id, n in ours.items() if n > 1]
    unexpected = len(set(ours) - expected) + recent.undecodable
    earlier = len(recent.ids) - len(ours)
    alerts = sum(1 for event_id in expected if event_id.startswith("sha256:"))
    console.print(
        f"{len(expected):,} durable events ({alerts:,} of them alerts) from"
        f" {simulator.snapshot()['events_generated']:,}"
        f" generated in {time.monotonic() - start:.1f} s;"
        f" received {sum(snapshot.received.values()):,.0f} copies over"
        f" {len(snapshot.received)} channels,"
        f" dropped {snapshot.dropped:,.0f} ephemeral, ingested"
        f" {sum(snapshot.ingested.values()):,.0f}; the dedup stage removed"
        f" {snapshot.duplicates:,.0f} duplicates and published"
        f" {sum(snapshot.published.values()):,.0f}."
    )
    if earlier:
        console.print(f"events of other calls (an earlier run's backlog), not judged: {earlier:,}")
    if refused:
        # Refused, not lost: the bridge answered no to every attempt, and Pinecall gave up.
        console.print(
            f"alerts the bridge refused (4xx, or no 2xx in Pinecall's two attempts), not expected:"
            f" {len(refused):,}"
        )
    console.print(f"lost {len(lost)}, doubled {len(doubled)}, unexpected {unexpected}")
    return 0 if not lost and not doubled and not unexpected else 1
