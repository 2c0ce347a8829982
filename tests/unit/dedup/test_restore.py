"""The restore over a fake log: which records rebuild the window, and which never may."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiokafka import TopicPartition

from bridge.clocks import BrokerClock
from bridge.dedup import restore as restore_module
from bridge.dedup.kept import Kept
from bridge.dedup.memoryfit import RESTORE_BYTES_PER_PARTITION
from bridge.dedup.restore import GapUnreadableError, RestoreMeter, RestoreStalledError, restore
from bridge.dedup.window import SeenWindow, digest
from bridge.ingest.progress import PartitionProgress
from bridge.metrics import Metrics
from tests.metrics import sample
from tests.polling import until
from tests.unit.dedup.fakes import FakeLog, FakeLogConsumer, ingest

TP = TopicPartition("ingest", 0)
TTL = 3.0
# An ingest record as aiokafka hands it out decoded (6 headers, a 430-byte value): 2.3 KB by
# tracemalloc, for 800 bytes on the wire.
DECODED_RECORD_BYTES = 2400


def seen(window: SeenWindow, *ids: str) -> list[bool]:
    return [digest(i) in window for i in ids]


async def test_the_window_is_the_ttl_before_the_committed_offsets_last_record(
    log: FakeLog,
) -> None:
    for n in range(10):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    window = SeenWindow(TTL, 1_000)
    # Committed at 8: the last decided record is 7 (107 s), so 104 s on is replayed; 8 is not
    # decided yet and must stay out, or the next owner would drop it as a copy.
    assert await restore({}, TP, 8, window, TTL) == 4
    assert seen(window, "CA_1:3", "CA_1:4", "CA_1:7", "CA_1:8") == [False, True, True, False]
    assert window.stream_time == 107.0


async def test_an_aborted_record_stays_out_of_the_window(log: FakeLog) -> None:
    # Another transactional writer's aborted copy: the stage, reading read_committed, never
    # decided it, and its committed copy (offset 3) was output. Restored, it would be a copy.
    log.append(ingest(0, "CA_1:0", 100.0))
    log.append(ingest(1, "CA_9:1", 100.5), aborted=True)
    log.append(ingest(2, "CA_1:2", 101.0))
    log.append(ingest(3, "CA_9:1", 101.5))
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 3, window, TTL) == 2
    assert seen(window, "CA_1:0", "CA_9:1") == [True, False]
    assert log.isolation == ["read_committed"]


@pytest.mark.parametrize(("end", "log_start"), [(0, 0), (3, 5)])
async def test_nothing_before_the_committed_offset_restores_nothing(
    log: FakeLog, end: int, log_start: int
) -> None:
    for n in range(6):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    log.log_start = log_start  # 5: retention deleted what came before the committed offset
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, end, window, TTL) == 0
    assert len(window) == 0


async def test_a_cancelled_error_from_inside_the_consumers_stop_does_not_end_the_restore(
    log: FakeLog,
) -> None:
    # Its stop cancelled a fetch sleeping out its retry backoff (a broker restarting): the
    # restore is done all the same, not taken for a cancelled partition start.
    log.stop_cut = True
    for n in range(3):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 3, window, TTL) == 3


async def test_a_restore_cancelled_while_its_consumer_starts_stops_that_consumer(
    log: FakeLog,
) -> None:
    # A partition start the shutdown or a rebalance calls off: left unstopped, the consumer
    # keeps its connections and is reported "Unclosed AIOKafkaConsumer" on stderr.
    log.start_held = True
    restoring = asyncio.create_task(restore({}, TP, 3, SeenWindow(TTL, 1_000), TTL))
    await until(lambda: log.starts == 1)
    restoring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await restoring
    assert log.stops == 1


def short_reads(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "read short of the partition's end" in r.getMessage()]


async def test_call_log_progress_reads_past_the_committed_offset(
    log: FakeLog, caplog: pytest.LogCaptureFixture
) -> None:
    # The stage lags: offsets 3-5 are in the topic but not decided. A follower resumed from
    # the committed offset's view (seq 2) would write its copies a lag later than the originals.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    for n in range(6):
        log.append(ingest(n, f"CA_1:{n + 1}", 100.0 + n, channel="sse"))
    window, progress = SeenWindow(TTL, 1_000), PartitionProgress()
    assert await restore({}, TP, 3, window, TTL, progress) == 3
    assert progress.live() == {"CA_1": 6}
    assert seen(window, "CA_1:3", "CA_1:4") == [True, False]  # the window stops at 3 all the same
    assert short_reads(caplog) == []  # read to the end: nothing to warn of


async def test_a_progress_read_cut_short_warns_how_far_it_stopped(
    log: FakeLog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its time is up before it reads anything past the committed offset: followers of the calls
    # in offsets 3-5 resume from the committed offset's view, further back, and that is said.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    monkeypatch.setattr(restore_module, "PROGRESS_SCAN_SECONDS", 0.0)
    for n in range(6):
        log.append(ingest(n, f"CA_1:{n + 1}", 100.0 + n, channel="sse"))
    window, progress = SeenWindow(TTL, 1_000), PartitionProgress()
    assert await restore({}, TP, 3, window, TTL, progress) == 3
    assert progress.live() == {"CA_1": 3}
    (warning,) = short_reads(caplog)
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["records_left"] == 3
    assert warning.__dict__["partition"] == TP.partition


def unreadable_last(log: FakeLog, broker_now: float) -> None:
    """Another transactional writer's aborted record last before the committed offset (4): the
    stage skipped it, and no record came since. 1 and 2 are within the TTL, 0 long past it."""
    log.append(ingest(0, "CA_0:9", broker_now - TTL - 120.0))  # past the TTL and the allowance
    log.append(ingest(1, "CA_1:0", broker_now - 2.0))
    log.append(ingest(2, "CA_1:1", broker_now - 1.5))
    log.append(ingest(3, "CA_9:7", broker_now - 1.0), aborted=True)


def broker_clock_at(broker_now: float) -> BrokerClock:
    """The stage's BrokerClock, having read a record appended at `broker_now` just now."""
    clock = BrokerClock()
    clock.saw(broker_now, time.monotonic())
    return clock


async def test_an_unreadable_last_record_still_restores_the_ttl_before_now(log: FakeLog) -> None:
    now = time.time()
    unreadable_last(log, now)
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 4, window, TTL, clock=broker_clock_at(now)) == 2  # not all
    assert seen(window, "CA_0:9", "CA_1:0", "CA_1:1", "CA_9:7") == [False, True, True, False]


async def test_an_unreadable_last_record_restores_the_ttl_with_our_clock_ahead_of_the_brokers(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This replica's clock 10 minutes ahead (an NTP fault): the TTL before our now started
    # past every record, 1 and 2 left out of the window, and their late copies output twice.
    broker_now = time.time()
    unreadable_last(log, broker_now)
    clock = broker_clock_at(broker_now)
    monkeypatch.setattr(time, "time", lambda: broker_now + 600.0)
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 4, window, TTL, clock=clock) == 2
    assert seen(window, "CA_0:9", "CA_1:0", "CA_1:1") == [False, True, True]


async def test_an_unreadable_last_record_with_no_broker_time_known_restores_from_the_log_start(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing read yet in this process: how far ours is from the broker's clock is unknown,
    # so everything kept is read, which holds the TTL's ids whichever way they differ.
    broker_now = time.time()
    unreadable_last(log, broker_now)
    monkeypatch.setattr(time, "time", lambda: broker_now + 600.0)
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 4, window, TTL) == 3
    assert seen(window, "CA_0:9", "CA_1:0", "CA_1:1") == [False, True, True]


async def test_a_restore_holds_no_more_than_memoryfit_counts_a_partition(log: FakeLog) -> None:
    # A takeover restores every partition at once: what each holds past its window is counted
    # per partition (memoryfit). Fetches of 8 MiB drained whole held about 50 MiB a partition.
    for n in range(2_000):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n / 1000))
    window = SeenWindow(TTL, 10_000)
    assert await restore({}, TP, 2_000, window, TTL) == len(window)
    [fetch] = log.fetch_bytes
    asked = log.records_asked
    assert fetch is not None
    assert None not in asked
    decoded = max(n or 0 for n in asked) * DECODED_RECORD_BYTES
    # The fetch being read, the next one in flight, and one read's records decoded.
    assert 2 * fetch + decoded <= RESTORE_BYTES_PER_PARTITION


def test_a_read_whose_position_moves_never_stalls() -> None:
    # Empty fetches that skip aborted records or control batches still move the position.
    watch = restore_module.StallWatch(0, now=0.0, limit=30.0)
    assert [watch.stalled(p, now=20.0 * p) for p in range(1, 6)] == [False] * 5


def test_a_read_answered_with_throttles_never_stalls() -> None:
    # A fetch quota shared by every partition restoring at once: a partition waits its turn
    # for minutes, its position still, answered with a throttle every few seconds meanwhile.
    watch = restore_module.StallWatch(7, now=0.0, limit=30.0)
    for second in range(10, 300, 10):
        watch.answered(now=second - 1.0)
        assert not watch.stalled(7, now=float(second))


def test_a_read_with_no_move_and_no_answer_stalls_after_the_limit() -> None:
    watch = restore_module.StallWatch(7, now=0.0, limit=30.0)
    watch.answered(now=5.0)
    assert not watch.stalled(7, now=34.9)
    assert watch.stalled(7, now=35.0)
    assert not watch.stalled(8, now=36.0)  # a move starts the limit over
    assert watch.stalled(8, now=66.0)


def cut_at_600(log: FakeLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 records whose first consumer gets nothing past offset 599 (and the last record, read
    for its time): a broker cut mid-restore, called stalled within 0.2 s."""
    monkeypatch.setattr(restore_module, "_FETCH_MS", 10)
    monkeypatch.setattr(restore_module, "STALL_SECONDS", 0.2)
    for n in range(1_000):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n / 1000))
    log.cut_after = 601


async def test_a_stalled_restore_goes_on_from_where_it_stopped(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The ids replayed before the cut stay; the next consumer reads on from 600, not from 0.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    cut_at_600(log, monkeypatch)
    window = SeenWindow(TTL, 10_000)
    assert await restore({}, TP, 1_000, window, TTL) == 1_000
    assert seen(window, "CA_1:0", "CA_1:599", "CA_1:600", "CA_1:999") == [True] * 4
    assert log.starts == 2
    assert log.handed == 1_000 + 1  # each record once, and the last one read for its time
    (warning,) = [r for r in caplog.records if "going on from where it stopped" in r.getMessage()]
    assert (warning.__dict__["offset"], warning.__dict__["records_left"]) == (600, 400)


async def test_a_resumed_restore_gives_its_new_consumer_the_whole_limit(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The new consumer's first fetches come back empty (its connection still being made): that
    # is no stall of its own, though its position has not moved since the last one's stall.
    cut_at_600(log, monkeypatch)
    log.empty_after_cut = 3
    window = SeenWindow(TTL, 10_000)
    assert await restore({}, TP, 1_000, window, TTL) == 1_000
    assert log.starts == 2


async def test_a_restore_whose_new_consumer_reads_nothing_either_gives_up(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resumed for ever, it held its restore slot for ever: a broker's partitions gone offline
    # mid-takeover held every slot, and the partitions still readable were never restored.
    cut_at_600(log, monkeypatch)
    log.empty_after_cut = 1_000_000
    async with asyncio.timeout(5):
        with pytest.raises(RestoreStalledError) as stalled:
            await restore({}, TP, 1_000, SeenWindow(TTL, 10_000), TTL)
    assert stalled.value.position == 600
    assert log.starts == 2


class WatchedMeter(RestoreMeter):
    """A RestoreMeter that notes the records left on its gauge at each advance."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(metrics.dedup_restore_records_left, metrics.dedup_restore_records_read)
        self.metrics = metrics
        self.left: list[float] = []

    def advance(self, records: int) -> None:
        super().advance(records)
        self.left.append(sample(self.metrics, "pinecall_bridge_dedup_restore_records_left"))


async def test_a_restore_counts_its_records_left_and_read_as_it_reads_them(log: FakeLog) -> None:
    # What the time a restore still needs is computed from (PinecallBridgeDedupRestoreSlow):
    # counted once it ends, a restore of millions of records would read as none at all.
    for n in range(1_200):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n / 1000))
    metrics = Metrics()
    meter = WatchedMeter(metrics)
    assert await restore({}, TP, 1_200, SeenWindow(TTL, 10_000), TTL, meter=meter) == 1_200
    assert meter.left == [700, 200, 0]  # 500 records a read
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_read_total") == 1_200


async def test_a_restore_that_fails_leaves_no_records_left_behind(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left on the gauge, they would read as a restore reading nothing, alerted on for ever.
    for n in range(1_200):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n / 1000))
    reads = 0
    getmany = FakeLogConsumer.getmany

    async def failing(self: FakeLogConsumer, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads > 2:  # the last record's read, then the first 500 of the replay
            raise ConnectionError("broker gone")
        return await getmany(self, *args, **kwargs)

    monkeypatch.setattr(FakeLogConsumer, "getmany", failing)
    metrics = Metrics()
    meter = WatchedMeter(metrics)
    with pytest.raises(ConnectionError):
        await restore({}, TP, 1_200, SeenWindow(TTL, 10_000), TTL, meter=meter)
    assert meter.left == [700]
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_left") == 0
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_read_total") == 500


def test_two_restores_share_the_gauge_and_each_takes_only_its_own_off() -> None:
    metrics = Metrics()
    first, second = WatchedMeter(metrics), WatchedMeter(metrics)
    first.begin(1_000)
    second.begin(300)
    first.advance(400)
    second.advance(500)  # past its end (the tail's records are filtered): at most its own 300
    assert first.left == [900]
    assert second.left == [600]
    second.close()
    first.close()
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_left") == 0
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_read_total") == 900


async def test_a_kept_window_is_caught_up_over_the_gap_alone(log: FakeLog) -> None:
    """Only [kept position, end) is read, into the window as it was kept."""
    for n in range(10):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    window = SeenWindow(TTL, 1_000)
    window.observe(digest("CA_1:5"), 105.0)  # what the window held when revoked at 6
    metrics = Metrics()
    meter = RestoreMeter(metrics.dedup_restore_records_left, metrics.dedup_restore_records_read)
    kept = Kept(position=6, revoked_at=0.0, last_appended_at=105.0)
    assert await restore({}, TP, 9, window, TTL, meter=meter, kept=kept) == 3
    assert seen(window, "CA_1:4", "CA_1:5", "CA_1:8", "CA_1:9") == [False, True, True, False]
    assert window.stream_time == 108.0
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_read_total") == 3


@pytest.mark.parametrize(
    ("log_start", "appended", "reason"), [(7, 105.0, "deleted"), (0, 99.0, "recreated")]
)
async def test_a_gap_that_is_not_all_there_is_refused(
    log: FakeLog, log_start: int, appended: float, reason: str
) -> None:
    for n in range(10):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    log.log_start = log_start
    window = SeenWindow(TTL, 1_000)
    kept = Kept(position=6, revoked_at=0.0, last_appended_at=appended)
    with pytest.raises(GapUnreadableError) as refused:
        await restore({}, TP, 9, window, TTL, kept=kept)
    assert refused.value.reason == reason
    assert len(window) == 0


def cut_windows(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("dedup restore's window")]


async def test_a_window_retention_cut_is_said(
    log: FakeLog, caplog: pytest.LogCaptureFixture
) -> None:
    # The stage lagged past the retention margin: retention took :0 and :1, decided within the
    # TTL before :4, still undecided, so a copy of either among what waits is output again.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    for n in range(5):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    log.log_start = 2
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 4, window, TTL, margin=3600.0) == 2
    assert seen(window, "CA_1:0", "CA_1:2") == [False, True]
    (said,) = cut_windows(caplog)
    assert said.levelno == logging.WARNING
    assert (said.__dict__["partition"], said.__dict__["from_offset"]) == (TP.partition, 2)


@pytest.mark.parametrize("log_start", [0, 1, 2], ids=["nothing", "older", "idle"])
async def test_a_whole_window_is_not_said_cut(
    log: FakeLog, caplog: pytest.LogCaptureFixture, log_start: int
) -> None:
    # Nothing deleted; deleted records older than the window's start; or a stage within the
    # margin, whose deleted records are older than the TTL (a partition idle past retention).
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    now = time.time()
    log.append(ingest(0, "CA_1:0", now - 2 * TTL))
    log.append(ingest(1, "CA_1:1", now - TTL - 1.0))
    log.append(ingest(2, "CA_1:2", now - 1.0))
    log.append(ingest(3, "CA_1:3", now - 0.5))
    log.log_start = log_start
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 4, window, TTL, margin=3600.0) == 2
    assert cut_windows(caplog) == []


@pytest.mark.parametrize("busy_again", [False, True], ids=["idle", "busy-again"])
async def test_an_idle_partition_past_the_margin_is_not_said_cut(
    log: FakeLog, caplog: pytest.LogCaptureFixture, busy_again: bool
) -> None:
    # Idle past the margin, not the retention: retention took :0 and :1 (older than the TTL plus
    # the margin), but what comes next is appended now, and the TTL before it excludes them.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    now, margin = time.time(), 600.0
    for n in range(4):
        log.append(ingest(n, f"CA_1:{n}", now - 3 * margin + n * TTL / 4))
    if busy_again:
        log.append(ingest(4, "CA_1:4", now))
    log.log_start = 2
    window = SeenWindow(TTL, 1_000)
    assert await restore({}, TP, 4, window, TTL, margin=margin) == 2
    assert cut_windows(caplog) == []
