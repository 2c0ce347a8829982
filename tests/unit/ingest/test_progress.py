from typing import cast

from bridge.ingest.progress import PartitionProgress, call_and_seq, is_terminal
from bridge.ingest.record import EVENT_TIME, ID, VERSION, decided_id
from bridge.sources.calllog.roster import partition_of


def headers(
    kind: str, *, binary: bool = False, channel: str = "sse", event_time: bytes | None = None
) -> list[tuple[str, bytes]]:
    base = [
        ("pinecall-ingest-id", b"x"),
        ("pinecall-ingest-channel", channel.encode()),
        ("content-type", b"application/json"),
    ]
    if event_time is not None:
        base.append(("pinecall-ingest-event-time", event_time))
    if binary:
        base.append(("ce_type", kind.encode()))
    return [*base, ("pinecall-id", b"x"), ("pinecall-type", kind.encode())]


def test_call_and_seq_reads_call_log_ids_only() -> None:
    assert call_and_seq("CA_1:12") == ("CA_1", 12)
    assert call_and_seq("CA:with:colons:3") == ("CA:with:colons", 3)
    for other in ("@agent:3", "sha256:abc", "dlq:abc", "CA_1:", ":3", "CA_1:-1", "CA_1:\u0661"):
        assert call_and_seq(other) is None, other


def test_terminal_in_either_mode() -> None:
    assert is_terminal(headers("call.score"))
    assert is_terminal(headers("call.score", binary=True))
    assert not is_terminal(headers("call.summary"))
    assert not is_terminal([("pinecall-ingest-id", b"CA_1:1")])


def test_progress_keeps_the_highest_seq_and_the_end() -> None:
    progress = PartitionProgress()
    progress.observe("CA_1:1", headers("call.started"), 100.0)
    progress.observe("CA_1:3", headers("turn.user"), 100.0)
    progress.observe("CA_1:2", headers("turn.agent"), 100.0)  # a late copy
    progress.observe("CA_2:5", headers("call.score"), 100.0)
    progress.observe("CA_2:4", headers("call.summary"), 100.0)
    progress.observe("CA_3:9", headers("turn.user"), 100.0)
    progress.observe("CA_3:10", headers("call.score"), 100.0)
    progress.observe("@agent:7", headers("agent.registered"), 100.0)
    progress.observe("sha256:ff", headers("monitor.fired"), 100.0)
    assert progress.live() == {"CA_1": 3}
    assert progress.ended() == {"CA_2": 100.0, "CA_3": 100.0}


def test_only_the_call_log_moves_the_resume_point() -> None:
    progress = PartitionProgress()
    for seq in range(1, 31):
        progress.observe(f"CA_1:{seq}", headers("turn.user"), 100.0)
    # The feed carried 31-36 but lost 34: resuming after 36 would never read it.
    for seq in (31, 32, 33, 35, 36):
        progress.observe(f"CA_1:{seq}", headers("turn.user", channel="websocket"), 100.0)
    progress.observe("CA_2:3", headers("turn.user"), 100.0)
    progress.observe("CA_2:9", headers("call.score", channel="webhook"), 100.0)
    progress.observe("CA_3:1", headers("turn.user", channel="websocket"), 100.0)
    progress.observe(
        "CA_4:1", [("pinecall-ingest-id", b"x"), ("pinecall-type", b"turn.user")], 100.0
    )
    assert progress.live() == {"CA_1": 30, "CA_2": 3}
    assert progress.ended() == {}


def test_an_ended_call_is_dated_by_its_terminal_entry() -> None:
    # The roster remembers a takeover's ended calls by these: dated "now", a partition's ended
    # calls outlasted every call that ended since, and those were read again from their start.
    progress = PartitionProgress()
    progress.observe("CA_1:3", headers("turn.user", event_time=b"50.0"), 60.0)
    progress.observe("CA_1:4", headers("call.score", event_time=b"70.5"), 80.0)
    progress.observe("CA_1:4", headers("call.score", event_time=b"75.0"), 90.0)  # a copy
    # Pinecall's clock ahead of ours: never later than the record was appended.
    progress.observe("CA_2:9", headers("call.score", event_time=b"500.0"), 200.0)
    # A backfill's record (no event time) or a damaged header: its append time.
    progress.observe("CA_3:2", headers("call.score"), 300.0)
    progress.observe("CA_4:2", headers("call.score", event_time=b"nan"), 400.0)
    progress.observe("CA_5:2", headers("call.score", event_time=b"soon"), 500.0)
    assert progress.ended() == {
        "CA_1": 70.5,
        "CA_2": 200.0,
        "CA_3": 300.0,
        "CA_4": 400.0,
        "CA_5": 500.0,
    }


def test_a_null_event_time_dates_the_end_by_its_append() -> None:
    # A later release's record (a rollback) is decided by its id header alone, its other headers
    # unchecked: a header without a value (Kafka allows it) raised here, failing the restore and
    # the partition at every restart.
    record = [
        (VERSION, b"2"),
        (ID, b"CA_1:4"),
        *headers("call.score"),
        (EVENT_TIME, cast(bytes, None)),
    ]
    event_id = decided_id(b"{}", record)
    assert event_id == "CA_1:4"
    progress = PartitionProgress()
    progress.observe(event_id, record, 80.0)
    assert progress.ended() == {"CA_1": 80.0}


def test_each_calls_key_hash_gives_its_partition_as_the_producer_chose_it() -> None:
    # Computed once per call as the restore reads: the takeover hashes nothing in one go.
    progress = PartitionProgress()
    calls = [f"CA_{n:04x}" for n in range(50)]
    for call in calls:
        progress.observe(f"{call}:1", headers("call.started"), 100.0)
        progress.observe(f"{call}:2", headers("call.score"), 100.0)
    hashes = progress.key_hashes()
    assert set(hashes) == set(calls)
    for partitions in (1, 12, 997):
        assert all(hashes[call] % partitions == partition_of(call, partitions) for call in calls)


def test_what_a_takeover_reads_is_kept_up_as_the_restore_reads_not_built_at_once() -> None:
    # Built from every call at the takeover, the ended calls and the hashes held the event loop
    # some 8 ms at 40,000 calls: the takeover is handed the progress's own.
    progress = PartitionProgress()
    for n in range(3):
        progress.observe(f"CA_{n}:1", headers("call.started"), 100.0)
    progress.observe("CA_1:2", headers("call.score"), 101.0)
    ended, hashes = progress.ended(), progress.key_hashes()
    assert progress.ended() is ended
    assert progress.key_hashes() is hashes
    assert ended == {"CA_1": 101.0}
    assert set(hashes) == {"CA_0", "CA_1", "CA_2"}
    assert progress.live() == {"CA_0": 1, "CA_2": 1}
