import hashlib
import json
import random
from typing import Any

import pytest

from bridge import jsoncodec
from bridge.normalise import Unrecognised
from bridge.pipeline import dead_letter_id
from bridge.simulator.eventstream import frame
from bridge.sources.calllog.eventstream import (
    Event,
    EventStreamParser,
    KeepAlive,
    Retry,
    TooLarge,
)
from bridge.sources.calllog.follow import (
    CallFollow,
    CaughtUp,
    Fill,
    Nothing,
    Publish,
    fit_json_text,
    page_entry,
)
from bridge.sources.reconnect import ReconnectPolicy


def follow(after: int = 0, rand: Any = lambda low, high: high) -> CallFollow:
    return CallFollow("CA_1", after, ReconnectPolicy(0.5, 30, 60, rand=rand))


def entry(seq: int, kind: str = "turn.user", **data: Any) -> Event:
    data = {k.removeprefix("data_"): v for k, v in data.items()}
    item = {"seq": seq, "ts": 1.0, "call": "CA_1", "agent": "a", "type": kind, "data": data}
    return Event(kind, jsoncodec.dumps(item).decode(), str(seq))


def test_a_fresh_follow_asks_from_the_start_without_last_event_id() -> None:
    f = follow()
    assert f.query() == {"after": "0"}
    assert f.headers() == {}


def test_the_resume_point_moves_only_when_kafka_acknowledged() -> None:
    f = follow(after=3)
    assert f.headers() == {"Last-Event-ID": "3"}
    step = f.step(entry(4))
    assert isinstance(step, Publish)
    assert step.seq == 4
    assert f.query() == {"after": "3"}  # read, not yet acknowledged: a cut re-reads it
    f.published(4)
    assert f.query() == {"after": "4"}
    assert f.headers() == {"Last-Event-ID": "4"}


def test_a_replay_of_acknowledged_entries_is_skipped() -> None:
    f = follow(after=5)
    assert f.step(entry(5)) == Nothing()
    assert f.step(entry(2)) == Nothing()
    assert isinstance(f.step(entry(6)), Publish)


def test_a_gap_fills_from_the_resume_point_to_its_end() -> None:
    f = follow(after=10)
    gap = entry(40, "log.gap", from_seq=12, to_seq=40, snapshot={})
    # 11 was read but not acknowledged on this connection: fetched again with the gap.
    assert f.step(gap) == Fill(11, 40)
    f.filled(40)
    assert f.query() == {"after": "40"}


def test_a_gap_already_covered_asks_for_nothing() -> None:
    f = follow(after=40)
    assert f.step(entry(40, "log.gap", from_seq=30, to_seq=40)) == Nothing()


def test_a_gap_without_to_seq_uses_its_own_seq() -> None:
    assert follow(after=1).step(entry(9, "log.gap", from_seq=2)) == Fill(2, 9)


def test_caught_up_is_a_marker_not_an_entry() -> None:
    f = follow(after=3)
    f.connected()
    assert f.step(entry(3, "log.caught_up", data_seq=3)) == CaughtUp(3)
    assert f.caught_up
    f.connected()
    assert not f.caught_up


def test_the_call_ends_once_its_score_is_acknowledged() -> None:
    f = follow()
    assert isinstance(f.step(entry(7, "call.score")), Publish)
    assert not f.ended
    f.published(7)
    assert f.ended


def test_a_score_not_acknowledged_does_not_end_the_call() -> None:
    f = follow()
    f.step(entry(7, "call.score"))
    f.not_published()
    f.published(6)
    assert not f.ended
    assert f.query() == {"after": "6"}


def test_a_score_read_from_a_gap_page_ends_the_call_once_acknowledged() -> None:
    f = follow(after=1)
    assert f.step(entry(3, "log.gap", from_seq=2, to_seq=3)) == Fill(2, 3)
    score = {"seq": 3, "ts": 1.0, "call": "CA_1", "agent": "a", "type": "call.score", "data": {}}
    f.paged([{**score, "seq": 2, "type": "turn.user"}, score])
    assert not f.ended  # read from the page, not yet in Kafka
    f.published(3)
    assert f.ended


def test_an_entry_too_large_to_read_becomes_a_note_at_its_seq() -> None:
    f = follow(after=3)
    note = {"call": "CA_1", "seq": 4, "type": "call.summary", "bytes": 2_000_000}
    assert f.step(TooLarge("call.summary", "4", 2_000_000)) == Publish(
        Unrecognised("too_large", note), 4
    )
    f.published(4)
    assert f.query() == {"after": "4"}
    assert f.step(TooLarge("call.summary", "2", 9)) == Nothing()  # a replay


def test_a_gap_too_large_to_read_is_still_a_gap_to_its_id() -> None:
    # The platform's log.gap carries the call's whole state: a long call's passes the limit.
    f = follow(after=10)
    assert f.step(TooLarge("log.gap", "40", 2_000_000)) == Fill(11, 40)
    assert f.query() == {"after": "10"}  # not moved past the gap's entries
    assert f.step(TooLarge("log.gap", "8", 2_000_000)) == Nothing()  # already acknowledged


def test_a_score_too_large_to_read_still_ends_the_call() -> None:
    f = follow()
    step = f.step(TooLarge("call.score", "9", 2_000_000))
    assert isinstance(step, Publish)
    assert step.seq == 9
    f.published(9)
    assert f.ended


def test_a_too_large_event_without_a_seq_is_noted_and_moves_nothing() -> None:
    f = follow(after=5)
    step = f.step(TooLarge("message", "", 2_000_000))
    assert step == Publish(
        Unrecognised(
            "too_large", {"call": "CA_1", "seq": None, "type": "message", "bytes": 2_000_000}
        ),
        None,
    )
    f.published(None)
    assert f.query() == {"after": "5"}


def test_not_json_dead_letters_as_it_came_at_its_seq() -> None:
    f = follow()
    note = {"call": "CA_1", "seq": 3, "type": "turn.user", "data": "{not json"}
    assert f.step(Event("turn.user", "{not json", "3")) == Publish(
        Unrecognised("invalid_json", note), 3
    )
    f.published(3)
    assert f.query() == {"after": "3"}
    assert f.step(Event("turn.user", "{not json", "2")) == Nothing()  # a replay


@pytest.mark.parametrize(
    "item",
    [
        Event("turn.user", "{not json", "3", has_id=False),
        TooLarge("turn.user", "3", 2_000_000, has_id=False),
    ],
)
def test_an_unreadable_entry_without_an_id_of_its_own_dead_letters_without_a_seq(
    item: Event | TooLarge,
) -> None:
    # The stream's last id is the previous entry's, already acknowledged: taken as this
    # entry's, it made the entry a replay of that one, dropped and counted nowhere.
    f = follow(after=3)
    step = f.step(item)
    assert isinstance(step, Publish)
    assert isinstance(step.item, Unrecognised)
    assert step.item.item["seq"] is None
    assert step.seq is None
    f.published(step.seq)
    assert f.query() == {"after": "3"}


PAST_ANY_SEQ = 2**40  # beyond MAX_SEQ: no call writes 2**31 lines
LONG_ID = "9" * 5000  # past int()'s 4,300 digits


@pytest.mark.parametrize(
    "item",
    [
        entry(PAST_ANY_SEQ),
        Event("turn.user", "{not json", str(PAST_ANY_SEQ)),
        Event("turn.user", "{not json", LONG_ID),
        TooLarge("turn.user", LONG_ID, 2_000_000),
    ],
    ids=["entry", "id", "long_id", "too_large_long_id"],
)
def test_a_seq_past_any_real_one_dead_letters_without_moving_the_resume_point(
    item: Event | TooLarge,
) -> None:
    # Taken as a seq, it moved the resume point past every entry the call would write: each
    # then skipped as a replay, lost and counted nowhere. An id of 5,000 digits made int() raise,
    # failing the follower at every retry of the same stream.
    f = follow(after=3)
    step = f.step(item)
    assert isinstance(step, Publish)
    assert step.seq is None
    if isinstance(step.item, Unrecognised):
        assert step.item.item["seq"] is None
    f.published(step.seq)
    assert f.query() == {"after": "3"}
    assert isinstance(f.step(entry(4)), Publish)


def test_a_gap_to_a_seq_past_any_real_one_ends_at_its_own() -> None:
    f = follow(after=3)
    assert f.step(entry(9, "log.gap", from_seq=4, to_seq=PAST_ANY_SEQ, snapshot={})) == Fill(4, 9)
    # Too large to read, its end unknown: the pages are read to the end of what is stored.
    assert f.step(TooLarge("log.gap", LONG_ID, 2_000_000)) == Fill(4, None)
    assert f.step(TooLarge("log.gap", str(PAST_ANY_SEQ), 2_000_000)) == Fill(4, None)


def test_a_score_that_is_not_json_still_ends_the_call() -> None:
    f = follow()
    step = f.step(Event("call.score", "{broken", "9"))
    assert isinstance(step, Publish)
    f.published(9)
    assert f.ended


def test_not_an_entry_dead_letters() -> None:
    f = follow()
    assert f.step(Event("x", '{"type": "x"}', "")) == Publish({"type": "x"}, None)
    assert f.step(Event("x", '{"seq": true}', "")) == Publish({"seq": True}, None)
    assert f.step(Event("x", "[1]", "")) == Publish([1], None)
    f.published(None)
    assert f.query() == {"after": "0"}


def test_keep_alives_change_nothing_and_retry_sets_the_floor() -> None:
    f = follow(rand=lambda low, high: 0.0)
    assert f.step(KeepAlive("ping")) == Nothing()
    assert f.retry_delay("closed", 100.0) == 0.0
    assert f.step(Retry(1000)) == Nothing()
    assert f.retry_delay("closed", 100.0) == 1.0


def test_retry_delays_back_off_past_the_servers_retry_and_are_capped() -> None:
    f = follow()
    f.step(Retry(1000))
    delays = [f.retry_delay("connect_error", None) for _ in range(2000)]
    assert delays[:8] == [1.5, 2.0, 3.0, 5.0, 9.0, 17.0, 31.0, 31.0]
    assert max(delays) == 31.0  # no overflow after thousands of attempts


def test_followers_cut_together_do_not_all_come_back_at_the_servers_retry() -> None:
    rng = random.Random(5)
    followers = [follow(rand=rng.uniform) for _ in range(50)]
    for f in followers:
        f.step(Retry(1000))
    first = [f.retry_delay("closed", 0.5) for f in followers]
    assert min(first) >= 1.0  # never sooner than the server asked
    assert len(set(first)) == len(first)  # spread by the jitter, not one burst at 1.0 s


def test_auth_failures_wait_longer() -> None:
    f = follow(rand=lambda low, high: 0.0)
    assert f.retry_delay("auth", None) >= 5.0


def test_sealed_ends_the_call() -> None:
    f = follow()
    f.sealed()
    assert f.ended


def test_a_not_json_entry_is_cut_to_what_a_record_takes_and_says_so() -> None:
    # Control characters escape to 6 bytes each: the raw limit alone would not fit the record.
    f = CallFollow("CA_1", 0, ReconnectPolicy(0.5, 30, 60), max_note_bytes=1_000)
    step = f.step(Event("turn.user", "{" + "\x01" * 900, "4"))
    assert isinstance(step, Publish)
    note = step.item.item
    assert note["truncated"] is True
    assert len(jsoncodec.dumps(note["data"])) <= 1_000
    assert note["data"].startswith("{\x01")
    small = f.step(Event("turn.user", "{oops", "5"))
    assert isinstance(small, Publish)
    assert "truncated" not in small.item.item


@pytest.mark.parametrize(
    ("kind", "data"),
    [("turn." + "x" * 10_040, "{" + "x" * 9_000), ("\x01" * 10_050, "x" * 20_000)],
    ids=["invalid_json", "too_large"],
)
def test_an_unreadable_entrys_note_fits_a_record_whatever_its_type(kind: str, data: str) -> None:
    # The parser bounds the `event:` line, not the type: nearly the limit, 6 bytes a control
    # character as JSON, beside text fitted to it. Kafka takes a note of BRIDGE_SSE__MAX_EVENT_BYTES
    # and a few bytes more (a record keeps 64 KiB beyond it); this one was twice that, or 6 times.
    limit = 10_000
    [item] = EventStreamParser.for_events_of(limit).feed(
        f"id: 4\nevent: {kind}\ndata: {data}\n\n".encode()
    )
    assert isinstance(item, Event | TooLarge)
    assert item.type == kind  # a broken server's type, read whole
    step = CallFollow("CA_1", 0, ReconnectPolicy(0.5, 30, 60), max_note_bytes=limit).step(item)
    assert isinstance(step, Publish)
    note = step.item.item
    assert len(jsoncodec.dumps(note)) <= limit + 2_048
    digest = hashlib.sha256(kind.encode()).hexdigest()
    assert note["type"] == kind[:256] + f"… ({len(kind)} chars, sha256 {digest})"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            TooLarge("call.summary", "3", 2_000_000, has_id=False, sha256="a" * 64),
            TooLarge("call.summary", "3", 2_000_000, has_id=False, sha256="b" * 64),
        ),
        (
            Event("turn.user", "{" + "x" * 2_000 + "1", "3", has_id=False),
            Event("turn.user", "{" + "x" * 2_000 + "2", "3", has_id=False),
        ),
        # Types of a broken server, past a type's bound, cut alike: alike, by their digest.
        (
            TooLarge("x" * 300 + "1", "3", 2_000_000, has_id=False, sha256="a" * 64),
            TooLarge("x" * 300 + "2", "3", 2_000_000, has_id=False, sha256="a" * 64),
        ),
        (
            Event("x" * 300 + "1", "{oops", "3", has_id=False),
            Event("x" * 300 + "2", "{oops", "3", has_id=False),
        ),
    ],
    ids=["too_large", "cut_invalid_json", "too_large_cut_type", "invalid_json_cut_type"],
)
def test_two_unreadable_entries_without_an_id_give_notes_apart_and_each_the_same_again(
    first: Event | TooLarge, second: Event | TooLarge
) -> None:
    # A dead letter's id is its note's content: notes alike were one id in the dedup stage,
    # which dropped the second entry's. Read again (a restart, another replica), one is alike.
    def note(item: Event | TooLarge) -> Any:
        step = CallFollow("CA_1", 2, ReconnectPolicy(0.5, 30, 60), max_note_bytes=1_000).step(item)
        assert isinstance(step, Publish)
        assert isinstance(step.item, Unrecognised)
        assert step.seq is None
        return step.item.item

    assert note(first) != note(second)
    assert note(first) == note(first)


@pytest.mark.parametrize("text", ["", "abc", "\x01" * 500, "é" * 700, '"' * 999])
def test_fit_json_text_never_exceeds_its_limit(text: str) -> None:
    cut, was_cut = fit_json_text(text, 200)
    assert len(jsoncodec.dumps(cut)) <= 200
    assert text.startswith(cut)
    assert was_cut == (cut != text)


def test_refusals_in_a_row_for_the_give_up_time_give_the_call_up() -> None:
    f = follow()
    assert f.refused(400, 100.0, 900) is None
    assert f.refused(400, 500.0, 900) is None
    assert f.refused(400, 1000.0, 900) == "refused"


def test_a_stream_that_reads_between_refusals_restarts_the_give_up_clock() -> None:
    f = follow()
    assert f.refused(400, 100.0, 900) is None
    f.connected()
    assert f.step(entry(3, "log.caught_up")) == CaughtUp(3)
    assert f.refused(400, 950.0, 900) is None
    assert f.refused(400, 1849.0, 900) is None
    assert f.refused(400, 1850.0, 900) == "refused"


def test_an_outage_between_refusals_does_not_run_the_give_up_clock() -> None:
    # Refused, then 5xx or no connection for 20 minutes (the platform down), then refused
    # again: the outage is no refusal of the log, and the call is still read once it is over.
    f = follow()
    assert f.refused(400, 100.0, 900) is None
    assert f.refused(400, 400.0, 900) is None  # 300 s of refusals
    f.unanswered()
    assert f.refused(400, 1600.0, 900) is None
    # The refusals before the outage still count: 300 + 599 s, then 300 + 600 s.
    assert f.refused(400, 2199.0, 900) is None
    assert f.refused(400, 2200.0, 900) == "refused"


def test_not_found_and_gone_give_up_at_once_even_after_an_outage() -> None:
    f = follow()
    f.unanswered()
    assert f.refused(404, 1.0, 900) == "not_found"
    assert f.refused(410, 1.0, 900) == "gone"


def test_403s_in_a_row_for_the_give_up_time_give_the_call_up_as_forbidden() -> None:
    # A log the key may not read held its MAX_CALLS slot for the life of the process.
    f = follow()
    assert f.refused(403, 100.0, 900) is None
    assert f.refused(403, 999.0, 900) is None
    assert f.refused(403, 1000.0, 900) == "forbidden"


def test_an_acknowledged_entry_between_refusals_restarts_the_give_up_clock() -> None:
    f = follow()
    assert f.refused(403, 100.0, 900) is None
    f.connected()
    f.published(4)
    assert f.refused(403, 1_000.0, 900) is None
    assert f.refused(403, 1_900.0, 900) == "forbidden"


def test_gap_pages_forbidden_behind_every_stream_give_the_call_up_as_forbidden() -> None:
    # Each attempt opens a stream whose first item is a gap, and the gap's pages answer 403:
    # the stream read nothing, so it must not start the clock over (the call held its slot).
    f = follow(after=10)
    for now in (100.0, 500.0):
        f.connected()
        assert f.step(entry(40, "log.gap", from_seq=11, to_seq=40)) == Fill(11, 40)
        assert f.refused(403, now, 900) is None
    f.connected()
    assert f.step(entry(40, "log.gap", from_seq=11, to_seq=40)) == Fill(11, 40)
    assert f.refused(403, 1_000.0, 900) == "forbidden"


def test_a_gap_too_large_to_read_without_an_id_is_read_to_the_end_of_the_stored_log() -> None:
    # No `id:` of its own: its end is unknown, but its entries are still in the pages.
    f = follow(after=10)
    assert f.step(TooLarge("log.gap", "7", 2_000_000, has_id=False)) == Fill(11, None)
    f.published(55)  # the pages' entries, acknowledged page by page
    f.filled(None)
    assert f.query() == {"after": "55"}
    assert f.step(entry(41, "turn.user")) == Nothing()  # the stream's replay of a page's entry


def test_the_calls_end_is_its_scores_time_once_acknowledged() -> None:
    f = follow()
    score = {"seq": 9, "ts": 1_700_000_000.5, "call": "CA_1", "type": "call.score", "data": {}}
    f.step(Event("call.score", jsoncodec.dumps(score).decode(), "9"))
    f.published(9)
    assert f.ended
    assert f.ended_at == 1_700_000_000.5


def streamed(item: dict[str, Any], max_bytes: int) -> Any:
    """What a follower publishes for `item` read from the stream, framed as Pinecall sends it."""
    parser = EventStreamParser.for_events_of(max_bytes)
    [read] = parser.feed(frame(item))
    step = follow().step(read)
    assert isinstance(step, Publish)
    return step.item


def sent_size(item: dict[str, Any]) -> int:
    """`item`'s data as Pinecall sends it (non-ASCII escaped), with its line feed."""
    return len(json.dumps(item, separators=(",", ":"))) + 1


@pytest.mark.parametrize("char", ["x", "é", "😀"])
@pytest.mark.parametrize("seq", [7, 2**31])
@pytest.mark.parametrize("over", [-1, 0, 1, 50, 500_000])
def test_a_page_entry_is_bounded_as_the_stream_bounds_it_into_the_same_note(
    over: int, seq: int, char: str
) -> None:
    # Pages passed every entry whole: one the stream notes at its seq was refused by Kafka even
    # as a dead letter, lost. Then measured as the bridge writes it, not as sent: past the
    # parser's line cap (`data: ` counted) or with non-ASCII (`\u00e9`, 6 bytes) the note's size
    # differed, so its dead-letter id (its content's) did: one entry read from the stream and
    # from a page was two dead letters; or an entry from a page, a note from the stream.
    limit = 4096
    item: dict[str, Any] = {"seq": seq, "ts": 1.0, "call": "CA_1", "agent": "a"}
    item |= {"type": "call.summary", "data": {"text": ""}}
    width = sent_size({"text": char}) - sent_size({"text": ""})
    item["data"] = {"text": char * ((limit - sent_size(item) + over) // width)}
    paged, on_stream = page_entry("CA_1", item, limit), streamed(item, limit)
    assert paged == on_stream
    assert (paged is item) == (sent_size(item) <= limit)
    if isinstance(paged, Unrecognised):
        assert paged.reason == "too_large"
        assert paged.item["seq"] == (7 if seq == 7 else None)
        assert "sha256" in paged.item or seq == 7
        assert dead_letter_id(paged.item) == dead_letter_id(on_stream.item)


def test_a_page_entry_too_large_past_any_seq_is_noted_with_its_digest_and_type_cut() -> None:
    item = {"seq": 2**31, "type": "t" * 300, "data": {"text": "x" * 2000}}
    paged = page_entry("CA_1", item, 1024)
    assert isinstance(paged, Unrecognised)
    assert paged.reason == "too_large"
    assert paged.item["seq"] is None
    # Past the line cap, as the parser hashes it: the whole line.
    line = b"data: " + jsoncodec.dumps(item) + b"\n"
    assert paged.item["sha256"] == hashlib.sha256(line).hexdigest()
    assert paged.item["type"].startswith("t" * 256 + "… (300 chars, sha256 ")
