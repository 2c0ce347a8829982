from __future__ import annotations

from typing import Any

import pytest

from bridge.simulator.calllog import CallLog, CallLogs, Gap, LogReader, snapshot
from tests.entries import entry


def seqs(items: list[Any]) -> list[Any]:
    return [item if isinstance(item, Gap) else item["seq"] for item in items]


def test_only_durable_entries_are_stored_so_a_replay_has_holes() -> None:
    log = CallLog("CA_1", "support")
    for seq in range(1, 6):
        log.append(entry(seq, ephemeral=seq in (2, 3)))
    assert log.last_seq == 5
    assert seqs(log.since(0)) == [1, 4, 5]
    assert seqs(log.since(1)) == [4, 5]
    assert seqs(log.since(2, limit=1)) == [4]
    assert log.since(5) == []


def test_call_score_seals_the_log_and_nothing_more_is_written() -> None:
    log = CallLog("CA_1", "support")
    log.append(entry(1, "call.started"))
    log.append(entry(2, "call.score"))
    assert log.sealed
    with pytest.raises(ValueError, match="sealed"):
        log.append(entry(3))


def test_seqs_must_grow() -> None:
    log = CallLog("CA_1", "support")
    log.append(entry(2))
    with pytest.raises(ValueError, match="not past"):
        log.append(entry(2))


def test_a_reader_gets_live_entries_in_order_ephemeral_ones_included() -> None:
    log = CallLog("CA_1", "support")
    woken: list[int] = []
    reader = log.subscribe(0, capacity=10, notify=lambda: woken.append(1))
    log.append(entry(1))
    log.append(entry(2, ephemeral=True))
    assert seqs(reader.take()) == [1, 2]
    assert reader.delivered == 2
    assert woken == [1, 1]
    assert reader.take() == []


def test_a_reader_skips_what_its_backlog_already_delivered() -> None:
    log = CallLog("CA_1", "support")
    reader = log.subscribe(0, capacity=10)
    log.append(entry(1))
    log.append(entry(2))
    reader.mark_delivered(1)  # written from the backlog by the connection
    assert seqs(reader.take()) == [2]


def test_a_full_buffer_becomes_a_gap_and_the_reader_goes_on_live() -> None:
    log = CallLog("CA_1", "support")
    reader = log.subscribe(3, capacity=2)
    for seq in (4, 5, 6, 7):
        log.append(entry(seq))
    # 4 and 5 filled the buffer; 6 overflowed it: all three are one gap, then 7 is live.
    assert seqs(reader.take()) == [Gap(4, 6), 7]
    assert reader.gaps == 1
    assert reader.delivered == 7


def test_a_forced_gap_drops_the_buffer_and_the_next_entries() -> None:
    log = CallLog("CA_1", "support")
    reader = log.subscribe(0, capacity=10)
    log.append(entry(1))
    assert reader.force_gap(2)
    for seq in (2, 3, 4):
        log.append(entry(seq))
    assert seqs(reader.take()) == [Gap(1, 3), 4]


def test_a_forced_gap_still_open_when_the_log_seals_is_reported() -> None:
    log = CallLog("CA_1", "support")
    reader = log.subscribe(0, capacity=10)
    reader.force_gap(5)
    log.append(entry(1))
    log.append(entry(2, "call.score"))
    assert reader.ended
    assert seqs(reader.take()) == [Gap(1, 2)]
    assert reader.drained


def test_a_forced_gap_with_nothing_to_drop_does_nothing() -> None:
    reader = CallLog("CA_1", "support").subscribe(0, capacity=10)
    assert reader.force_gap(0) is False
    assert reader.take() == []


def test_subscribing_to_a_sealed_log_gives_an_ended_reader() -> None:
    log = CallLog("CA_1", "support")
    log.append(entry(1, "call.score"))
    reader = log.subscribe(0, capacity=10)
    assert reader.ended
    assert not log.readers
    assert isinstance(reader, LogReader)


def test_pages_say_the_last_seq_read_and_whether_the_call_is_live() -> None:
    logs = CallLogs()
    for seq in (1, 2, 3):
        logs.append(entry(seq, ephemeral=seq == 2))
    log = logs.get("CA_1")
    assert log is not None
    page = logs.page(log, 0, 1)
    assert (seqs(page.entries), page.live, page.next) == ([1], True, 1)
    assert logs.page(log, 1, 500).body() == {"entries": [entry(3)], "live": True, "next": 3}
    logs.seal("CA_1")
    assert logs.page(log, 3, 500).body() == {"entries": [], "live": False, "next": None}


def test_the_org_feed_carries_lifecycle_entries_only_never_summary_or_score() -> None:
    # As the platform's ORG_EVENTS (pinecall-runtime log/logs.py): a call's end is its
    # call.ended there; call.summary and call.score are only in the call's own log.
    logs = CallLogs()
    reader = logs.subscribe_feed(10)
    for seq, kind in enumerate(
        ("call.started", "turn.user", "agent.state", "call.ended", "call.summary", "call.score"),
        start=1,
    ):
        logs.append(entry(seq, kind))
    fed = reader.take()
    assert [item["type"] for item in fed] == ["call.started", "call.ended"]
    assert fed == [entry(1, "call.started"), entry(4, "call.ended")]


def test_a_feed_reader_that_falls_behind_is_dropped() -> None:
    logs = CallLogs()
    reader = logs.subscribe_feed(1)
    logs.append(entry(1, "call.started", call="CA_1"))
    logs.append(entry(1, "call.started", call="CA_2"))
    assert reader.overflowed
    assert reader.take() == []


def test_the_call_list_is_newest_first_and_pages_with_before() -> None:
    logs = CallLogs()
    for number, started in ((1, 10.0), (2, 30.0), (3, 20.0)):
        logs.append(entry(1, "call.started", call=f"CA_{number}", ts=started))
    logs.append(entry(2, "call.ended", call="CA_2", ts=40.0))
    first = logs.listing(2)
    assert [row["call"] for row in first["calls"]] == ["CA_2", "CA_3"]
    assert first["total"] == 3
    assert first["next"] == "CA_3"
    assert first["calls"][0]["status"] == "ended"
    assert first["calls"][0]["last_seq"] == 2
    assert first["calls"][0]["started_at"] == 30.0
    rest = logs.listing(2, before=first["next"])
    assert [row["call"] for row in rest["calls"]] == ["CA_1"]
    assert rest["next"] is None
    assert logs.listing(5, agent="nobody") == {"calls": [], "total": 0, "next": None}


def test_the_call_list_orders_by_the_logs_first_line_as_the_platform_does() -> None:
    # pinecall-runtime orders by the head's start, the log's first line (call.ringing), not by
    # call.started: a call still ringing sorted last here, so no test saw a bridge meet the
    # platform's order. The row's own started_at is call.started's, null while it rings.
    logs = CallLogs()
    logs.append(entry(1, "call.ringing", call="CA_long", ts=10.0))  # answered last
    logs.append(entry(1, "call.ringing", call="CA_quick", ts=20.0))
    logs.append(entry(2, "call.started", call="CA_quick", ts=21.0))
    logs.append(entry(1, "call.ringing", call="CA_ringing", ts=30.0))
    logs.append(entry(1, "log.noise", call="CA_empty", ts=25.0))  # nothing stored: no row
    logs.append(entry(2, "call.started", call="CA_long", ts=40.0))
    first = logs.listing(2)
    assert [row["call"] for row in first["calls"]] == ["CA_ringing"]
    assert first["calls"][0]["started_at"] is None
    assert (first["next"], first["total"]) == ("CA_empty", 4)
    rest = logs.listing(2, before=first["next"])
    assert [(row["call"], row["started_at"]) for row in rest["calls"]] == [
        ("CA_quick", 21.0),
        ("CA_long", 40.0),
    ]
    assert rest["next"] is None
    assert logs.listing(2, before="CA_forgotten") == {"calls": [], "total": 4, "next": None}


def test_a_rows_status_and_last_seq_are_folded_from_the_stored_lines_as_the_platforms() -> None:
    # pinecall-runtime folds a row from the stored lines (calls/service/lists.py, reducer.py):
    # `last_seq` is the last stored line's seq, and a call not yet answered is "ringing" or
    # "dialing". The simulator counted ephemeral lines and called every unended call "active".
    logs = CallLogs()
    logs.append(entry(1, "call.ringing", call="CA_in", ts=10.0))
    logs.append(entry(2, "user.transcript", call="CA_in", ts=11.0, ephemeral=True))
    logs.append(entry(1, "call.dialing", call="CA_out", ts=20.0))
    logs.append(entry(1, "turn.user", call="CA_chat", ts=30.0))
    rows = {row["call"]: row for row in logs.listing(10)["calls"]}
    assert {call: (row["status"], row["last_seq"]) for call, row in rows.items()} == {
        "CA_in": ("ringing", 1),
        "CA_out": ("dialing", 1),
        "CA_chat": ("idle", 1),
    }
    logs.append(entry(3, "call.started", call="CA_in", ts=12.0))
    logs.append(entry(4, "agent.transcript", call="CA_in", ts=13.0, ephemeral=True))
    [answered] = [row for row in logs.listing(10)["calls"] if row["call"] == "CA_in"]
    assert (answered["status"], answered["last_seq"]) == ("active", 3)
    assert logs.logs["CA_in"].last_seq == 4  # the seq given out still counts every line
    logs.append(entry(5, "call.ended", call="CA_in", ts=14.0))
    [ended] = [row for row in logs.listing(10)["calls"] if row["call"] == "CA_in"]
    assert ended["status"] == "ended"


def test_sealed_logs_nobody_reads_are_forgotten_beyond_the_retention() -> None:
    logs = CallLogs(retain=2)
    kept = logs.append(entry(1, call="CA_read"))
    reader = kept.subscribe(0, capacity=10)
    for number in range(4):
        logs.append(entry(1, "call.score", call=f"CA_{number}"))
    assert set(logs.logs) == {"CA_read", "CA_3"}
    assert not reader.ended


def test_a_snapshot_is_the_state_folded_from_the_stored_lines() -> None:
    log = CallLog("CA_1", "support")
    log.append(entry(1, "call.started"))
    log.append(entry(2, "turn.user", text="hello"))
    log.append(entry(3, "user.transcript", ephemeral=True, text="hel"))
    log.append(entry(4, "agent.state", state="thinking"))
    log.append(entry(5, "turn.agent", text="hi there"))
    assert snapshot(log) == {
        "seq": 5,
        "status": "active",
        "user_state": None,
        "agent_state": "thinking",
        "live": True,
        "turns": [{"role": "user", "text": "hello"}, {"role": "agent", "text": "hi there"}],
        "app_state": {},
    }
