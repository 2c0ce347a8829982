"""Which parts a bridge runs for its stages, and the series it exports before it connects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from aiohttp import web
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from bridge import connlimit, pipeline
from bridge.config import Settings, ShutdownSettings, drain_delay_warnings, load_settings
from bridge.dedup.memoryfit import MemoryLimit
from bridge.metrics import FEED_LOSSES
from bridge.normalise.shapes import UnrecognisedReason
from bridge.service import Bridge, run_until_stopped
from bridge.sink import connectsetup
from bridge.sink.kafka import Layout, TopicConfigs, TopicReads
from bridge.sink.topicreads import why_unread
from bridge.sources.frames import FrameKind
from bridge.sources.reconnect import DisconnectReason
from bridge.stopbudget import drain_delay_seconds, first_phase_seconds
from bridge.stopsignals import hold_until_handled
from bridge.workers.role import Stages
from tests.metrics import sample, series
from tests.polling import until
from tests.sockets import free_port, ipv6_loopback, refusing_address
from tests.unit.sink.fakes import FakeAdmin

# Every series of the feed: a 0 from a process without the feed reads as a feed that is down.
FEED_SERIES = (
    "pinecall_bridge_feed_lease_held",
    "pinecall_bridge_websocket_connected",
    "pinecall_bridge_websocket_reconnects_total",
    "pinecall_bridge_websocket_frames_total",
    "pinecall_bridge_websocket_backlog_events",
    'pinecall_bridge_kafka_client_restarts_total{client="feed_lease"}',
)


def exposition(**sections: dict[str, object]) -> str:
    settings = load_settings(webhook={"secrets": ["s"]}, **sections)
    return Bridge(settings).metrics.render().decode()


async def test_without_the_feed_none_of_its_series_is_exported() -> None:
    text = exposition(websocket={"enabled": False})
    assert [name for name in FEED_SERIES if name in text] == []
    assert 'pinecall_bridge_kafka_client_restarts_total{client="dedup_consumer"} 0.0' in text


async def test_with_the_feed_every_process_exports_its_series_from_the_start() -> None:
    text = exposition(websocket={"enabled": True}, pinecall={"api_key": "k"})
    assert [name for name in FEED_SERIES if name not in text] == []
    assert "pinecall_bridge_feed_lease_held 0.0" in text
    assert "pinecall_bridge_websocket_connected 0.0" in text


async def test_with_the_feed_the_counters_its_alerts_read_are_at_0_before_the_lease() -> None:
    # The feed connects the moment the lease is taken: a series born then is first scraped
    # above 0 (a replay's burst past the backlog), and increase() never counts that burst.
    text = exposition(websocket={"enabled": True}, pinecall={"api_key": "k"})
    expected = [
        *(f'events_rejected_total{{channel="websocket",reason="{lost}"}}' for lost in FEED_LOSSES),
        *(f'websocket_reconnects_total{{reason="{r}"}}' for r in get_args(DisconnectReason)),
        *(f'websocket_frames_total{{kind="{kind}"}}' for kind in get_args(FrameKind)),
    ]
    samples = series(text)
    assert [name for name in expected if samples.get(f"pinecall_bridge_{name}") != 0] == []


def at_0_before_any_event(names: list[str]) -> list[str]:
    """Those of `names` (without the prefix) a fresh bridge does not export at 0."""
    samples = series(exposition())
    return [name for name in names if samples.get(f"pinecall_bridge_{name}") != 0]


async def test_the_dead_letter_counters_are_at_0_before_any_event() -> None:
    # PinecallBridgeDeadLettersHigh takes rate() of them: a series born at its first count has
    # none until its next.
    reasons = get_args(UnrecognisedReason)
    assert (
        at_0_before_any_event([f'events_dead_lettered_total{{reason="{r}"}}' for r in reasons])
        == []
    )


async def test_the_publish_failure_counters_are_at_0_before_any_event() -> None:
    # The dashboard's failures by reason are rates too.
    reasons = (*get_args(pipeline.PublishFailure), pipeline.TOO_LARGE)
    assert at_0_before_any_event([f'publish_failures_total{{reason="{r}"}}' for r in reasons]) == []


def every_source(port: int = 0, host: str = "127.0.0.1") -> Settings:
    """Webhooks, the feed and the call logs on, Kafka refusing every connection."""
    return load_settings(
        webhook={"secrets": ["s"]},
        websocket={"enabled": True},
        sse={"enabled": True},
        pinecall={"api_key": "k"},
        kafka={"bootstrap_servers": [refusing_address()]},
        http={"host": host, "port": port},
        shutdown={"grace_seconds": 2},
    )


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def runs(bridge: Bridge) -> dict[str, bool]:
    """Which of the parts that depend on the stages a bridge has."""
    return {
        "dedup stage": bridge.dedup is not None,
        "call-log source": bridge.calllog is not None,
        "feed lease": bridge.lease is not None,
    }


async def test_a_process_runs_both_stages_and_every_source_by_default() -> None:
    assert runs(Bridge(every_source())) == {
        "dedup stage": True,
        "call-log source": True,
        "feed lease": True,
    }


async def test_an_ingest_worker_runs_no_dedup_stage_and_follows_no_call_log() -> None:
    # The call-log source follows the partitions a dedup stage owns: it lives with the stage.
    bridge = Bridge(every_source(), stages="ingest")
    assert runs(bridge) == {"dedup stage": False, "call-log source": False, "feed lease": True}
    assert "pinecall_bridge_feed_lease_held 0.0" in bridge.metrics.render().decode()


async def test_the_dedup_process_reads_no_feed_and_exports_none_of_its_series() -> None:
    bridge = Bridge(every_source(), stages="dedup")
    assert runs(bridge) == {"dedup stage": True, "call-log source": True, "feed lease": False}
    text = bridge.metrics.render().decode()
    assert [name for name in FEED_SERIES if name in text] == []


async def test_the_dedup_stages_batches_are_bounded_by_the_output_topics_not_the_ingest_one() -> (
    None
):
    bridge = Bridge(every_source(), stages="dedup")
    assert bridge.dedup is not None
    assert bridge.dedup._out._writes == set(bridge.router.topics())
    assert bridge.settings.topics.ingest not in bridge.dedup._out._writes


WATCHED = {
    "BRIDGE_WEBHOOK__SECRETS": Path("/run/secrets/BRIDGE_WEBHOOK__SECRETS"),
    "BRIDGE_PINECALL__API_KEY": Path("/run/secrets/BRIDGE_PINECALL__API_KEY"),
}


def watched(settings: Settings, stages: Stages = "both") -> set[str]:
    """The secrets a process reads again from their files."""
    bridge = Bridge(settings, stages=stages, secret_files=WATCHED)
    return {watch.secret.label for watch in bridge.secret_watches}


def test_each_process_reads_again_the_secret_files_of_what_it_runs() -> None:
    both = {"webhook", "pinecall_api_key"}
    assert watched(every_source()) == both
    assert watched(every_source(), "ingest") == both  # webhooks, and the feed's key
    assert watched(every_source(), "dedup") == {"pinecall_api_key"}  # the call logs' key
    no_source = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    assert watched(no_source) == {"webhook"}  # a key nothing uses
    registering = load_settings(
        webhook={"secrets": ["s"]},
        pinecall={"api_key": "k", "register_webhook": True, "public_url": "https://b.example"},
    )
    assert watched(registering) == both


def test_a_reloaded_api_key_is_swapped_into_the_section_every_source_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "BRIDGE_PINECALL__API_KEY"
    path.write_text("old-key\n")
    settings = every_source()
    api = settings.pinecall
    bridge = Bridge(settings, secret_files={"BRIDGE_PINECALL__API_KEY": path})
    [watch] = bridge.secret_watches
    watch.check()  # what the start read
    path.write_text("new-key\n")
    watch.check()
    watch.check()  # read the same by two polls in a row: settled, taken
    assert bridge.settings.pinecall is api  # the sources hold this one
    assert api.api_key is not None
    assert api.api_key.get_secret_value() == "new-key"


def test_only_a_process_serving_the_port_exports_its_readiness() -> None:
    settings = load_settings(webhook={"secrets": ["s"]})
    for gauge in ("pinecall_bridge_ready ", "pinecall_bridge_listening "):
        exported = {
            stages: gauge in Bridge(settings, stages=stages).metrics.render().decode()
            for stages in get_args(Stages)
        }
        assert exported == {"both": True, "ingest": True, "dedup": False}, gauge


async def stays_closed_while_started(stages: Stages) -> bool:
    """Whether the process listens on its HTTP port between start() and stop()."""
    port = free_port()
    bridge = Bridge(every_source(port), stages=stages)
    await bridge.start()
    try:
        await asyncio.sleep(0.05)
        return not listening(port) and bridge.port is None
    finally:
        await bridge.stop()


async def test_the_dedup_process_serves_no_port_the_others_do() -> None:
    assert await stays_closed_while_started("dedup")
    assert not await stays_closed_while_started("ingest")
    assert not await stays_closed_while_started("both")


async def test_a_process_serving_the_port_says_which_http_parser_it_runs(
    both_http_parsers: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pure-Python parser (AIOHTTP_NO_EXTENSIONS, or a wheel whose C extension cannot load)
    # is slower and refuses malformed requests differently: said at start, never assumed away.
    monkeypatch.delenv("AIOHTTP_NO_EXTENSIONS", raising=False)
    caplog.set_level(logging.INFO, logger="bridge.service")
    bridge = Bridge(every_source(free_port()), stages="ingest")
    await bridge.start()
    await bridge.stop()
    [listening] = [r for r in caplog.records if r.getMessage() == "listening"]
    assert listening.http_parser == both_http_parsers  # type: ignore[attr-defined]
    warned = [
        (r.http_parser, r.reason)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.levelno == logging.WARNING and "C HTTP parser is not in use" in r.getMessage()
    ]
    expected = {"llhttp": [], "python": [("python", "aiohttp did not take its C extension")]}
    assert warned == expected[both_http_parsers]


class StageStand:
    """The dedup stage's place: notes the drain deadline its stop is given."""

    alive = True

    def __init__(self) -> None:
        self.drain_by: float | None = None

    async def start(self) -> None:
        return None

    async def stop(self, drain_by: float | None = None) -> None:
        self.drain_by = drain_by


async def started_with_a_stand(
    settings: Settings | None = None, stages: Stages = "both"
) -> tuple[Bridge, StageStand]:
    """A started bridge (every_source's by default: a grace period of 2 s), its stage a stand."""
    bridge = Bridge(settings or every_source(free_port()), stages=stages)
    stage = StageStand()
    bridge.dedup = stage  # type: ignore[assignment]
    await bridge.start()
    return bridge, stage


async def test_the_dedup_stage_drains_until_the_flushs_share_of_the_grace_period() -> None:
    bridge, stage = await started_with_a_stand()
    loop = asyncio.get_running_loop()
    stopping = loop.time()
    await bridge.stop()
    stopped = loop.time()
    assert stage.drain_by is not None
    # The last quarter of the grace period stays for cut Kafka client stops (0.5 s), the last
    # quarter of the rest for the commit and the leave (0.375 s): 1.125 s after the stop began.
    assert stopping <= stage.drain_by - 1.125 <= stopped


async def test_the_stop_says_what_thinned_log_lines_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A flood that ended before the next line of its kind: its count is said at the stop.
    bridge, _ = await started_with_a_stand()
    caplog.set_level(logging.WARNING, logger="bridge.pipeline")
    for _ in range(3):
        pipeline.flood.warning("Kafka refused a record")
    await bridge.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.pipeline"]
    assert lines[0] == "Kafka refused a record"
    assert lines[1].startswith("Kafka refused a record: 2 more like this")


async def test_a_deadline_sooner_than_the_grace_period_bounds_the_stop() -> None:
    """A dedup process signalled after the pod's webhook workers keeps to the pod's deadline."""
    bridge, stage = await started_with_a_stand()
    loop = asyncio.get_running_loop()
    by = loop.time() + 1.0
    await bridge.stop(by=by)
    # A quarter of what is left (1 s) stays for cut client stops, a quarter of the rest for the
    # commit and the leave.
    assert stage.drain_by == pytest.approx(by - 0.25 - 0.1875, abs=0.01)


class LeavingStand(StageStand):
    """A stage whose stop takes a few turns of the loop (its commit and leave), then says so."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    async def stop(self, drain_by: float | None = None) -> None:
        await super().stop(drain_by)
        for _ in range(3):
            await asyncio.sleep(0)  # where the grace period is over, its timeout cancels here
        self.events.append("stage left its group")


async def test_a_flush_that_cannot_finish_leaves_the_stage_time_to_stop() -> None:
    events: list[str] = []
    bridge = Bridge(every_source(free_port()))
    stage = LeavingStand(events)
    bridge.dedup = stage  # type: ignore[assignment]
    await bridge.start()

    async def flush_forever() -> None:  # a partition without a leader: batches never expire
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("flush given up")
            raise

    bridge.sink.stop = flush_forever  # type: ignore[method-assign]
    await asyncio.wait_for(bridge.stop(), 30)  # only a guard against a hang
    assert stage.drain_by is not None, "the stage was never stopped: no commit, no leave"
    # The flush is given up while the grace period still has room for the stage's stop.
    assert events == ["flush given up", "stage left its group"]


async def test_a_failed_producer_stop_still_stops_the_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = Bridge(every_source(free_port()))
    stage = LeavingStand([])
    bridge.dedup = stage  # type: ignore[assignment]
    await bridge.start()

    async def stop_fails() -> None:
        raise KafkaConnectionError("the flush's connection broke")

    bridge.sink.stop = stop_fails  # type: ignore[method-assign]
    await asyncio.wait_for(bridge.stop(), 30)  # only a guard against a hang
    assert stage.drain_by is not None, "the stage was never stopped: no commit, no leave"
    assert stage.events == ["stage left its group"]
    assert "the ingest producer's stop failed" in caplog.messages


class FeedStand:
    """A feed whose stop ends `early` s before its deadline: Kafka took its last batch just then.

    A negative `early` overruns the deadline and, as the real feed's wait for its publisher does,
    absorbs the cancellation that the stop's phase timeout sends meanwhile.
    """

    def __init__(self, early: float) -> None:
        self.early = early
        self.disconnected_at: float | None = 1_700_000_000.0  # its last read, for the lease note

    async def stop(self, deadline: float, *, lease_held: bool = True) -> None:
        until_then = deadline - self.early - asyncio.get_running_loop().time()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(max(until_then, 0.0))


class LeaseStand:
    """A lease whose leave (a LeaveGroup, the consumer's stop) takes `leave` s; None: never ends."""

    def __init__(self, leave: float | None) -> None:
        self.leave = leave
        self.events: list[str] = []
        self.read_until: float | None = None
        self.by: float | None = None

    async def start(self) -> None:
        return None

    async def stop(self, read_until: float | None = None, by: float | None = None) -> None:
        self.read_until, self.by = read_until, by
        try:
            if self.leave is None:  # Kafka down: the LeaveGroup is never answered
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(self.leave)
        except asyncio.CancelledError:
            self.events.append("leave cut")
            raise
        self.events.append("left")


async def stopped_with(feed: FeedStand, lease: LeaseStand) -> StageStand:
    """A bridge whose feed and lease are `feed` and `lease`, started then stopped (grace 2 s)."""
    bridge = Bridge(every_source(free_port()))
    stage = StageStand()
    bridge.dedup = stage  # type: ignore[assignment]
    bridge.lease = lease  # type: ignore[assignment]
    await bridge.start()
    bridge.feed = feed  # type: ignore[assignment]
    await asyncio.wait_for(bridge.stop(), 30)  # only a guard against a hang
    return stage


async def test_a_feed_using_its_whole_share_of_the_stop_still_leaves_the_lease_time_to_leave() -> (
    None
):
    # Cut, the leave hands the lease on only after a session timeout: nobody reads the feed.
    lease = LeaseStand(leave=0.2)
    await stopped_with(FeedStand(early=0.05), lease)
    assert lease.events == ["left"]


async def test_the_lease_is_told_when_the_stopped_feed_last_read() -> None:
    # The next holder measures the handover gap from it.
    lease, feed = LeaseStand(leave=0.0), FeedStand(early=0.5)
    await stopped_with(feed, lease)
    assert lease.read_until == feed.disconnected_at
    # And the stop's bound, within which its note must leave the leave time.
    assert lease.by is not None


async def test_a_leave_kafka_never_answers_is_cut_within_the_stop() -> None:
    # The feed's stop overran its deadline and absorbed the phase's timeout: the leave has a
    # bound of its own, or the stop waits for ever.
    lease = LeaseStand(leave=None)
    stage = await stopped_with(FeedStand(early=-0.1), lease)
    assert lease.events == ["leave cut"]
    assert stage.drain_by is not None, "the stage was never stopped: no commit, no leave"


async def test_a_process_serving_no_port_skips_the_drain_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The delay lets load balancers stop sending to the port: the dedup process has none."""
    delay = 1.5
    settings = every_source(free_port()).model_copy(
        update={"shutdown": ShutdownSettings(grace_seconds=4, drain_delay_seconds=delay)}
    )
    real_sleep = asyncio.sleep
    stopping: asyncio.Task[None] | None = None
    slept: list[float] = []  # by the stop itself, not by the tasks it waits for

    async def noting_sleep(seconds: float, result: Any = None) -> Any:
        if stopping is not None and asyncio.current_task() is stopping:
            slept.append(seconds)
        return await real_sleep(seconds, result)

    monkeypatch.setattr(asyncio, "sleep", noting_sleep)
    drained: dict[Stages, list[float]] = {}
    for stages in get_args(Stages):
        bridge, _ = await started_with_a_stand(settings, stages)
        slept.clear()
        stopping = asyncio.create_task(bridge.stop())
        await stopping
        drained[stages] = [seconds for seconds in slept if seconds > 0]
    # Counted from the signal: the tasks the stop closed first took a little of it.
    near = pytest.approx(delay, abs=0.1)
    assert drained == {"both": [near], "ingest": [near], "dedup": []}


async def test_a_drain_delay_longer_than_the_first_phase_still_closes_the_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cut at the first phase's end, the delay closed nothing: the port served until the exit."""
    port = free_port()
    settings = every_source(port).model_copy(
        update={"shutdown": ShutdownSettings(grace_seconds=2, drain_delay_seconds=1.5)}
    )
    bridge, _ = await started_with_a_stand(settings)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    await bridge.stop()
    assert not listening(port), "the webhook port still served after the stop"
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in said if m.startswith("drain delay cut short")], said
    assert "requests still in flight when the grace period ran short" not in said


async def test_a_drain_delay_start_up_accepted_is_not_cut_by_a_stop_slow_to_close_its_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cut against the time left after the tasks closed, a delay at the limit was warned of at
    every stop; it is counted from the signal, so the inputs still keep their closing time."""
    grace = 4.0
    limit = drain_delay_seconds(1e9, first_phase_seconds(grace))
    shutdown = ShutdownSettings(grace_seconds=grace, drain_delay_seconds=limit)
    assert drain_delay_warnings(shutdown) == []
    bridge, _ = await started_with_a_stand(
        every_source(free_port()).model_copy(update={"shutdown": shutdown})
    )
    loop = asyncio.get_running_loop()

    async def slow_to_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.2)  # uncancelled: `cancel_and_wait` waits for it

    assert bridge._loop_lag is not None
    bridge._loop_lag.cancel()
    bridge._loop_lag = asyncio.create_task(slow_to_cancel())
    await asyncio.sleep(0)
    closed_at: list[float] = []
    stop_http = bridge._stop_http

    async def noting_stop_http() -> None:
        closed_at.append(loop.time())
        await stop_http()

    bridge._stop_http = noting_stop_http  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="bridge.service")
    stopping = loop.time()
    await bridge.stop()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if m.startswith("drain delay cut short")], said
    # The listener closed once the delay from the signal was over, not 0.2 s later: the time
    # kept to close the inputs (the rest of the phase) is untouched.
    assert stopping + limit <= closed_at[0] <= stopping + limit + 0.15


def config_check_logs(
    configs: dict[str, dict[str, str]] | TopicConfigs | None,
    caplog: pytest.LogCaptureFixture,
    fresh: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    bridge = Bridge(load_settings(webhook={"secrets": ["s"]}))
    caplog.set_level(logging.WARNING, logger="bridge.service")
    if isinstance(configs, dict):
        configs = TopicConfigs(configs)
    ingest = bridge.settings.topics.ingest
    names = [ingest, *(name for name in configs.found if name != ingest)] if configs else [ingest]
    bridge._check_configs(names, configs, set(fresh))
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_unreadable_configs_are_said_to_be_unchecked_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = load_settings(webhook={"secrets": ["s"]}).topics.ingest
    assert config_check_logs(None, caplog) == [
        ("WARNING", "could not read the topics' configs to check them")
    ]
    unread = "could not read a topic's configs to check them: "
    other = {"pinecall.other": {"min.insync.replicas": "1"}}
    for errors, fresh, said in [
        ({ingest: 3}, {ingest}, ("WARNING", why_unread(3, fresh=True))),  # created, not visible yet
        ({ingest: 3}, set(), ("ERROR", why_unread(3, fresh=False))),
        ({ingest: 29}, {ingest}, ("ERROR", why_unread(29, fresh=True))),  # an ACL
        ({}, set(), ("ERROR", why_unread(None, fresh=False))),
    ]:
        caplog.clear()
        logs = config_check_logs(TopicConfigs(other, errors), caplog, frozenset(fresh))
        level, why = said
        # The ingest topic unknown also says what it does to webhooks: the start of the line.
        assert [(lvl, message[: len(unread + why)]) for lvl, message in logs] == [
            (level, unread + why)
        ]


def test_the_start_check_shows_a_topic_it_cannot_read_in_the_problem_gauge() -> None:
    # With BRIDGE_DEDUP__TOPIC_CHECK_SECONDS=0 there is no later check to show it.
    bridge = Bridge(load_settings(webhook={"secrets": ["s"]}))
    ingest, events = bridge.settings.topics.ingest, bridge.settings.topics.events
    short = {ingest: {"retention.ms": "60000"}}
    gauge = bridge.metrics.registry
    bridge._check_configs([ingest, events], TopicConfigs(short, {events: 3}), set())
    assert sample(gauge, "pinecall_bridge_topic_problem", topic=events, problem="missing") == 1
    assert sample(gauge, "pinecall_bridge_topic_problem", topic=ingest, problem="retention_ms") == 1
    # A topic the bridge has just created is not missing: its metadata is late to reach a broker.
    late = Bridge(load_settings(webhook={"secrets": ["s"]}))
    late._check_configs([ingest, events], TopicConfigs(short, {events: 3}), {events})
    missing = sample(late.metrics, "pinecall_bridge_topic_problem", topic=events, problem="missing")
    assert missing == 0


def test_each_problem_of_the_ingest_topic_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = load_settings(webhook={"secrets": ["s"]}).topics.ingest
    logs = config_check_logs({ingest: {"message.timestamp.type": "CreateTime"}}, caplog)
    assert [(level, message.split(" ")[3]) for level, message in logs] == [
        ("ERROR", "message.timestamp.type")
    ]


def test_a_topic_acknowledging_with_its_leader_alone_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = Bridge(load_settings(webhook={"secrets": ["s"]}))
    caplog.set_level(logging.WARNING, logger="bridge.service")
    configs = {name: {"min.insync.replicas": "1"} for name in ("a", "b", "c")}
    configs["d"] = {"min.insync.replicas": "2"}
    factors = {"a": 3, "b": 1, "c": 2, "d": 3}
    layouts = TopicReads({name: Layout(factor, 1) for name, factor in factors.items()})
    bridge._say_topic_problems(bridge._check_durability(configs, layouts, set()), missing={})
    told = [
        (r.levelname, r.__dict__["topic"], r.__dict__["replication_factor"]) for r in caplog.records
    ]
    assert told == [("WARNING", "a", 3)]  # 1 of 2 leaves a broker free to restart


class FakePart:
    """A part whose start fails until told otherwise; records the order of successful starts."""

    def __init__(self, name: str, started: list[str], refuse: bool = False) -> None:
        self.name = name
        self.started = started
        self.refuse = refuse
        self.attempts = 0

    async def start(self) -> None:
        self.attempts += 1
        if self.refuse:
            raise RuntimeError(f"{self.name} refused (an ACL, say)")
        self.started.append(self.name)


async def test_a_part_that_cannot_start_holds_up_no_other() -> None:
    # A dedup stage refused its transactional id must not keep the feed lease from starting.
    bridge = Bridge(every_source())
    started: list[str] = []
    stage = FakePart("dedup_stage", started, refuse=True)
    bridge.calllog = FakePart("call_log", started)  # type: ignore[assignment]
    bridge.dedup = stage  # type: ignore[assignment]
    bridge.hanging = FakePart("hanging_watch", started)  # type: ignore[assignment]
    bridge.lease = FakePart("feed_lease", started)  # type: ignore[assignment]
    starting = asyncio.create_task(bridge._start_parts())
    await until(lambda: stage.attempts >= 2)
    assert sorted(started) == ["call_log", "feed_lease", "hanging_watch"]
    assert not starting.done()
    stage.refuse = False
    await asyncio.wait_for(starting, 10)
    # The call log still starts before the stage: ready for its first assignment.
    assert started.index("call_log") < started.index("dedup_stage")


async def test_a_dedup_process_is_ready_once_its_stage_runs_whatever_else_cannot_start() -> None:
    bridge = Bridge(every_source(), stages="dedup")
    started: list[str] = []
    watch = FakePart("hanging_watch", started, refuse=True)
    bridge.calllog = FakePart("call_log", started)  # type: ignore[assignment]
    bridge.dedup = FakePart("dedup_stage", started)  # type: ignore[assignment]
    bridge.hanging = watch  # type: ignore[assignment]
    starting = asyncio.create_task(bridge._start_parts())
    await until(lambda: watch.attempts >= 2)
    assert started == ["call_log", "dedup_stage"]
    assert bridge.readiness.started
    watch.refuse = False
    await asyncio.wait_for(starting, 10)


async def test_a_retry_logs_the_wait_it_takes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It logged the backoff's cap while the full jitter drawn after the line slept less, and a
    # `part` of null while waiting for Kafka.
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def noting_sleep(seconds: float, result: Any = None) -> Any:
        waits.append(seconds)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", noting_sleep)
    monkeypatch.setattr("bridge.service.random.uniform", lambda low, high: low + (high - low) / 3)
    failures = [RuntimeError("unreachable"), RuntimeError("unreachable")]

    async def attempt() -> None:
        if failures:
            raise failures.pop()

    bridge = Bridge(every_source())
    with caplog.at_level(logging.WARNING, logger="bridge.service"):
        await bridge._retry("Kafka not ready yet", attempt)
        failures.append(RuntimeError("refused"))
        await bridge._retry("a part could not start", attempt, part="dedup_stage")
    logged = [r.__dict__ for r in caplog.records]
    assert [r["retry_in_s"] for r in logged] == [round(w, 1) for w in waits]
    assert waits[:2] == [0.5 / 3, 1.0 / 3]
    assert ["part" in r for r in logged] == [False, False, True]
    assert logged[2]["part"] == "dedup_stage"


async def test_the_wait_for_a_kafka_that_does_not_answer_is_logged_before_it_times_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A port that is no Kafka listener answers nothing: the first line came only after
    # BRIDGE_KAFKA__REQUEST_TIMEOUT_MS (30 s), with nothing logged since `listening`.
    bridge = Bridge(every_source())
    never = asyncio.Event()

    async def unanswered() -> None:
        await never.wait()

    monkeypatch.setattr(bridge, "_connect_ingest", unanswered)
    with caplog.at_level(logging.INFO, logger="bridge.service"):
        connecting = asyncio.create_task(bridge._connect())
        await until(lambda: bool(caplog.records))
        connecting.cancel()
    [record] = caplog.records
    assert record.getMessage() == "connecting to Kafka"
    assert (
        record.__dict__["bootstrap_servers"],
        record.__dict__["security_protocol"],
        record.__dict__["request_timeout_ms"],
    ) == (refusing_address(), "PLAINTEXT", 30_000)


async def test_cannot_listen_names_the_host_and_port(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = Bridge(every_source(port))
        try:
            with caplog.at_level(logging.ERROR, logger="bridge.service"), pytest.raises(SystemExit):
                await run_until_stopped(bridge)
        finally:
            await bridge.stop()
    [record] = [r for r in caplog.records if r.getMessage().startswith("cannot listen")]
    assert (record.__dict__["host"], record.__dict__["port"]) == ("127.0.0.1", port)
    assert "BRIDGE_HTTP__HOST" in record.getMessage()


@pytest.mark.usefixtures("as_pid_1")
async def test_a_stop_signal_held_through_the_start_up_of_pid_1_starts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Started anyway, it opened the listener and connected to Kafka only to stop, serving out
    # the drain delay for a pod already deleted (the workers' supervisor spawns none).
    bridge = Bridge(every_source())
    hold_until_handled()
    signal.raise_signal(signal.SIGTERM)
    try:
        with caplog.at_level(logging.INFO, logger="bridge.service"):
            async with asyncio.timeout(5):
                await run_until_stopped(bridge)
    finally:
        if bridge.port is not None:
            await bridge.stop()
    assert bridge.port is None
    assert [r.getMessage() for r in caplog.records] == ["stopped"]
    assert caplog.records[0].__dict__["signal"] == "SIGTERM"


async def test_a_restarted_worker_that_cannot_bind_once_connected_exits_as_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Bound only once Kafka connected (listen_when_ready), a failed bind crashed the
    # kafka-connect task: Kafka connected again and again, a traceback each, until it escalated.
    connects: list[None] = []

    async def connected() -> None:
        connects.append(None)

    with socket.socket() as taken:  # no SO_REUSEPORT: the worker's bind is refused
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = Bridge(every_source(port), reuse_port=True, listen_when_ready=True)
        monkeypatch.setattr(bridge, "_connect_ingest", connected)
        try:
            with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exited:
                # Not wait_for: SystemExit raised in its task would not reach this test.
                async with asyncio.timeout(5):
                    await run_until_stopped(bridge)
        finally:
            await bridge.stop()
    assert exited.value.code == 1  # as a failed first bind (README: Several worker processes)
    assert connects == [None]
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage().startswith("cannot listen")
    assert (record.__dict__["host"], record.__dict__["port"]) == ("127.0.0.1", port)
    assert "address already in use" in record.__dict__["error"].lower()
    assert not bridge.readiness.listening


@pytest.mark.parametrize(("reuse_port", "listening_after"), [(True, False), (False, True)])
async def test_a_pod_worker_that_closed_its_port_as_it_stops_says_it_no_longer_listens(
    reuse_port: bool, listening_after: bool
) -> None:
    # The pod counts a worker answering `stopping` as holding its share of the port: one stopping
    # on its own (a task that kept crashing, a kill) kept the pod unready, its siblings serving,
    # for its whole flush and drain. A single process's stop stays `stopping` throughout.
    port = free_port()
    bridge = Bridge(every_source(port), reuse_port=reuse_port)
    await bridge.start()
    flushing, go_on = asyncio.Event(), asyncio.Event()

    async def held_flush() -> None:
        flushing.set()
        await go_on.wait()

    bridge.sink.stop = held_flush  # type: ignore[method-assign]
    stopping = asyncio.create_task(bridge.stop())
    try:
        await asyncio.wait_for(flushing.wait(), 10)
        assert not listening(port)
        assert bridge.readiness.listening is listening_after
    finally:
        go_on.set()
        await stopping


async def test_a_pod_worker_keeps_its_port_and_says_so_through_the_drain_delay() -> None:
    # `not_listening` in the delay, the pod would excuse it (ready on its siblings, or, all of
    # them stopping, unready for the wrong reason) while it still takes its share of the port.
    port = free_port()
    shutdown = ShutdownSettings(grace_seconds=4, drain_delay_seconds=1.0)
    bridge = Bridge(every_source(port).model_copy(update={"shutdown": shutdown}), reuse_port=True)
    await bridge.start()
    stopping = asyncio.create_task(bridge.stop())
    await asyncio.sleep(0.5)
    assert listening(port)
    assert bridge.readiness.listening
    assert not bridge.readiness.ready()
    await stopping
    assert not bridge.readiness.listening


async def test_a_webhook_port_that_cannot_listen_leaves_no_server_behind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bridge = Bridge(every_source(taken.getsockname()[1]))
        cleaned: list[web.Application] = []

        async def cleanup(app: web.Application) -> None:
            cleaned.append(app)

        bridge.app.on_cleanup.append(cleanup)
        try:
            with pytest.raises(OSError, match=r"(?i)address already in use"):
                await bridge.start()
        finally:
            await bridge.stop()
    assert cleaned == [bridge.app]


@pytest.mark.usefixtures("fake_admin")
async def test_a_topic_whose_replication_factor_is_not_read_is_said_to_be_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # It used to be skipped without a word: its durability went unchecked unknown to anyone.
    bridge = Bridge(load_settings(webhook={"secrets": ["s"]}))
    caplog.set_level(logging.WARNING, logger="bridge.service")
    FakeAdmin.late, FakeAdmin.misses, FakeAdmin.refused = {"gone"}, 10**9, {"locked"}
    names = ["read", "gone", "locked", "no-configs"]
    configs = {name: {"min.insync.replicas": "1"} for name in names[:3]}
    factors = await bridge._topic_layouts(names, set())
    assert factors is not None
    bridge._check_durability(configs, factors, set())
    told = [(r.levelname, r.__dict__["topic"], r.getMessage()) for r in caplog.records]
    unread = "could not read a topic's replication factor to check its durability: "
    # "no-configs" was said unchecked by the configs' check already: not twice.
    assert told == [
        ("WARNING", "gone", unread + why_unread(3, fresh=False)),
        ("WARNING", "locked", unread + why_unread(29, fresh=False, right="Describe")),
    ]


@pytest.mark.usefixtures("fake_admin")
async def test_the_topic_check_while_running_hands_the_ingest_min_insync_to_readiness() -> None:
    # The ingest topic made again with another min.insync.replicas: readiness kept the start's.
    settings = load_settings(webhook={"secrets": ["s"]}, dedup={"topic_check_seconds": 0.1})
    bridge = Bridge(settings)
    bridge.sink.watch_writes(settings.topics.ingest, 1)
    FakeAdmin.values = {"min.insync.replicas": "2"}
    watch = asyncio.create_task(bridge._watch_topics())
    try:
        await until(lambda: bridge.sink._min_insync == 2)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def healthz_statuses(port: int) -> dict[str, int | str]:
    """/healthz's status over IPv4 and IPv6 loopback, or the connection's error."""
    statuses: dict[str, int | str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for address in ("127.0.0.1", "[::1]"):
            try:
                async with session.get(f"http://{address}:{port}/healthz") as response:
                    statuses[address] = response.status
            except aiohttp.ClientConnectionError as exc:
                statuses[address] = type(exc).__name__
    return statuses


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize("workers", [1, 2])
async def test_listening_on_the_ipv6_any_address_takes_ipv4_too(workers: int) -> None:
    # `::` on an IPv6 or dual-stack cluster: the kubelet's probes and the Service may come over
    # either family. Two workers: SO_REUSEPORT sockets sharing the port, as in a pod.
    port = free_port()
    bridges = [
        Bridge(every_source(port, host="::"), reuse_port=workers > 1) for _ in range(workers)
    ]
    try:
        for bridge in bridges:
            await bridge.start()
        assert await healthz_statuses(port) == {"127.0.0.1": 200, "[::1]": 200}
    finally:
        for bridge in bridges:
            await bridge.stop()


@pytest.mark.parametrize(
    ("limit", "level"),
    [
        (MemoryLimit(2 * 1024**3, "memory.max"), "WARNING"),
        (MemoryLimit(4 * 1024**3, "memory.max"), "INFO"),
        (MemoryLimit(None), "INFO"),
    ],
)
def test_the_start_compares_the_topic_partitions_worst_window_with_the_memory_limit(
    caplog: pytest.LogCaptureFixture, limit: MemoryLimit, level: str
) -> None:
    bridge = Bridge(every_source(), pod_processes=2)
    with caplog.at_level(logging.INFO, logger="bridge.service"):
        bridge._check_memory(12, limit)
    [record] = caplog.records
    assert record.levelname == level
    assert (record.__dict__["partitions"], record.__dict__["needed_bytes"]) == (
        12,
        # The windows, the restores a takeover runs at once (4), and two processes' reserves.
        12 * 1_000_000 * 250 + 4 * 4 * 1024**2 + 2 * 256 * 1024**2,
    )
    assert ("lower BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION" in record.getMessage()) == (
        level == "WARNING"
    )


def test_an_unreadable_memory_limit_is_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.service"):
        Bridge(every_source())._check_memory(12, MemoryLimit(None, "memory.max", "junk"))
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert record.__dict__["error"] == "junk"


@pytest.mark.parametrize(
    ("stages", "memory_check", "checks"),
    [("both", True, [12, 24]), ("ingest", True, []), ("both", False, [])],
)
def test_the_memory_limit_is_compared_once_per_partition_count_where_a_window_is(
    monkeypatch: pytest.MonkeyPatch, stages: Stages, memory_check: bool, checks: list[int]
) -> None:
    bridge = Bridge(every_source(), stages=stages, memory_check=memory_check)
    counts = iter([0, 12, 12, 24])
    monkeypatch.setattr(bridge.sink, "partition_count", lambda _topic: next(counts))
    monkeypatch.setattr("bridge.service.read_limit", lambda: MemoryLimit(None))
    seen: list[int] = []
    monkeypatch.setattr(bridge, "_check_memory", lambda count, _limit: seen.append(count))
    for _ in range(4):
        bridge._watch_ingest_topic()
    assert seen == checks


def test_an_output_topics_partition_count_changed_between_checks_is_counted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = Bridge(every_source())
    topics = bridge.settings.topics
    changed = "pinecall_bridge_topic_partitions_changed_total"

    def check(events: int, ingest: int) -> None:
        bridge._watch_output_partitions(
            TopicReads({topics.ingest: Layout(1, ingest), topics.events: Layout(1, events)})
        )

    with caplog.at_level(logging.WARNING, logger="bridge.service"):
        check(3, 3)  # the first count read: nothing to compare it with
        check(3, 3)
        check(1, 6)  # made again with 1; the ingest topic's is the metadata probe's to follow
        check(1, 6)
    said = [r for r in caplog.records if "an output topic's partition count" in r.getMessage()]
    assert [(r.levelno, r.__dict__["topic"]) for r in said] == [(logging.ERROR, topics.events)]
    facts = {k: said[0].__dict__[k] for k in ("partitions", "partitions_before")}
    assert facts == {"partitions": 1, "partitions_before": 3}
    assert sample(bridge.metrics, changed, topic=topics.events) == 1
    assert sample(bridge.metrics, changed, topic=topics.ingest) == 0
    assert [r for r in caplog.records if r is not said[0]] == []


@pytest.mark.parametrize(
    ("stages", "processes", "partitions", "warned"),
    [("both", 4, 3, True), ("both", 4, 4, False), ("dedup", 4, 1, False)],
)
def test_more_dedup_workers_than_ingest_partitions_are_warned_of_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stages: Stages,
    processes: int,
    partitions: int,
    warned: bool,
) -> None:
    bridge = Bridge(every_source(), stages=stages, pod_processes=processes)
    monkeypatch.setattr(bridge.sink, "partition_count", lambda _topic: partitions)
    monkeypatch.setattr(bridge, "_check_memory", lambda _count, _limit: None)
    with caplog.at_level(logging.WARNING, logger="bridge.service"):
        for _ in range(3):
            bridge._watch_ingest_topic()
    idle = [r for r in caplog.records if "own none" in r.getMessage()]
    assert len(idle) == (1 if warned else 0)
    if warned:
        assert idle[0].__dict__["dedup_workers"] == processes


@pytest.mark.parametrize(
    ("open_files", "in_force"),
    [
        (None, 4096),  # unlimited
        (1_048_576, 4096),
        # every_source follows call logs: 500 followers and 4096 connections do not both fit,
        # so each gets half of what is left after the 256 and the refusals.
        (1024, (1024 - connlimit.RESERVED_FDS - connlimit.REFUSING_MAX) // 2),
    ],
)
async def test_the_connection_cap_in_force_fits_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    open_files: int | None,
    in_force: int,
) -> None:
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: open_files)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    bridge, _ = await started_with_a_stand()
    try:
        cap = sample(bridge.metrics, "pinecall_bridge_http_connections_max", listener="webhook")
        assert cap == in_force
        lowered = [r for r in caplog.records if "MAX_CONNECTIONS lowered" in r.getMessage()]
        assert len(lowered) == (in_force < 4096)
    finally:
        await bridge.stop()


async def test_the_call_log_followers_in_force_fit_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 500 followers under a limit of 600 failed with EMFILE, a hot retry loop taking every
    # descriptor: the admin port's, Kafka's new connections' (measured: 4024 failures in 10 s).
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: 600)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    bridge, _ = await started_with_a_stand()
    try:
        calls = (600 - connlimit.RESERVED_FDS - connlimit.REFUSING_MAX) // 2
        assert bridge.calllog is not None
        assert bridge.calllog.max_calls == calls
        cap = sample(bridge.metrics, "pinecall_bridge_http_connections_max", listener="webhook")
        assert cap == calls  # the other half: the followers no longer leave the port one
        lowered = [r for r in caplog.records if "MAX_CALLS lowered" in r.getMessage()]
        assert [r.__dict__["max_calls"] for r in lowered] == [calls]
    finally:
        await bridge.stop()


@pytest.mark.parametrize(("stages", "in_force"), [("both", 350), ("ingest", 4096)])
async def test_gap_pages_and_restores_set_high_are_kept_out_of_the_connection_cap(
    monkeypatch: pytest.MonkeyPatch, stages: Stages, in_force: int
) -> None:
    # 1,000 gap pages in flight and 1,000 restores at once (each consumer connecting up to
    # every broker) take far more than the 256 kept for the rest of the process: the cap fitted
    # as before left Kafka and the sources failing with EMFILE at full load.
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: 5000)
    every = every_source(free_port())
    settings = every.model_copy(
        update={
            "sse": every.sse.model_copy(update={"max_gap_pages_in_flight": 1000}),
            "dedup": every.dedup.model_copy(update={"restore_concurrency": 1000}),
        }
    )
    # Both stages: 5000 less the 256 and 64 refusals, 992 pages past the 8 kept and 996 restores
    # past the 4 kept, 3 connections each (one bootstrap server: three at least), 700 left,
    # half for the followers and half for the port. Ingest only: neither runs here.
    if stages == "both":
        bridge, _ = await started_with_a_stand(settings)
    else:
        bridge = Bridge(settings, stages=stages)
        await bridge.start()
    try:
        cap = sample(bridge.metrics, "pinecall_bridge_http_connections_max", listener="webhook")
        assert cap == in_force
    finally:
        await bridge.stop()


@pytest.mark.parametrize(
    ("stages", "calls", "cap"),
    [
        # 600 less the 256, the admin port's 64 and its 64 refusals, and the webhook port's 64
        # refusals: 152, half for the followers and half for the webhook port.
        ("both", 76, 76),
        # No followers run beside the ingest stage alone: 500 kept for them left a cap of 1.
        ("ingest", None, 600 - 256 - 128 - 64),
        # No port at all: no admin port's share, no webhook connections nor refusals to leave.
        ("dedup", 600 - 256, None),
    ],
)
async def test_each_process_keeps_descriptors_only_for_what_it_runs(
    monkeypatch: pytest.MonkeyPatch, stages: Stages, calls: int | None, cap: int | None
) -> None:
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: 600)
    every = every_source(free_port())
    settings = every.model_copy(
        update={"http": every.http.model_copy(update={"admin_port": free_port()})}
    )
    bridge = Bridge(settings, stages=stages)
    assert (bridge.calllog.max_calls if bridge.calllog is not None else None) == calls
    if stages == "dedup":
        assert bridge.settings.http.admin_port is not None  # set, but not this process's
        return
    await bridge.start()
    try:
        assert cap == sample(
            bridge.metrics, "pinecall_bridge_http_connections_max", listener="webhook"
        )
    finally:
        await bridge.stop()


async def test_followers_set_past_the_open_files_limit_leave_the_webhook_port_its_cap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 100,000 followers under a limit of 20,000 were fitted first and alone: the webhook port was
    # left one connection, which a balancer's keep-alive connection holds (every other webhook,
    # and the probes on that port, refused 503).
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: 20_000)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    every = every_source(free_port())
    settings = every.model_copy(update={"sse": every.sse.model_copy(update={"max_calls": 100_000})})
    bridge = Bridge(settings, stages="both")
    calls = 20_000 - connlimit.RESERVED_FDS - connlimit.REFUSING_MAX - 4096
    assert bridge.calllog is not None
    assert bridge.calllog.max_calls == calls
    [lowered] = [r for r in caplog.records if "MAX_CALLS lowered" in r.getMessage()]
    assert f"{calls} of 100000 calls followed at once" in lowered.getMessage()
    assert "leaving 4096 webhook connections" in lowered.getMessage()
    assert "raise the container's open-files limit" in lowered.getMessage()
    await bridge.start()
    try:
        cap = sample(bridge.metrics, "pinecall_bridge_http_connections_max", listener="webhook")
        assert cap == 4096
    finally:
        await bridge.stop()


@pytest.mark.parametrize(
    ("stages", "port"),
    [
        ("both", "leaving 1 webhook connections of BRIDGE_HTTP__MAX_CONNECTIONS 4096 "),
        ("dedup", ""),
    ],
)
def test_followers_fitted_under_a_limit_below_the_reserve_name_the_cap_in_force(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stages: Stages, port: str
) -> None:
    # Under 256 open files the reserve alone does not fit: the webhook cap in force is 1, yet
    # the line said "leaving -65 webhook connections" (and named them in a dedup-only process).
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: 256)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    bridge = Bridge(every_source(free_port()), stages=stages)
    assert bridge.calllog is not None
    assert bridge.calllog.max_calls == 1
    [lowered] = [r for r in caplog.records if "MAX_CALLS lowered" in r.getMessage()]
    said = lowered.getMessage()
    assert f"(the rest wait in the queue), {port}under the limit of 256;" in said
    assert lowered.__dict__["webhook_connections"] == (1 if stages == "both" else 0)


@pytest.mark.parametrize(("brokers", "max_calls"), [(1, 500), (3, 500), (6, 268)])
async def test_restores_reserve_a_connection_to_each_broker_the_bootstrap_list_names(
    monkeypatch: pytest.MonkeyPatch, brokers: int, max_calls: int
) -> None:
    # Three a restore were reserved for any cluster: 1,000 restores against six brokers could
    # hold 2,988 descriptors the followers were fitted to use (EMFILE). One name counts three.
    monkeypatch.setattr(connlimit, "open_files_limit", lambda: 6500)
    every = every_source()
    settings = every.model_copy(
        update={
            "kafka": every.kafka.model_copy(
                update={"bootstrap_servers": [f"k{n}:9092" for n in range(brokers)]}
            ),
            "dedup": every.dedup.model_copy(update={"restore_concurrency": 1000}),
        }
    )
    # 6500 less the 256 and 996 restores past the 4 kept, 6 connections each (a dedup-only
    # process serves no port): 268 followers; the 500 set fit otherwise.
    assert Bridge(settings, stages="dedup").max_calls == max_calls


def sasl_password_file(tmp_path: Path) -> tuple[Settings, dict[str, Path]]:
    """Settings authenticating by SASL, their password's secret file ("old") by variable."""
    path = tmp_path / "BRIDGE_KAFKA__SASL_PASSWORD"
    path.write_text("old\n")
    settings = load_settings(
        webhook={"secrets": ["s"]},
        kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "old"},
    )
    return settings, {"BRIDGE_KAFKA__SASL_PASSWORD": path}


def test_a_rotated_kafka_password_with_kafka_unanswered_fails_healthz(tmp_path: Path) -> None:
    """The clients keep the start's password: once Kafka refuses it, only a restart reads the
    rotated file, so /healthz fails; a dedup-only process (no producer probe) is left alone."""
    settings, files = sasl_password_file(tmp_path)
    path = files["BRIDGE_KAFKA__SASL_PASSWORD"]
    bridge = Bridge(settings, secret_files=files)
    dedup_only = Bridge(settings, stages="dedup", secret_files=files)
    for each in (bridge, dedup_only):
        each._started = True  # connected is False: Kafka unanswered
    assert bridge.readiness.alive()  # refused, but a restart would offer the same password
    path.write_text("new\n")
    assert not bridge.readiness.alive()
    assert dedup_only.readiness.alive()
    bridge.sink.connected = True  # the old password still taken: no restart for a rotation
    assert bridge.readiness.alive()


def test_a_rotated_kafka_password_with_kafka_answering_but_unwritable_keeps_healthz(
    tmp_path: Path,
) -> None:
    """The ingest topic below min.insync.replicas (a broker down for maintenance) is unready,
    not unanswered: the start's password is taken, and a restart would not help."""
    settings, files = sasl_password_file(tmp_path)
    path = files["BRIDGE_KAFKA__SASL_PASSWORD"]
    bridge = Bridge(settings, secret_files=files)
    bridge._started = True
    path.write_text("new\n")  # rotated, the old one still valid
    bridge.sink.answering = True  # the probe's metadata answered; connected is False
    assert bridge.readiness.alive()
    bridge.sink.answering = False
    assert not bridge.readiness.alive()


def test_a_refusal_left_by_an_earlier_bridge_asks_no_restart_of_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is the process's: an earlier Bridge's client refused (a test's) leaves it
    set, and a new Bridge whose files rotate while Kafka answers must not take it as its own."""
    settings, files = sasl_password_file(tmp_path)
    path = files["BRIDGE_KAFKA__SASL_PASSWORD"]
    monkeypatch.setattr(connectsetup.AUTHENTICATION, "refused", True)
    bridge = Bridge(settings, secret_files=files)
    bridge._started = True
    path.write_text("new\n")  # rotated, the old one still valid
    bridge.sink.answering = True
    assert bridge.readiness.alive()
    connectsetup.AUTHENTICATION.settled(SaslAuthenticationFailed())  # this Bridge's own refusal
    assert not bridge.readiness.alive()
