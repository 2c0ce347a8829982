"""The call-log source's own tasks: a bug in one is logged, counted and retried, never silent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.config import KafkaSettings, PinecallSettings, SseSettings
from bridge.ingest.progress import PartitionProgress
from bridge.ingest.record import CHANNEL
from bridge.metrics import Metrics
from bridge.normalise.binding import TYPE_HEADER
from bridge.normalise.ids import shown
from bridge.pipeline import Pipeline
from bridge.simulator.calllog import CallLogs
from bridge.sources.calllog import calllist as calllist_module
from bridge.sources.calllog import roster as roster_module
from bridge.sources.calllog import source as source_module
from bridge.sources.calllog.calllist import CallListError, CallListing, CallRow
from bridge.sources.calllog.orgfeed import Notice
from bridge.sources.calllog.roster import Roster, Start
from bridge.sources.calllog.source import SWEEP_ROWS_PER_STEP, CallLogSource, stream_session
from bridge.sources.reconnect import DisconnectReason, ReconnectPolicy
from bridge.supervise import Supervisor
from tests.entries import entry
from tests.metrics import sample, series
from tests.sockets import refusing_address
from tests.unit.sources.backoffs import QUICK_BACKOFF
from tests.unit.sources.calllog.test_roster import calls_in, has_ended, own, unhashable


def sweeps_with(
    monkeypatch: pytest.MonkeyPatch, source: CallLogSource, list_calls: Any
) -> list[str]:
    """`source` reads the call list with `list_calls` and owns every call; the calls announced."""
    announced: list[str] = []
    monkeypatch.setattr(source_module, "list_calls", list_calls)
    monkeypatch.setattr(source, "announce", lambda call, until=None: announced.append(call))
    source.roster = Roster(1, 10)
    return announced


def served_list_source(
    monkeypatch: pytest.MonkeyPatch, lookback: float
) -> tuple[CallLogSource, list[str]]:
    """A source reading the call list `listing_from` serves, looking back `lookback` seconds and
    reading again within 10-50 ms after a failed read; the calls it announces."""
    source = call_log_source(
        Metrics(),
        backoff=QUICK_BACKOFF,
        call_list_lookback_seconds=lookback,
    )
    return source, sweeps_with(monkeypatch, source, calllist_module.list_calls)


async def sweep(source: CallLogSource, within: float = 10) -> None:
    source._schedule_sweep()
    assert source._sweep is not None
    await asyncio.wait_for(source._sweep, within)


async def swept(source: CallLogSource, times: int = 1, within: float = 10) -> None:
    """`times` sweeps of `source`, one after the other, over an HTTP session of its own."""
    async with aiohttp.ClientSession() as session:
        source._session = session
        for _ in range(times):
            await sweep(source, within)


def call_log_source(
    metrics: Metrics, backoff: dict[str, float] | None = None, **sse: float
) -> CallLogSource:
    """A call-log source with `sse` settings; `backoff`'s delays are taken below the floors a
    load enforces, for a test of the re-reads to run fast."""
    return CallLogSource(
        SseSettings(enabled=True, **sse).model_copy(update=backoff or {}),
        PinecallSettings(api_url=f"http://{refusing_address()}", api_key=SecretStr("k")),
        KafkaSettings(),
        "ingest",
        cast(Pipeline, None),
        metrics,
        dedup_ttl_seconds=3_600,
        supervisor=Supervisor(metrics, first_delay=0.001),
    )


def stepping(
    monkeypatch: pytest.MonkeyPatch, step: int, metrics: Metrics | None = None, capacity: int = 10
) -> tuple[CallLogSource, Roster]:
    """A source whose takeovers run `step` calls at a time, and its roster (6 partitions)."""
    monkeypatch.setattr(roster_module, "TAKEOVER_STEP", step)
    monkeypatch.setattr(source_module, "TAKEOVER_STEP", step)
    source = call_log_source(Metrics() if metrics is None else metrics)
    roster = source.roster = Roster(6, capacity)
    return source, roster


def started_not_run(
    monkeypatch: pytest.MonkeyPatch,
    source: CallLogSource,
    at_sweep: Callable[[list[Start]], object] = lambda _: None,
) -> tuple[list[Start], list[object]]:
    """The calls `source` starts, collected not run, and what `at_sweep` makes of them at each
    sweep it schedules (no call list read)."""
    launched: list[Start] = []
    sweeps: list[object] = []
    monkeypatch.setattr(source, "_launch", launched.extend)
    monkeypatch.setattr(source, "_schedule_sweep", lambda: sweeps.append(at_sweep(launched)))
    return launched, sweeps


async def test_a_call_list_read_that_crashes_is_restarted_and_still_announces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = Metrics()
    source = call_log_source(metrics)
    reads = 0

    async def list_calls(*_: Any, **__: Any) -> CallListing:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise KeyError("a bug in reading the list")
        return CallListing([CallRow("CA_1", True, 3, 1.0, None)])

    announced = sweeps_with(monkeypatch, source, list_calls)
    await swept(source, within=5)
    assert announced == ["CA_1"]
    crashes = metrics.registry.get_sample_value(
        "pinecall_bridge_task_crashes_total", {"task": "sse-call-list"}
    )
    assert crashes == 1


def test_the_call_ids_refused_are_counted_from_0_before_any() -> None:
    # PinecallBridgeRejectionRateHigh takes rate() of it, per channel.
    metrics = Metrics()
    call_log_source(metrics)
    samples = series(metrics.render().decode())
    assert (
        samples['pinecall_bridge_events_rejected_total{channel="sse",reason="invalid_call_id"}']
        == 0
    )


@pytest.mark.parametrize(
    "bad", [".", "..", "CA_1/../../v1/sessions", "CA_1\nforged", "x" * 1_048_576]
)
def test_a_call_id_that_would_change_the_calls_url_is_refused_counted_and_logged_once(
    bad: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `..` made `GET {api}/v1/calls/../events`, which the URL's normalisation sends to
    # `GET {api}/v1/events`: the org feed, read as if it were a call's log.
    metrics = Metrics()
    source = call_log_source(metrics)
    source.roster = Roster(1, 10)
    launched, _ = started_not_run(monkeypatch, source)
    progress = PartitionProgress()
    for call in (bad, "CA_1"):
        progress.observe(f"{call}:3", [(CHANNEL, b"sse")], 100.0)
    source.partition_owned(0, progress)  # the takeover's live calls
    source.announce(bad)  # the org feed, the call list
    source.announce("CA_2")
    assert launched == [Start("CA_1", 3), Start("CA_2", 0)]
    refused = sample(
        metrics, "pinecall_bridge_events_rejected_total", channel="sse", reason="invalid_call_id"
    )
    assert refused == 2
    logged = [r for r in caplog.records if r.getMessage().startswith("a call id that cannot")]
    assert [r.call for r in logged] == [shown(bad)]  # type: ignore[attr-defined]
    assert len(logged[0].call) <= 100  # type: ignore[attr-defined]


def test_a_takeover_finds_its_calls_partitions_by_the_restores_hashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not by murmur2 again, for every ended call at once: 100-450 ms at 20k-40k calls.
    source = call_log_source(Metrics())
    source.roster = Roster(6, 10)
    launched, _ = started_not_run(monkeypatch, source)
    live, done = calls_in(2, 2)
    progress = PartitionProgress()
    progress.observe(f"{live}:3", [(CHANNEL, b"sse")], 100.0)
    progress.observe(f"{done}:9", [(CHANNEL, b"sse"), (TYPE_HEADER, b"call.score")], 100.0)
    monkeypatch.setattr(roster_module, "partition_for", unhashable)
    source.partition_owned(2, progress)
    assert launched == [Start(live, 3)]
    assert has_ended(source.roster, done)


def ended_in(progress: PartitionProgress, calls: list[str]) -> None:
    for call in calls:
        progress.observe(f"{call}:9", [(CHANNEL, b"sse"), (TYPE_HEADER, b"call.score")], 100.0)


async def test_a_large_takeover_runs_in_steps_with_the_loop_free_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 40,000 ended calls taken over at once held the loop 40-95 ms, every webhook and probe
    # waiting: counted, not timed, as the calls remembered between two turns of another task.
    source, roster = stepping(monkeypatch, 4)
    launched, sweeps = started_not_run(monkeypatch, source, len)
    live, *done = calls_in(0, 11)
    progress = PartitionProgress()
    progress.observe(f"{live}:3", [(CHANNEL, b"sse")], 100.0)
    ended_in(progress, done)
    remembered: list[int] = []

    async def other_task() -> None:
        while True:
            remembered.append(len(roster._ended))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    source.partition_owned(0, progress)
    assert all(has_ended(roster, call) for call in done)  # from the start
    assert source._taking is not None
    await asyncio.wait_for(source._taking, 2)
    other.cancel()
    assert launched == [Start(live, 3)]
    assert sweeps == [1]  # once it is done
    per_turn = [b - a for a, b in pairwise(remembered)]
    assert sum(per_turn) == len(done)
    assert max(per_turn) == 4


async def test_a_takeover_whose_partition_is_lost_under_way_reads_no_call_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its stop ended the task's loop as its end did: a sweep (up to 100 pages) announced the
    # lost partition's calls to a roster that no longer owns it. The one that finishes reads it.
    source, roster = stepping(monkeypatch, 1)
    launched, sweeps = started_not_run(monkeypatch, source, lambda _: set(roster.owned))
    progresses: dict[int, PartitionProgress] = {}
    for partition in (0, 1):
        live, *done = calls_in(partition, 4)
        progress = progresses[partition] = PartitionProgress()
        progress.observe(f"{live}:3", [(CHANNEL, b"sse")], 100.0)
        ended_in(progress, done)
    source.partition_owned(0, progresses[0])
    source.partition_owned(1, progresses[1])
    await asyncio.sleep(0)  # partition 0's first step
    first = roster._taking[0]
    assert first.partition == 0
    assert first.steps  # under way, not done
    source.partition_lost(0)
    assert source._taking is not None
    await asyncio.wait_for(source._taking, 2)
    assert [start.after for start in launched] == [3]  # partition 1's live call
    assert sweeps == [{1}]  # once, for the takeover that finished


async def test_a_stop_ends_a_takeover_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    source, roster = stepping(monkeypatch, 1)
    progress = PartitionProgress()
    ended_in(progress, calls_in(0, 5))
    source.partition_owned(0, progress)
    taking = source._taking
    assert taking is not None
    await source.stop(asyncio.get_running_loop().time())
    assert taking.cancelled()
    assert source._taking is None
    assert len(roster._ended) < 5


async def test_a_takeover_whose_step_crashed_is_run_again_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The supervisor restarts `sse-takeover`; the step's exception had ended the takeover's
    # generator, so the restart found it done: its live call was never followed.
    metrics = Metrics()
    source, roster = stepping(monkeypatch, 2, metrics)
    launched, _ = started_not_run(monkeypatch, source)
    live, *done = calls_in(0, 7)
    progress = PartitionProgress()
    progress.observe(f"{live}:3", [(CHANNEL, b"sse")], 100.0)
    ended_in(progress, done)
    remember = roster._remember_ends
    crashed: list[list[tuple[str, float]]] = []

    def crashing_once(ends: list[tuple[str, float]]) -> None:
        if not crashed:
            crashed.append(ends)
            raise KeyError("a bug in a step")
        remember(ends)

    monkeypatch.setattr(roster, "_remember_ends", crashing_once)
    source.partition_owned(0, progress)
    assert source._taking is not None
    await asyncio.wait_for(source._taking, 5)
    assert sample(metrics, "pinecall_bridge_task_crashes_total", task="sse-takeover") == 1
    assert launched == [Start(live, 3)]
    assert sorted(roster._ended) == sorted(done)
    assert not roster._taking


def faked_followers(
    monkeypatch: pytest.MonkeyPatch, source: CallLogSource, raising: set[str]
) -> None:
    """`source` launches followers that wait for ever; constructing one of a call in `raising`
    raises, once each."""
    source._session = cast(aiohttp.ClientSession, object())  # the followers are faked

    def follower(call: str, after: int, **_: Any) -> Any:
        if call in raising:
            raising.discard(call)
            raise RuntimeError("a bug in a launch")
        state = SimpleNamespace(acked=after, ended_at=None)
        return SimpleNamespace(call=call, state=state, publishing=False)

    async def follow(*_: Any) -> bool:
        await asyncio.Event().wait()
        return True

    monkeypatch.setattr(source_module, "Follower", follower)
    monkeypatch.setattr(source, "_follow", follow)


async def cancel_followers(source: CallLogSource) -> None:
    tasks = [task for _, task in source._followers.values()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_takeovers_launch_that_raised_follows_its_calls_once_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The supervisor restarts `sse-takeover` at its next step: the calls its crashed launch had
    # not started were counted followed by the roster, with no follower, until a restart.
    metrics = Metrics()
    source, roster = stepping(monkeypatch, 2, metrics)
    monkeypatch.setattr(source, "_schedule_sweep", lambda: None)
    a, b, c = calls_in(0, 3)
    faked_followers(monkeypatch, source, {a})
    progress = PartitionProgress()
    for n, call in enumerate((a, b, c), 1):
        progress.observe(f"{call}:{n}", [(CHANNEL, b"sse")], 100.0)
    source.partition_owned(0, progress)
    assert source._taking is not None
    await asyncio.wait_for(source._taking, 5)
    assert sample(metrics, "pinecall_bridge_task_crashes_total", task="sse-takeover") == 1
    assert set(source._followers) == set(roster.following) == {a, b, c}
    assert source._followers[a][0].state.acked == 1  # from its records, as taken over
    await cancel_followers(source)


async def test_a_small_takeovers_launch_that_raised_is_finished_by_its_supervised_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stepped at once in partition_owned (TAKEOVER_STEP calls or fewer), the launch's exception
    # went into the dedup stage's install (its mark step skipped, its start task dead) and left
    # the takeover in the roster unfinished, with no task to go on: its calls never followed.
    metrics = Metrics()
    source = call_log_source(metrics)
    roster = source.roster = Roster(6, 10)
    sweeps: list[int] = []
    monkeypatch.setattr(source, "_schedule_sweep", lambda: sweeps.append(len(source._followers)))
    a, b, c = calls_in(0, 3)
    faked_followers(monkeypatch, source, {a})
    progress = PartitionProgress()
    for n, call in enumerate((a, b, c), 1):
        progress.observe(f"{call}:{n}", [(CHANNEL, b"sse")], 100.0)
    source.partition_owned(0, progress)  # returns: the stage's install goes on
    assert source._taking is not None
    await asyncio.wait_for(source._taking, 5)
    assert sample(metrics, "pinecall_bridge_task_crashes_total", task="sse-takeover") == 1
    assert set(source._followers) == set(roster.following) == {a, b, c}
    assert source._followers[a][0].state.acked == 1  # from its records, as taken over
    assert not roster._taking
    assert sweeps == [3]  # once it is done
    await cancel_followers(source)


def test_the_takeover_tasks_crashes_are_at_0_before_its_first_spawn() -> None:
    # A first small takeover's launch raising in the dedup stage is counted before the task is
    # spawned: a series born at 1 shows TaskCrashing's increase() nothing.
    metrics = Metrics()
    call_log_source(metrics)
    samples = series(metrics.render().decode())
    assert samples.get('pinecall_bridge_task_crashes_total{task="sse-takeover"}') == 0


@pytest.mark.parametrize("change", ["lost", "assigned"])
async def test_a_launch_that_raised_as_a_partition_left_is_retried_by_its_task_not_the_stage(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # The dedup stage calls these from its rebalance and its loss of a partition: the raise
    # skipped the rest of them (a lost partition neither paused nor restarted), and the call
    # handed back waited for the next offer with a slot free.
    metrics = Metrics()
    source = call_log_source(metrics)
    roster = source.roster = Roster(6, 1)
    own(roster, 0, {}, {})
    own(roster, 1, {}, {})
    (gone,), (kept,) = calls_in(1, 1), calls_in(0, 1)
    faked_followers(monkeypatch, source, {kept})
    source.announce(gone)
    source.announce(kept)
    assert list(roster.waiting) == [kept]
    if change == "lost":
        source.partition_lost(1)
    else:
        source.partitions_assigned({0})
    assert sample(metrics, "pinecall_bridge_task_crashes_total", task="sse-takeover") == 1
    assert source._taking is not None
    await asyncio.wait_for(source._taking, 5)
    assert set(source._followers) == set(roster.following) == {kept}
    await cancel_followers(source)
    await asyncio.gather(*source._handovers, return_exceptions=True)


async def test_a_call_whose_launch_raised_starts_when_a_slot_frees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = call_log_source(Metrics())
    roster = source.roster = Roster(6, 2)
    own(roster, 0, {}, {})
    a, b = calls_in(0, 2)
    faked_followers(monkeypatch, source, {b})
    source.announce(a)
    with pytest.raises(RuntimeError, match="a bug in a launch"):
        source.announce(b)
    assert set(roster.following) == set(source._followers) == {a}
    assert list(roster.waiting) == [b]
    source._followers[a][1].cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert set(roster.following) == set(source._followers) == {b}
    await cancel_followers(source)


async def test_a_call_handed_back_before_a_takeover_starts_where_the_takeovers_records_got_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The takeover's task starts by filling the slot a raising launch freed: before its first
    # step has moved the queued call's resume point on from the announcement's 0.
    source, roster = stepping(monkeypatch, 2, capacity=3)
    monkeypatch.setattr(source, "_schedule_sweep", lambda: None)
    own(roster, 0, {}, {})
    a, b, c = calls_in(0, 3)
    faked_followers(monkeypatch, source, {a})
    with pytest.raises(RuntimeError, match="a bug in a launch"):
        source.announce(a)
    assert list(roster.waiting) == [a]
    assert not roster.following
    progress = PartitionProgress()
    for n, call in enumerate((a, b, c), 5):
        progress.observe(f"{call}:{n}", [(CHANNEL, b"sse")], 100.0)
    source.partition_owned(0, progress)
    assert source._taking is not None  # in steps: more calls than TAKEOVER_STEP
    await asyncio.wait_for(source._taking, 5)
    assert set(source._followers) == set(roster.following) == {a, b, c}
    assert source._followers[a][0].state.acked == 5
    await cancel_followers(source)


def test_distinct_refused_call_ids_are_logged_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    source = call_log_source(metrics)
    source.roster = Roster(1, 10)
    monkeypatch.setattr(source, "_launch", lambda starts: None)
    for n in range(100):
        source.announce(f"{n}/..")
    refused = sample(
        metrics, "pinecall_bridge_events_rejected_total", channel="sse", reason="invalid_call_id"
    )
    assert refused == 100
    logged = [r for r in caplog.records if r.getMessage().startswith("a call id that cannot")]
    assert len(logged) == 16


async def test_the_session_holds_more_streams_than_aiohttps_default_pool_of_100() -> None:
    streams = 120
    opened = 0
    all_open = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal opened
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        opened += 1
        if opened == streams:
            all_open.set()
        await release.wait()  # a live call's stream: open until the call ends
        return response

    app = web.Application()
    app.router.add_get("/v1/calls/{call}/events", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        async with stream_session(str(server.make_url(""))) as session:

            async def follow(call: int) -> None:
                timeout = aiohttp.ClientTimeout(total=None, connect=2.0)
                url = server.make_url(f"/v1/calls/CA_{call}/events")
                async with session.get(url, timeout=timeout) as response:
                    await response.read()

            following = [asyncio.create_task(follow(call)) for call in range(streams)]
            await asyncio.wait_for(all_open.wait(), 10)
            release.set()
            await asyncio.gather(*following)
    finally:
        release.set()
        await server.close()
    assert opened == streams


class RecordedBackoff(ReconnectPolicy):
    """Delays of 10 ms doubling to 40 ms, each the top of its jittered range, recorded."""

    def __init__(self) -> None:
        super().__init__(0.01, 0.04, 60.0, rand=lambda _low, high: high)
        self.waits: list[tuple[str, float]] = []

    def next_delay(self, reason: DisconnectReason, connected_for: float | None) -> float:
        delay = super().next_delay(reason, connected_for)
        self.waits.append((reason, delay))
        return delay


async def test_a_failing_call_list_is_read_again_after_a_capped_growing_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = Metrics()
    source = call_log_source(metrics)
    backoff = source._list_backoff = RecordedBackoff()
    outcomes: list[ListOutcome] = [
        *(CallListError("the call list answered 503") for _ in range(5)),
        CallListError("the call list answered 401", retriable=False),
        None,
        CallListError("the call list answered 502"),
        None,
    ]

    announced = sweeps_with(monkeypatch, source, lists_in_turn(outcomes))
    # A second sweep, after a successful one, starts the delays over.
    await swept(source, 2, within=2)
    assert outcomes == []
    assert announced == ["CA_1", "CA_1"]
    retriable: list[tuple[str, float]] = [
        ("connect_error", d) for d in (0.01, 0.02, 0.04, 0.04, 0.04)
    ]
    assert backoff.waits == [*retriable, ("auth", 0.04), ("connect_error", 0.01)]
    crashes = metrics.registry.get_sample_value(
        "pinecall_bridge_task_crashes_total", {"task": "sse-call-list"}
    )
    assert not crashes


async def test_calls_dropped_from_a_full_queue_are_swept_for_once_it_drains(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    source = call_log_source(metrics, max_calls=1)
    source.roster = Roster(1, 1, on_drop=source._dropped)
    own(source.roster, 0, {}, {})
    sweeps: list[None] = []
    monkeypatch.setattr(source, "_schedule_sweep", lambda: sweeps.append(None))
    source._session = cast(aiohttp.ClientSession, object())  # followers are faked below

    async def ended() -> bool:
        return True

    def launch(starts: list[Any]) -> None:
        for start in starts:
            task = asyncio.get_running_loop().create_task(ended())
            follower = SimpleNamespace(state=SimpleNamespace(ended_at=None))
            source._followers[start.call] = (cast(Any, follower), task)

    monkeypatch.setattr(source, "_launch", launch)
    for n in range(13):  # 1 followed, 10 waiting, 2 dropped
        source.announce(f"CA_{n}")
    dropped = metrics.registry.get_sample_value("pinecall_bridge_sse_calls_dropped_total")
    assert dropped == 2
    assert caplog.text.count("call-log queue full") == 1
    while source._followers:
        call, (_, task) = next(iter(source._followers.items()))
        await task
        assert not sweeps  # the queue still holds calls: a sweep now would drop them again
        source._finished(call, task)
        if not source.roster.waiting:
            break
    assert len(sweeps) == 1
    assert not source.roster.missed


@pytest.mark.parametrize("change", ["lost", "assigned"])
async def test_a_full_queue_drained_by_a_partition_leaving_is_swept_for_at_once(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # Only a follower's finish checked the queue: a long live call's follower kept the sweep
    # back for its whole length, and a dropped call that ended meanwhile left the dedup window.
    metrics = Metrics()
    source = call_log_source(metrics)
    roster = source.roster = Roster(6, 1, on_drop=source._dropped)
    own(roster, 0, {}, {})
    own(roster, 1, {}, {})
    sweeps: list[None] = []
    monkeypatch.setattr(source, "_schedule_sweep", lambda: sweeps.append(None))
    faked_followers(monkeypatch, source, set())
    (long_call, dropped), gone = calls_in(0, 2), calls_in(1, roster.max_waiting)
    for call in [long_call, *gone, dropped]:
        source.announce(call)
    assert sample(metrics, "pinecall_bridge_sse_calls_dropped_total") == 1
    assert list(roster.waiting) == gone
    if change == "lost":
        source.partition_lost(1)
    else:
        source.partitions_assigned({0})
    assert set(source._followers) == {long_call}  # still followed, not finished
    assert sweeps == [None]
    assert not roster.missed
    await cancel_followers(source)


def test_a_queue_drained_by_every_partition_leaving_reads_no_call_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None of the dropped calls is ours any more: their new owners read the list.
    metrics = Metrics()
    source = call_log_source(metrics)
    roster = source.roster = Roster(6, 1, on_drop=source._dropped)
    own(roster, 0, {}, {})
    sweeps: list[None] = []
    monkeypatch.setattr(source, "_schedule_sweep", lambda: sweeps.append(None))
    for call in calls_in(0, 2 + roster.max_waiting):
        roster.offer(call)
    assert sample(metrics, "pinecall_bridge_sse_calls_dropped_total") == 1
    source.partitions_assigned(set())
    assert not roster.waiting
    assert not sweeps
    assert not roster.missed


# What a read of the call list gives: a listing, an error, or (None) CA_1 listed live.
ListOutcome = CallListing | CallListError | None


def lists_in_turn(outcomes: list[ListOutcome]) -> Callable[..., Any]:
    """A `list_calls` taking each outcome in turn: a listing answered, an error raised, and for
    None CA_1 listed live."""

    async def list_calls(*_: Any, **__: Any) -> CallListing:
        outcome = outcomes.pop(0)
        if isinstance(outcome, CallListError):
            raise outcome
        return outcome or CallListing([CallRow("CA_1", True, 3, 1.0, None)])

    return list_calls


def one_slot_source(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> tuple[CallLogSource, Roster, list[float], list[Start]]:
    """A source owning the one partition with one follower slot, its roster's clocks (wall and
    monotonic) moved on by the list's first item, and the calls it starts collected (not run)."""
    source = call_log_source(metrics, max_calls=1)
    waited = [0.0]
    roster = source.roster = Roster(
        1,
        1,
        on_expire=source._expired,
        clock=lambda: time.time() + waited[0],
        ticks=lambda: time.monotonic() + waited[0],
    )
    own(roster, 0, {}, {})
    launched: list[Start] = []
    monkeypatch.setattr(source, "_launch", launched.extend)
    return source, roster, waited, launched


async def test_an_ended_call_the_list_found_is_not_read_again_after_waiting_past_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The list is read with the window a skew allowance short, but the call then waits for a
    # slot: after five minutes in the queue its end, and every entry of it published before,
    # has left the dedup window. Read again from seq 0, its whole log would be published twice.
    metrics = Metrics()
    source, roster, waited, launched = one_slot_source(metrics, monkeypatch)
    ttl = source._ttl

    async def list_calls(*args: Any, **kwargs: Any) -> CallListing:
        ended_at = time.time() - ttl + 2 * SKEW_ALLOWANCE_SECONDS  # wanted, by two minutes
        busy = CallRow("CA_busy", True, 3, 1.0, None)
        return CallListing([busy, CallRow("CA_done", False, 9, 1.0, ended_at)])

    monkeypatch.setattr(source_module, "list_calls", list_calls)
    await swept(source, within=5)
    assert launched == [Start("CA_busy", 0)]
    assert list(roster.waiting) == ["CA_done"]
    waited[0] = 5 * SKEW_ALLOWANCE_SECONDS
    assert roster.finished("CA_busy", ended=True) == []
    assert not roster.following
    assert sample(metrics, "pinecall_bridge_sse_calls_dropped_total") == 1


async def test_a_call_a_notice_of_its_end_announced_is_not_read_after_waiting_past_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The feed's first word of a call is its end (its earlier notices came while the feed was
    # down); the call waits behind a busy slot until its end has left the dedup window. Read
    # from seq 0 then, what the webhook or feed carried of it would be published twice.
    metrics = Metrics()
    source, roster, waited, launched = one_slot_source(metrics, monkeypatch)
    source.noticed(Notice("CA_busy", "call.started", time.time()))
    source.noticed(Notice("CA_done", "call.ended", time.time()))
    source.noticed(Notice("CA_live", "call.started", time.time() - 2 * source._ttl))
    assert launched == [Start("CA_busy", 0)]
    assert list(roster.waiting) == ["CA_done", "CA_live"]
    waited[0] = source._ttl
    # The live call's notice keeps no limit: it starts however long it waited.
    assert roster.finished("CA_busy", ended=True) == [Start("CA_live", 0)]
    assert sample(metrics, "pinecall_bridge_sse_calls_dropped_total") == 1


async def test_a_call_list_answered_404_is_read_again_later_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A proxy's 404 during a deploy once turned the call list off for the life of the process:
    # no sweep at a takeover or a drained queue ever again.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    monkeypatch.setattr(calllist_module, "MISSING_RETRY_SECONDS", 0.02)
    source = call_log_source(Metrics())
    backoff = source._list_backoff = RecordedBackoff()
    missing = CallListError("no call list here (404)", unsupported=True)
    outcomes: list[ListOutcome] = [missing, missing, missing, None, missing, None]

    announced = sweeps_with(monkeypatch, source, lists_in_turn(outcomes))
    await swept(source, 2, within=2)  # missing again after it answered: said again, read again
    assert outcomes == []
    assert announced == ["CA_1", "CA_1"]
    # Not hammered: each wait at least MISSING_RETRY_SECONDS, above the backoff's 10 to 40 ms.
    assert len(backoff.waits) == 4
    missing_lines = [r for r in caplog.records if "no call list here" in r.getMessage()]
    assert [r.levelno for r in missing_lines] == [logging.WARNING, logging.WARNING]
    assert caplog.text.count("the call list answers again") == 2


async def test_a_sweep_cut_short_by_the_page_cap_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.sources.calllog.source")
    source = call_log_source(Metrics())
    listings: list[ListOutcome] = [
        CallListing([CallRow("CA_1", True, 3, 1.0, None)]),
        CallListing([CallRow("CA_2", True, 3, 1.0, None)], more="CA_2"),
    ]
    announced = sweeps_with(monkeypatch, source, lists_in_turn(listings))
    await swept(source, 2, within=2)
    assert announced == ["CA_1", "CA_2"]
    [warning] = caplog.records
    assert "read only to its page cap" in warning.getMessage()


async def test_a_long_call_list_is_announced_in_slices_with_the_loop_free_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A list at its page cap (20,000 rows) held the loop some 110 ms in one pass: counted, not
    # timed, as the rows announced between two turns of another task.
    source = call_log_source(Metrics())
    rows = [CallRow(f"CA_{n}", True, 3, 1.0, None) for n in range(3 * SWEEP_ROWS_PER_STEP + 5)]

    async def list_calls(*_: Any, **__: Any) -> CallListing:
        return CallListing(rows)

    announced = sweeps_with(monkeypatch, source, list_calls)
    per_turn: list[int] = []

    async def other_task() -> None:
        while True:
            seen = len(announced)
            await asyncio.sleep(0)
            per_turn.append(len(announced) - seen)

    async with aiohttp.ClientSession() as session:
        source._session = session
        other = asyncio.create_task(other_task())
        await asyncio.sleep(0)
        source._schedule_sweep()
        assert source._sweep is not None
        await asyncio.wait_for(source._sweep, 2)
        other.cancel()
    assert announced == [row.call for row in rows]
    assert max(per_turn) == SWEEP_ROWS_PER_STEP


def logged_call(logs: CallLogs, name: str, started: float, ended: float | None = None) -> None:
    """A call in `logs` started at `started`; ended and scored (sealed: not live) at `ended`."""
    logs.append(entry(1, "call.started", call=name, ts=started, data={}))
    if ended is not None:
        logs.append(entry(2, "call.ended", call=name, ts=ended, data={}))
        logs.append(entry(3, "call.score", call=name, ts=ended, data={}))


@contextlib.asynccontextmanager
async def listing_from(
    source: CallLogSource, logs: CallLogs, limited: Callable[[str | None], bool] = lambda _: False
) -> AsyncIterator[list[str | None]]:
    """`source` reads its call list from `logs` over HTTP, each page's `before` collected (one
    list per sweep's worth: cleared by the caller); a page whose `before` is `limited` is a 429."""
    asked: list[str | None] = []

    async def sessions(request: web.Request) -> web.Response:
        before = request.query.get("before")
        asked.append(before)
        if limited(before):
            return web.Response(status=429)
        limit = int(request.query["limit"])
        return web.json_response(logs.listing(limit, before=before))

    app = web.Application()
    app.router.add_get("/v1/sessions", sessions)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        source._api = source._api.model_copy(update={"api_url": base})
        source._session = session
        yield asked


async def test_a_live_call_that_started_before_the_lookback_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The list has no `live` filter and comes newest first by start: a sweep that stopped at the
    # lookback (6 h) never reached a call still live that started 7 h ago (a long call, or one
    # started while no bridge ran), at any sweep, nor its end once a notice of it was missed.
    now, hour = time.time(), 3_600.0
    logs = CallLogs()
    logged_call(logs, "CA_long", now - 7 * hour)
    logged_call(logs, "CA_old", now - 8 * hour, now - 7.5 * hour)  # ended before the window
    logged_call(logs, "CA_new", now - hour)
    for n in range(450):  # two pages and more of short calls between, as the simulator lists them
        started = now - 6.9 * hour + 6 * n
        logged_call(logs, f"CA_short_{n:03d}", started, started + 60)
    source, announced = served_list_source(monkeypatch, 6 * hour)
    async with listing_from(source, logs):
        for _ in range(2):  # the first sweep of the process, and one that knows the last read
            announced.clear()
            await sweep(source)
            assert {"CA_new", "CA_long"} <= set(announced)
            assert "CA_old" not in announced


async def test_a_page_past_the_lookback_rate_limited_ends_the_read_not_the_sweep(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The first read of a process goes past the lookback to the page cap: one 429 down there
    # threw the whole read away and left the horizon unset, so every retry went deep again; under
    # a rate limit no sweep announced anything, not even the first page's live calls.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    monkeypatch.setattr(calllist_module, "PAGE_LIMIT", 5)
    now, hour = time.time(), 3_600.0
    logs = CallLogs()
    logged_call(logs, "CA_live", now - 60)
    for n in range(4):  # the rest of page 1: ended within the dedup window
        logged_call(logs, f"CA_recent_{n}", now - 600 - n, now - 300)
    for n in range(20):  # page 2 reaches past the lookback (1 h); the rest is best effort
        started = now - 0.9 * hour - 600 * n
        logged_call(logs, f"CA_old_{n:02d}", started, started + 60)
    page_2_last = "CA_old_04"
    source, announced = served_list_source(monkeypatch, hour)
    async with listing_from(source, logs, lambda before: before == page_2_last) as asked:
        await sweep(source, within=5)
        assert asked == [None, "CA_recent_3", page_2_last]  # the 429 asked once, not again
        assert {"CA_live", "CA_recent_0", "CA_recent_3"} <= set(announced)
        [cut] = [r for r in caplog.records if "ended at a failed page" in r.getMessage()]
        assert cut.levelno == logging.WARNING
        assert cut.__dict__["error"] == "the call list answered 429"
        asked.clear()
        caplog.clear()
        await sweep(source, within=5)
        # Back to the lookback only: every call past it ended, none live to reach back to.
        assert asked == [None, "CA_recent_3"]
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]


async def test_a_page_within_the_lookback_that_fails_fails_the_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The read's contract within the lookback is unchanged: a failure there is retried whole.
    monkeypatch.setattr(calllist_module, "PAGE_LIMIT", 5)
    now, hour = time.time(), 3_600.0
    logs = CallLogs()
    for n in range(20):
        logged_call(logs, f"CA_{n:02d}", now - 60 - 600 * n)
    source, announced = served_list_source(monkeypatch, hour)
    refusals = [1]

    def limited(before: str | None) -> bool:
        if before == "CA_04" and refusals:  # page 2, which reaches the lookback: refused once
            refusals.pop()
            return True
        return False

    async with listing_from(source, logs, limited) as asked:
        await sweep(source, within=5)
    assert asked[:3] == [None, "CA_04", None]  # the read asked again from its start
    assert caplog.text.count("call list not read; retrying") == 1
    assert "ended at a failed page" not in caplog.text
    assert {f"CA_{n:02d}" for n in range(20)} <= set(announced)


async def test_a_read_past_the_lookback_to_the_page_cap_is_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A process's first read goes to the page cap: an organisation with more calls than the cap
    # holds (20,000) warned at every start, for the read working as meant; and a call the
    # platform shows live for ever, however far back, must not make a sweep warn either.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    monkeypatch.setattr(calllist_module, "PAGE_LIMIT", 2)  # the cap: 100 pages of 2
    now, hour = time.time(), 3_600.0
    logs = CallLogs()
    logged_call(logs, "CA_for_ever", now - 40 * hour)  # marked live, past the cap
    for n in range(300):
        started = now - 60 - 60 * n
        logged_call(logs, f"CA_{n:03d}", started, started + 30)
    source, _ = served_list_source(monkeypatch, hour)
    async with listing_from(source, logs) as asked:
        await sweep(source)
        assert len(asked) == calllist_module.MAX_PAGES
        [capped] = [r for r in caplog.records if "page cap" in r.getMessage()]
        assert capped.levelno == logging.INFO
        asked.clear()
        await sweep(source)
        assert len(asked) == 30  # to the lookback: the 30th page's CA_059 started before it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    source._settings = source._settings.model_copy(update={"call_list_lookback_seconds": 5 * hour})
    async with listing_from(source, logs):
        await sweep(source)
    # Within the lookback the cap still warns: calls the read owes were not found.
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "read only to its page cap" in warning.getMessage()


async def test_a_deep_read_cut_by_a_failure_warns_once_until_a_read_ends_well(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A call kept live for ever keeps each sweep reading back to it: under a lasting rate limit
    # every sweep would warn again for the same cut.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    source = call_log_source(Metrics())
    live = [CallRow("CA_1", True, 3, 1.0, None)]
    cut = CallListing(live, past_lookback=True, failed="the call list answered 429")
    listings: list[ListOutcome] = [cut, cut, CallListing(live, past_lookback=True), cut]
    announced = sweeps_with(monkeypatch, source, lists_in_turn(listings))
    await swept(source, 4)
    assert announced == ["CA_1"] * 4
    levels = [r.levelno for r in caplog.records if "ended at a failed page" in r.getMessage()]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]


class Listed:
    """A source whose call list shows one row at every read, on clocks the test sets: the
    `oldest` each read asked for and the calls announced."""

    def __init__(self, source: CallLogSource, wall: float, ticks: float) -> None:
        self.source, self.wall, self.ticks = source, wall, ticks
        self.asked: list[float] = []
        self.announced: list[str] = []

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.ticks

    async def sweep_at(self, wall: float, ticks: float) -> None:
        """A sweep with the wall clock at `wall` and the monotonic clock at `ticks`."""
        self.wall, self.ticks = wall, ticks
        await sweep(self.source)


@contextlib.asynccontextmanager
async def always_listed(
    monkeypatch: pytest.MonkeyPatch, row: CallRow, wall: float, ticks: float
) -> AsyncIterator[Listed]:
    """A source looking back an hour whose call list is only `row`, its clocks (the source
    module's `time`) starting at `wall` and `ticks`, over an HTTP session of its own."""
    listed = Listed(call_log_source(Metrics(), call_list_lookback_seconds=3_600), wall, ticks)
    monkeypatch.setattr(source_module, "time", listed)

    async def list_calls(*_: Any, oldest: float, **__: Any) -> CallListing:
        listed.asked.append(oldest)
        return CallListing([row])

    listed.announced = sweeps_with(monkeypatch, listed.source, list_calls)
    async with aiohttp.ClientSession() as session:
        listed.source._session = session
        yield listed


async def test_a_call_live_but_still_for_hours_is_said_once_and_no_longer_read_back_to(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A row the platform never sealed kept every sweep reading back to its start (to the page
    # cap in a busy organisation), for the life of the process, and nothing named it.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    hour, start = 3_600.0, 1_780_000_000.0
    stuck = CallRow("CA_stuck", True, 9, start - 30 * hour, None)
    async with always_listed(monkeypatch, stuck, start, start) as listed:
        for at in (0, 3, 6, 7):  # hours from the first sweep
            await listed.sweep_at(start + at * hour, start + at * hour)
    assert listed.announced == ["CA_stuck"] * 4  # still followed while the list shows it
    assert listed.asked[1:3] == [start - 30 * hour] * 2
    # Found stuck at 6 h: back to the last read's start only (calls since may be live).
    assert listed.asked[3] == start + 6 * hour - SKEW_ALLOWANCE_SECONDS
    [said] = [r for r in caplog.records if "wrote nothing for hours" in r.getMessage()]
    assert said.levelno == logging.WARNING
    assert (said.__dict__["call"], said.__dict__["last_seq"]) == ("CA_stuck", 9)
    assert said.__dict__["still_for_s"] == 6 * hour  # the lookback, at least 6 h


async def test_stuck_calls_outgrowing_what_is_kept_are_said_once_as_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    monkeypatch.setattr(calllist_module, "MAX_STUCK", 1)
    hour, start = 3_600.0, 1_780_000_000.0
    clock = [start]
    clocks = SimpleNamespace(time=lambda: clock[0], monotonic=lambda: clock[0])
    monkeypatch.setattr(source_module, "time", clocks)
    source = call_log_source(Metrics(), call_list_lookback_seconds=hour)
    rows = [CallRow(f"CA_stuck{n}", True, 9, start - n * hour, None) for n in (20, 30)]

    async def list_calls(*_: Any, **__: Any) -> CallListing:
        return CallListing(rows)

    sweeps_with(monkeypatch, source, list_calls)
    async with aiohttp.ClientSession() as session:
        source._session = session
        for at in (0, 6, 7):  # hours from the first sweep
            clock[0] = start + at * hour
            await sweep(source)
    said = [r for r in caplog.records if "more calls stuck live than are kept" in r.getMessage()]
    assert [(r.levelno, r.__dict__["forgotten"]) for r in said] == [
        (logging.WARNING, 1),
        (logging.INFO, 2),
    ]
    assert said[0].__dict__["kept"] == 1


async def test_many_calls_newly_stuck_in_one_read_are_said_by_a_bounded_number_of_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A read that newly found thousands of calls stuck (a platform that stopped sealing rows)
    # logged a WARNING per call, thousands of lines in one pass.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    hour, start = 3_600.0, 1_780_000_000.0
    clock = [start]
    clocks = SimpleNamespace(time=lambda: clock[0], monotonic=lambda: clock[0])
    monkeypatch.setattr(source_module, "time", clocks)
    source = call_log_source(Metrics(), call_list_lookback_seconds=hour)
    many = source_module.STUCK_SAID_BY_NAME + 3_000
    rows = [CallRow(f"CA_stuck{n}", True, 9, start - 30 * hour + n, None) for n in range(many)]

    async def list_calls(*_: Any, **__: Any) -> CallListing:
        return CallListing(rows)

    sweeps_with(monkeypatch, source, list_calls)
    async with aiohttp.ClientSession() as session:
        source._session = session
        for at in (0, 6, 7):  # hours from the first sweep: found stuck at 6 h, once
            clock[0] = start + at * hour
            await sweep(source)
    named = [r for r in caplog.records if "shows a call live that wrote" in r.getMessage()]
    assert [r.__dict__["call"] for r in named] == [
        row.call for row in rows[: source_module.STUCK_SAID_BY_NAME]
    ]
    [more] = [r for r in caplog.records if "more calls live that wrote nothing" in r.getMessage()]
    assert more.levelno == logging.WARNING
    assert more.__dict__["calls"] == 3_000
    assert more.__dict__["found_stuck"] == many
    # Remembered all the same: the next read says none of them again, nor reads back to them.
    assert source._horizon.oldest(start + 8 * hour, hour) > start  # not back to 30 h before
    assert len(named) == source_module.STUCK_SAID_BY_NAME


async def test_a_wall_clock_step_between_two_reads_finds_no_call_stuck(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # How long a call's last_seq stood still was timed by the wall clock: a step forward (NTP
    # mending a clock that booted behind) between two reads a minute apart found every live call
    # quiet for that minute stuck, said so, and no read reached back to it again.
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    hour, start = 3_600.0, 1_780_000_000.0
    quiet = CallRow("CA_quiet", True, 9, start - 3 * hour, None)
    async with always_listed(monkeypatch, quiet, start, 100.0) as listed:
        for step in (0, 7 * hour, 0):  # the wall clock steps 7 h; a minute goes by each time
            await listed.sweep_at(listed.wall + step + 60, listed.ticks + 60)
    assert not [r for r in caplog.records if "wrote nothing for hours" in r.getMessage()]
    assert listed.asked[2] == start - 3 * hour  # still read back to it


async def test_a_partition_restored_whole_never_follows_more_calls_than_max_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Revoked and assigned back, restored whole, while a is followed and b waits: its records
    # say a ended. b was started in a's slot while a's follower still ran: two streams, one slot.
    metrics = Metrics()
    source = call_log_source(metrics)
    roster = source.roster = Roster(6, 1)
    monkeypatch.setattr(source, "_schedule_sweep", lambda: None)
    metrics.sse_calls_followed.set_function(lambda: len(source._followers))
    own(roster, 0, {}, {})
    a, b = calls_in(0, 2)
    faked_followers(monkeypatch, source, set())
    source.announce(a)
    source.announce(b)
    progress = PartitionProgress()
    ended_in(progress, [a])
    source.partition_owned(0, progress)
    assert set(source._followers) == set(roster.following) == {a}
    assert sample(metrics, "pinecall_bridge_sse_calls_followed") == 1
    source._followers[a][1].cancel()  # its follower stops: b takes its slot
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert set(source._followers) == set(roster.following) == {b}
    await cancel_followers(source)


async def test_a_partition_lost_during_its_takeover_ends_the_takeovers_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its steps went on to the last, for calls no longer ours: each looked up, offered, refused.
    source, roster = stepping(monkeypatch, 1)
    launched, _ = started_not_run(monkeypatch, source)
    live, *done = calls_in(0, 11)
    progress = PartitionProgress()
    progress.observe(f"{live}:3", [(CHANNEL, b"sse")], 100.0)
    ended_in(progress, done)
    source.partition_owned(0, progress)
    assert source._taking is not None
    await asyncio.sleep(0)
    source.partition_lost(0)
    (takeover,) = source._takeovers
    await asyncio.wait_for(source._taking, 2)
    assert takeover.steps < 3
    assert not roster._taking
    assert launched == []
