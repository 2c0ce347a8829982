"""The headless demo's verdict: it fails on lost, doubled or unexpected output, and on no check."""

from __future__ import annotations

import asyncio
import gc
import io
import re
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError
from rich.console import Console

from bridge.config import KafkaSettings, load_settings
from bridge.demo import runner
from bridge.demo.runner import RecentEvents, tail_command
from bridge.metrics import Metrics
from bridge.service import Bridge
from bridge.simulator import Simulator, SimulatorConfig
from bridge.simulator.ledger import Ledger, ledger_record
from tests.environ import without_bridge_variables
from tests.loopreports import loop_reports


def call_of(event_id: str) -> str | None:
    """The call of a `<call>:<seq>` id: the subject the bridge gives its CloudEvent (an alert,
    whose id is its content's, has none)."""
    return None if event_id.startswith("sha256:") else event_id.rpartition(":")[0]


class FakeSimulator:
    """A simulator whose ledger holds a durable entry for each `<call>:<seq>` id, and an
    alert for each `sha256:` one (delivered, or refused by every attempt when in `refused`)."""

    def __init__(self, ids: set[str], refused: set[str]) -> None:
        self.ledger = Ledger()
        for event_id in sorted(ids | refused):
            call, _, seq = event_id.rpartition(":")
            if event_id.startswith("sha256:"):
                entry = {"call": None, "seq": 1, "type": "monitor.fired", "ephemeral": False}
                alert = ledger_record(entry, ["webhook"], event_id=event_id)
                self.ledger.append({**alert, "delivered": event_id not in refused})
                continue
            entry = {"call": call, "seq": int(seq), "type": "turn.user", "ephemeral": False}
            self.ledger.append(ledger_record(entry, ["webhook"]))

    def snapshot(self) -> dict[str, Any]:
        return {"events_generated": self.ledger.size}


class FakeBridge:
    def __init__(self) -> None:
        self.metrics = Metrics()


class FakeRecent:
    """What the demo's consumer read: ids with their counts, and records that were not events."""

    def __init__(self, *ids: str, undecodable: int = 0) -> None:
        self.ids: Counter[str] = Counter(ids)
        self.call_of: dict[str, str] = {}
        for event_id in ids:
            self.remember(event_id)
        self.undecodable = undecodable
        self.read = len(ids) + undecodable

    def remember(self, event_id: str) -> None:
        if (call := call_of(event_id)) is not None:
            self.call_of[event_id] = call

    def arrive(self, event_id: str) -> None:
        self.ids[event_id] += 1
        self.remember(event_id)
        self.read += 1


async def verdict(
    expected: set[str],
    recent: FakeRecent,
    traffic: asyncio.Task[int],
    refused: frozenset[str] = frozenset(),
) -> tuple[int, str]:
    out = io.StringIO()
    code = await runner._headless(
        cast(Bridge, FakeBridge()),
        cast(Simulator, FakeSimulator(expected, set(refused))),
        cast(RecentEvents, recent),
        traffic,
        asyncio.Event(),
        Console(file=out, width=200),
    )
    return code, out.getvalue()


async def traffic_of(events: int) -> asyncio.Task[int]:
    async def play() -> int:
        return events

    task = asyncio.create_task(play())
    await task
    return task


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(runner, "CATCH_UP_SECONDS", 0.3)


async def test_everything_once_passes() -> None:
    code, out = await verdict(
        {"CA_1:1", "CA_1:2"}, FakeRecent("CA_1:1", "CA_1:2"), await traffic_of(2)
    )
    assert code == 0
    assert "lost 0, doubled 0, unexpected 0" in out


@pytest.mark.parametrize(
    ("recent", "line"),
    [
        (FakeRecent("CA_1:1"), "lost 1, doubled 0, unexpected 0"),
        (FakeRecent("CA_1:1", "CA_1:2", "CA_1:2"), "lost 0, doubled 1, unexpected 0"),
        (FakeRecent("CA_1:1", "CA_1:2", "CA_1:7"), "lost 0, doubled 0, unexpected 1"),
        (FakeRecent("CA_1:1", "CA_1:2", undecodable=1), "lost 0, doubled 0, unexpected 1"),
    ],
)
async def test_lost_doubled_or_unexpected_output_fails(recent: FakeRecent, line: str) -> None:
    code, out = await verdict({"CA_1:1", "CA_1:2"}, recent, await traffic_of(2))
    assert code == 1
    assert line in out


async def test_a_copy_published_after_every_event_was_seen_still_counts() -> None:
    recent = FakeRecent("CA_1:1", "CA_1:2")

    async def late_copy() -> None:
        await asyncio.sleep(0.02)
        recent.arrive("CA_1:2")

    late = asyncio.create_task(late_copy())
    code, out = await verdict({"CA_1:1", "CA_1:2"}, recent, await traffic_of(2))
    await late
    assert code == 1
    assert "doubled 1" in out


async def test_failed_traffic_fails_instead_of_checking_an_empty_ledger() -> None:
    async def play() -> int:
        raise TimeoutError("no subscriber within 60 s")

    traffic = asyncio.create_task(play())
    with pytest.raises(TimeoutError):
        await traffic
    code, out = await verdict(set(), FakeRecent(), traffic)
    assert code == 1
    assert "simulated traffic failed" in out


async def test_a_traffic_failure_is_shown_as_said_never_read_as_markup() -> None:
    async def play() -> int:
        raise RuntimeError("GET [/v1/calls] failed: [bold]503")

    traffic = asyncio.create_task(play())
    with pytest.raises(RuntimeError):
        await traffic
    code, out = await verdict(set(), FakeRecent(), traffic)
    assert code == 1
    assert "failed: RuntimeError('GET [/v1/calls] failed: [bold]503')" in out


async def test_ctrl_c_while_output_catches_up_ends_at_once_without_a_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while the output trailed (a slow Kafka) used to be held for the whole 30 s
    catch-up, then judged as lost output."""
    monkeypatch.setattr(runner, "CATCH_UP_SECONDS", 30.0)
    stop = asyncio.Event()
    stop.set()
    out = io.StringIO()
    verdict = runner._headless(
        cast(Bridge, FakeBridge()),
        cast(Simulator, FakeSimulator({"CA_1:1"}, set())),
        cast(RecentEvents, FakeRecent()),
        await traffic_of(1),
        stop,
        Console(file=out, width=200),
    )
    assert await asyncio.wait_for(verdict, 5) == 130
    assert out.getvalue() == "interrupted\n"


class FakeViewedSimulator:
    """A simulator the live view can show: its counters, all zero."""

    def snapshot(self) -> dict[str, Any]:
        return Counter()


@pytest.mark.parametrize(
    "why",
    [
        "rate must not be negative, not -1.0",
        "GET [/v1/calls] failed: [bold]503",  # shown as said, never parsed as rich markup
    ],
)
async def test_failed_traffic_ends_the_live_view_saying_why(why: str) -> None:
    """A traffic that failed (a negative --rate, no feed subscriber in time) used to leave a
    view of zeros, "waiting for events...", until Ctrl-C, its reason never shown."""

    async def play() -> int:
        raise ValueError(why)

    traffic = asyncio.create_task(play())
    with pytest.raises(ValueError, match=re.escape(why)):
        await traffic
    out = io.StringIO()
    live = runner._live(
        cast(Bridge, FakeBridge()),
        cast(Simulator, FakeViewedSimulator()),
        cast(RecentEvents, SimpleNamespace(lines=[])),
        traffic,
        asyncio.Event(),
        "",
        Console(file=out, width=200),
    )
    assert await asyncio.wait_for(live, 5) == 1
    assert f"the simulated traffic failed: ValueError('{why}')" in out.getvalue()


async def test_no_durable_event_is_no_pass() -> None:
    code, out = await verdict(set(), FakeRecent(), await traffic_of(0))
    assert code == 1
    assert "nothing was checked" in out


async def test_other_calls_output_meanwhile_are_reported_not_judged() -> None:
    # An interrupted earlier run's backlog, output now: not this run's calls.
    recent = FakeRecent("CA_1:1", "CA_1:2", "CA_9:1", "CA_9:1")
    code, out = await verdict({"CA_1:1", "CA_1:2"}, recent, await traffic_of(2))
    assert code == 0
    assert "events of other calls (an earlier run's backlog), not judged: 1" in out
    assert "lost 0, doubled 0, unexpected 0" in out


async def test_alerts_are_judged_by_their_content_ids() -> None:
    expected = {"CA_1:1", "sha256:aa"}
    code, out = await verdict(expected, FakeRecent("CA_1:1"), await traffic_of(1))
    assert (code, "lost 1, doubled 0, unexpected 0" in out) == (1, True)
    recent = FakeRecent("CA_1:1", "sha256:aa", "sha256:aa")
    code, out = await verdict(expected, recent, await traffic_of(1))
    assert (code, "lost 0, doubled 1, unexpected 0" in out) == (1, True)


async def test_an_alert_the_bridge_refused_is_reported_not_lost() -> None:
    # Pinecall gave up after the bridge refused both attempts: the bridge said no, loudly.
    code, out = await verdict(
        {"CA_1:1"}, FakeRecent("CA_1:1"), await traffic_of(1), frozenset({"sha256:bb"})
    )
    assert code == 0
    assert "lost 0, doubled 0, unexpected 0" in out
    assert "alerts the bridge refused (4xx, or no 2xx in Pinecall's two attempts)" in out
    assert "not expected: 1" in out


async def test_another_runs_alert_is_not_judged() -> None:
    recent = FakeRecent("CA_1:1", "sha256:aa", "sha256:cc")
    code, out = await verdict({"CA_1:1", "sha256:aa"}, recent, await traffic_of(1))
    assert code == 0
    assert "not judged: 1" in out


@pytest.fixture
async def unclosed() -> AsyncIterator[list[str]]:
    """What the loop is told of clients collected unclosed ("Unclosed AIOKafkaConsumer")."""
    with loop_reports() as told, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield told


async def test_recent_events_never_started_leaves_no_kafka_client_open(
    unclosed: list[str],
) -> None:
    # The demo can end before the reader starts (the bridge never ready, Ctrl-C meanwhile).
    recent = RecentEvents(load_settings(webhook={"allow_unsigned": True}), ["events"])
    del recent
    gc.collect()
    assert unclosed == []


async def test_recent_events_whose_start_fails_leaves_no_kafka_client_open(
    unclosed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def partitions(*_: Any) -> list[TopicPartition]:
        return [TopicPartition("events", 0)]

    async def refused(_client: AIOKafkaClient) -> None:
        # aiokafka's own consumer, whose start fails as against a closed port: no network.
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")

    monkeypatch.setattr(runner, "topic_partitions", partitions)
    monkeypatch.setattr(AIOKafkaClient, "bootstrap", refused)
    recent = RecentEvents(load_settings(webhook={"allow_unsigned": True}), ["events"])
    with pytest.raises(KafkaConnectionError):
        await recent.start()
    del recent
    gc.collect()
    assert unclosed == []


def test_the_tail_hint_names_the_brokers_only_when_they_are_not_the_default() -> None:
    assert tail_command(KafkaSettings()) == ".venv/bin/pinecall-bridge tail"
    moved = KafkaSettings(bootstrap_servers=["127.0.0.1:29999"])
    assert tail_command(moved) == (
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:29999 .venv/bin/pinecall-bridge tail"
    )


async def test_every_source_is_pointed_at_the_simulators_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `make run SIMULATOR_PORT=...`: the REST API, the feed and the call logs all move with it.
    without_bridge_variables(monkeypatch, tmp_path)
    options = runner.DemoOptions(http_port=29998, simulator_port=0)
    async with Simulator(SimulatorConfig(port=options.simulator_port)) as simulator:
        settings = runner.demo_loaded(options, simulator).settings
        port = simulator.port
    assert port != 8765
    assert settings.pinecall.api_url == f"http://127.0.0.1:{port}"
    assert settings.websocket.url == f"ws://127.0.0.1:{port}/v1/ws"
    assert (settings.sse.enabled, settings.http.port) == (True, 29998)


class OneBatchConsumer:
    """A consumer whose first read gives `messages`; the next ends the reader (as a cancel)."""

    def __init__(self, messages: list[Any]) -> None:
        self._batches = [{TopicPartition("events", 0): messages}]

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        if not self._batches:
            raise asyncio.CancelledError
        return self._batches.pop()


async def test_a_null_header_is_read_past_not_the_end_of_the_reader() -> None:
    # Another producer's record may carry a header with no value: the demo reads on.
    recent = RecentEvents(load_settings(webhook={"allow_unsigned": True}), ["events"])
    value = b'{"specversion": "1.0", "id": "CA1:1", "source": "s", "type": "t", "subject": "CA1"}'
    message = SimpleNamespace(
        topic="events",
        key=b"CA1",
        value=value,
        headers=[("content-type", b"application/cloudevents+json"), ("ce_trace", None)],
    )
    recent._consumer = cast(Any, OneBatchConsumer([message]))
    with pytest.raises(asyncio.CancelledError):
        await recent.run()
    assert recent.read == 1
    assert recent.ids == Counter({"CA1:1": 1})
    assert len(recent.lines) == 1


class StopLoggingBridge:
    """A bridge, ready at once, whose stop writes a line where the demo's output goes: as the
    real one's stop logs what its log thinning held back (a start's group-join retries)."""

    def __init__(self, settings: Any, out: io.StringIO) -> None:
        self.settings = settings
        self.port = 29998
        self.readiness = SimpleNamespace(ready=lambda: True)
        self._out = out

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._out.write("WARNING held back: 2 more like this\n")


class IdleRecent:
    """The demo's consumer, reading nothing."""

    def __init__(self, *_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        pass


async def test_the_headless_verdict_is_the_last_thing_printed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The bridge's stop said its held-back warnings after the verdict, which then scrolled away.
    without_bridge_variables(monkeypatch, tmp_path)
    out = io.StringIO()

    async def verdict(*_: Any) -> int:
        cast(Console, _[-1]).print("lost 0, doubled 0, unexpected 0")
        return 0

    async def played(*_: Any) -> int:
        return 1

    # Not the test process's own logging: the stop's line stands for what it would print.
    monkeypatch.setattr("bridge.logsetup.configure", lambda *_: None)
    monkeypatch.setattr(runner, "Bridge", lambda settings: StopLoggingBridge(settings, out))
    monkeypatch.setattr(runner, "RecentEvents", IdleRecent)
    monkeypatch.setattr(runner, "_traffic", played)
    monkeypatch.setattr(runner, "_headless", verdict)
    options = runner.DemoOptions(http_port=29998, simulator_port=0, headless=True)
    code = await runner.run_demo(options, Console(file=out, width=200))
    assert code == 0
    assert out.getvalue().splitlines() == [
        "WARNING held back: 2 more like this",
        "lost 0, doubled 0, unexpected 0",
    ]
