import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge import jsoncodec
from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.sources.calllog import calllist
from bridge.sources.calllog.calllist import (
    CallListError,
    CallPage,
    CallRow,
    Horizon,
    ListRead,
    list_calls,
    page_is_last,
    parse_call_page,
    read_by,
    retry_delay,
    started_since,
    wanted,
)

T = 1_780_000_000.0  # a time of 2026: the list's times are read as the log's, none before 1973


def row(call: str, **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "call": call,
        "live": True,
        "last_seq": 4,
        "started_at": T,
        "ended_at": None,
    }
    return {**base, **over}


def test_a_page_of_calls() -> None:
    body = jsoncodec.dumps(
        {
            "calls": [
                row("CA_1"),
                row("CA_2", live=False, ended_at=T + 50, last_seq=True, started_at="x"),
                {"call": ""},
                "not a row",
            ],
            "total": 4,
            "next": "CA_2",
        }
    )
    page = parse_call_page(body)
    assert page.calls == (
        CallRow("CA_1", True, 4, T, None),
        CallRow("CA_2", False, None, None, T + 50),
    )
    assert page.next == "CA_2"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (T, T),
        (int(T), T),
        (T * 1000, T),  # milliseconds
        (str(int(T)), T),
        ("2026-05-28T20:26:40Z", T),
        ("2026-05-28T20:26:40", T),  # no offset: UTC
        (0, None),  # a field left unset
        (150, None),  # before 1973: an offset or a unit error, not a time
        ("soon", None),
        (True, None),
    ],
)
def test_the_lists_times_are_read_as_the_logs(value: object, seconds: float | None) -> None:
    body = jsoncodec.dumps({"calls": [row("CA_1", started_at=value, ended_at=value)]})
    (call,) = parse_call_page(body).calls
    assert (call.started_at, call.ended_at) == (seconds, seconds)


def test_an_end_in_milliseconds_from_before_the_window_is_not_wanted() -> None:
    # Read as seconds, a millisecond `ended_at` is a time far ahead: every ended call was
    # wanted, followed again from seq 0 and its whole log published again.
    now, ttl = T, 900.0
    ended_ms = (now - 2 * ttl) * 1000
    body = jsoncodec.dumps({"calls": [row("CA_old", live=False, ended_at=ended_ms)]})
    (call,) = parse_call_page(body).calls
    assert call.ended_at == now - 2 * ttl
    assert not wanted(call, now, ttl)


def test_a_start_in_milliseconds_still_ends_the_reading() -> None:
    older = jsoncodec.dumps({"calls": [row("b", started_at=(T - 100) * 1000)], "next": "b"})
    assert page_is_last(parse_call_page(older), oldest=T)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"calls": {}}'])
def test_not_a_call_list(body: bytes) -> None:
    with pytest.raises(CallListError):
        parse_call_page(body)


def test_reading_stops_past_the_lookback_or_at_the_end() -> None:
    newer = parse_call_page(jsoncodec.dumps({"calls": [row("a", started_at=T + 400)], "next": "a"}))
    older = parse_call_page(jsoncodec.dumps({"calls": [row("b", started_at=T - 50)], "next": "b"}))
    last = parse_call_page(jsoncodec.dumps({"calls": [row("c", started_at=T + 400)], "next": None}))
    assert not page_is_last(newer, oldest=T)
    assert page_is_last(older, oldest=T)
    assert page_is_last(last, oldest=T)


def test_the_horizon_reaches_back_to_every_call_the_last_read_showed_live() -> None:
    horizon = Horizon()
    # Nothing read yet: a live call may have started at any time, so the read goes to the cap.
    assert horizon.oldest(T, 3_600) == float("-inf")
    long_call = CallRow("long", True, 9, T - 7 * 3_600, None)
    ended_long_ago = CallRow("old", False, 9, T - 30 * 3_600, T - 20 * 3_600)
    horizon.read([CallRow("new", True, 2, T - 60, None), long_call, ended_long_ago], T)
    assert horizon.oldest(T + 60, 3_600) == T - 7 * 3_600
    # Every call ended: back to the lookback, or to the last read (calls since may be live).
    horizon.read([CallRow("new", False, 2, T - 60, T + 30)], T + 60)
    assert horizon.oldest(T + 120, 3_600) == T + 120 - 3_600
    assert horizon.oldest(T + 9_000, 3_600) == T + 60 - SKEW_ALLOWANCE_SECONDS


def test_a_read_ended_at_a_failed_page_keeps_reaching_back_to_the_last_reads_live_calls() -> None:
    horizon = Horizon()
    horizon.read([CallRow("long", True, 9, T - 7 * 3_600, None)], T)
    # Cut short before it reached the long call: that call may still be live.
    horizon.read([CallRow("new", True, 2, T + 30, None)], T + 60, failed=True)
    assert horizon.oldest(T + 120, 3_600) == T - 7 * 3_600
    # A read that ended well showed every live call: the long one has ended.
    horizon.read([CallRow("new", True, 2, T + 30, None)], T + 120)
    assert horizon.oldest(T + 180, 3_600) == T + 180 - 3_600


def test_a_call_ringing_at_a_read_is_reached_by_its_place_in_the_list() -> None:
    # The platform orders the list by each log's first line (a ringing call opens it) and fills
    # a row's started_at only at call.started: a call ringing at one read has none, and the next
    # read stopped at the page of a call that opened after it but started before the read's skew
    # allowance, so once answered and long it was never reached by a sweep again.
    horizon = Horizon()
    quick = CallRow("quick", False, 9, T - 90, T - 80)  # opened at T - 95, answered at T - 90
    horizon.read([quick, CallRow("ringing", True, 2, None, None)], T)  # opened at T - 100
    day = T + 86_400
    pages = [
        CallPage((CallRow("quick", False, 9, T - 90, T - 80),), "quick"),
        CallPage((CallRow("ringing", True, 40, T - 50, None),), "ringing"),  # answered at T - 50
        CallPage((CallRow("older", False, 9, T - 1_000, T - 900),), None),
    ]
    read = ListRead(horizon.oldest(day, 3_600), day - 3_600)
    for page in pages:
        if read.page(page):
            break
    assert "ringing" in [r.call for r in read.rows]


def test_a_call_the_list_shows_live_but_still_for_hours_stops_holding_reads_back() -> None:
    hour = 3_600.0
    horizon = Horizon(still_for=6 * hour)
    stuck = CallRow("stuck", True, 9, T - 30 * hour, None)
    long_call = CallRow("long", True, 100, T - 20 * hour, None)
    assert horizon.read([long_call, stuck], T) == []
    assert horizon.oldest(T + hour, hour) == T - 30 * hour
    assert (
        horizon.read([CallRow("long", True, 200, T - 20 * hour, None), stuck], T + 5 * hour) == []
    )
    assert horizon.oldest(T + 5 * hour, hour) == T - 30 * hour
    # 6 h at seq 9: the platform left it open. Said once; the long call, still writing, holds.
    later = CallRow("long", True, 300, T - 20 * hour, None)
    assert horizon.read([later, stuck], T + 6 * hour) == [stuck]
    assert horizon.oldest(T + 6 * hour, hour) == T - 20 * hour
    assert horizon.read([later, stuck], T + 7 * hour) == []
    assert horizon.oldest(T + 7 * hour, hour) == T - 20 * hour
    # Its seq moved after all: it holds the reads back again, and would be said again.
    assert (
        horizon.read([later, CallRow("stuck", True, 10, T - 30 * hour, None)], T + 8 * hour) == []
    )
    assert horizon.oldest(T + 8 * hour, hour) == T - 30 * hour


def test_a_stuck_call_stops_holding_reads_back_even_when_reads_end_at_failed_pages() -> None:
    # A failed read kept the last read's whole bound, the stuck call's place in it: found stuck
    # by a read cut by a rate limit past it, it held every read back until one ended well.
    hour = 3_600.0
    horizon = Horizon(still_for=6 * hour)
    stuck = CallRow("stuck", True, 9, T - 30 * hour, None)
    long_call = CallRow("long", True, 5, T - 20 * hour, None)
    horizon.read([long_call, stuck], T)
    # The read ended at a failed page past both: the stuck call is found, the long one moved.
    moved = CallRow("long", True, 6, T - 20 * hour, None)
    assert horizon.read([moved, stuck], T + 6 * hour, failed=True) == [stuck]
    assert horizon.oldest(T + 7 * hour, hour) == T - 20 * hour
    # Cut short before either: the long call may still be live, the stuck one still counts not.
    fresh = CallRow("fresh", True, 2, T + 7 * hour, None)
    assert horizon.read([fresh], T + 7 * hour, failed=True) == []
    assert horizon.oldest(T + 8 * hour, hour) == T - 20 * hour
    # The long call ended: no live call is left to reach back to but the stuck one.
    ended = CallRow("long", False, 7, T - 20 * hour, T + 8 * hour)
    assert horizon.read([fresh, ended], T + 8 * hour, failed=True) == []
    assert horizon.oldest(T + 9 * hour, hour) == T - SKEW_ALLOWANCE_SECONDS


def test_a_live_row_with_no_last_seq_is_timed_as_one_whose_last_seq_stands_still() -> None:
    # Only a row whose last_seq stood still was timed: a live row with none (a proxy or a
    # platform version that leaves it out) held every sweep back to its start for ever.
    hour = 3_600.0
    horizon = Horizon(still_for=6 * hour)
    blank = CallRow("blank", True, None, T - 30 * hour, None)
    assert horizon.read([blank], T) == []  # no last_seq is not "stuck at once"
    assert horizon.oldest(T + 5 * hour, hour) == T - 30 * hour
    assert horizon.read([blank], T + 5 * hour) == []
    assert horizon.oldest(T + 5 * hour, hour) == T - 30 * hour
    # Absent for 6 h: said once, and no longer read back to.
    assert horizon.read([blank], T + 6 * hour) == [blank]
    assert horizon.oldest(T + 7 * hour, hour) == T + 6 * hour - SKEW_ALLOWANCE_SECONDS
    assert horizon.read([blank], T + 7 * hour) == []
    # A last_seq appears: it moved, so it holds the reads back again.
    assert horizon.read([CallRow("blank", True, 4, T - 30 * hour, None)], T + 8 * hour) == []
    assert horizon.oldest(T + 9 * hour, hour) == T - 30 * hour


def test_stuck_rows_past_a_thousand_are_each_said_once_and_hold_no_read_back() -> None:
    # At most 1,000 stuck calls were kept, the first found forgotten: a read reaching it again
    # (a long call deeper down) timed it afresh, so it held the reads back for 6 h once that
    # call ended, was said again, and pushed out the next one, round and round.
    hour = 3_600.0
    horizon = Horizon(still_for=6 * hour)
    stuck = [CallRow(f"stuck{n}", True, 9, T - 30 * hour + n, None) for n in range(1_001, 0, -1)]
    deep = CallRow("deep", True, 5, T - 40 * hour, None)
    horizon.read([*stuck, deep], T)
    said = horizon.read([*stuck, CallRow("deep", True, 6, T - 40 * hour, None)], T + 6 * hour)
    assert said == stuck
    for at in range(7, 20):  # the long call writes on: every read reaches the stuck rows
        moving = CallRow("deep", True, 6 + at, T - 40 * hour, None)
        assert horizon.read([*stuck, moving], T + at * hour) == []
    # The long call ended: no stuck row holds the reads back.
    ended = CallRow("deep", False, 40, T - 40 * hour, T + 20 * hour)
    assert horizon.read([*stuck, ended], T + 20 * hour) == []
    assert horizon.oldest(T + 21 * hour, hour) == T + 20 * hour - SKEW_ALLOWANCE_SECONDS
    assert horizon.forgotten == 0


def test_past_its_bound_the_stuck_call_shown_least_recently_is_forgotten_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calllist, "MAX_STUCK", 2)
    hour = 3_600.0
    horizon = Horizon(still_for=6 * hour)
    a, b, c = (
        CallRow(call, True, 9, T - n * hour, None) for n, call in ((10, "a"), (20, "b"), (30, "c"))
    )
    horizon.read([a, b, c], T)
    assert horizon.read([a, b, c], T + 6 * hour) == [a, b, c]
    assert horizon.forgotten == 1  # c, the deepest: a read reaching it shows a and b too
    assert horizon.read([a, b], T + 7 * hour) == []
    assert horizon.forgotten == 1


def _overflowing_reads(horizon: Horizon) -> tuple[list[list[str]], list[int], float]:
    """What a horizon keeping 10 stuck calls says (calls said, forgotten counts, the bound of
    the next read) through reads that show 100 stuck calls at once."""
    hour = 3_600.0
    rows = [CallRow(f"c{n}", True, 9, T - 10 * hour - n * 60, None) for n in range(100)]
    reads = [
        (rows, T),
        (rows, T + 6 * hour),  # 90 forgotten in one read
        # A kept call shown again with a forgotten one: the next forgotten is the deepest kept.
        ([rows[0], rows[10]], T + 7 * hour),
        (rows[1:10], T + 8 * hour),
    ]
    said, forgotten = [], []
    for shown, began in reads:
        said.append([row.call for row in horizon.read(shown, began)])
        forgotten.append(horizon.forgotten)
    return said, forgotten, horizon.oldest(T + 9 * hour, hour)


def test_many_stuck_calls_past_the_bound_in_one_read_are_forgotten_as_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calllist, "MAX_STUCK", 10)
    rebuilt = _overflowing_reads(Horizon(still_for=6 * 3_600.0))
    monkeypatch.setattr(calllist, "_FORGET_IN_PLACE", 1_000)  # every one deleted in place
    assert rebuilt == _overflowing_reads(Horizon(still_for=6 * 3_600.0))
    said, forgotten, oldest = rebuilt
    assert [len(calls) for calls in said] == [0, 100, 1, 0]
    assert forgotten == [0, 90, 91, 91]  # c10..c99, the deepest; then c9 for c10, said again
    assert said[2] == ["c10"]
    assert oldest == T - 10 * 3_600.0 - 9 * 60  # c9, forgotten, timed afresh: it holds back


def test_a_read_owes_the_pages_to_the_lookback_and_tries_those_past_it() -> None:
    def page(call: str, started: float) -> CallPage:
        return CallPage((CallRow(call, False, 3, started, started + 60),), call)

    read = ListRead(oldest=T - 10_000, lookback=T - 1_000)
    assert read.fatal()  # nothing read yet: the lookback's calls are owed
    assert not read.page(page("a", T - 500))
    assert read.fatal()
    assert not read.page(page("b", T - 1_500))  # reaches past the lookback, not the horizon
    assert not read.fatal()  # what follows is best effort: a failure ends the read there
    assert read.page(page("c", T - 20_000))
    cut = read.listing(failed="the call list answered 429")
    assert [r.call for r in cut.rows] == ["a", "b", "c"]
    assert (cut.past_lookback, cut.more, cut.failed) == (True, None, "the call list answered 429")
    # Without a lookback of its own (a backfill), every page down to `oldest` is owed.
    backfill = ListRead(oldest=T - 1_000, lookback=T - 1_000)
    assert backfill.page(page("b", T - 1_500))
    assert not ListRead(oldest=T - 10_000, lookback=T - 1_000).listing(more="x").past_lookback


async def test_a_page_past_the_lookback_that_fails_ends_the_read_with_what_it_read() -> None:
    # One 429 past the lookback threw the whole read away: a deep read under a rate limit never
    # finished, and the calls of its first pages were never announced.
    status = {"CA_7": 429}  # the page after CA_7: CA_6's

    async def sessions(request: web.Request) -> web.Response:
        before = request.query.get("before")
        if before in status:
            return web.Response(status=status[before])
        n = int(before[3:]) if before else 10
        rows = [row(f"CA_{n - 1}", started_at=T + n - 1)]
        return web.json_response({"calls": rows, "next": f"CA_{n - 1}" if n > 1 else None})

    app = web.Application()
    app.router.add_get("/v1/sessions", sessions)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url("/v1/sessions"))
        cut = await list_calls(session, url, {}, oldest=0, lookback=T + 8.5, timeout_seconds=5)
        assert [r.call for r in cut.rows] == ["CA_9", "CA_8", "CA_7"]  # CA_8's reached T + 8.5
        assert (cut.past_lookback, cut.failed) == (True, "the call list answered 429")
        with pytest.raises(CallListError, match="429"):  # CA_6's page is the one reaching it
            await list_calls(session, url, {}, oldest=0, lookback=T + 6.5, timeout_seconds=5)
        with pytest.raises(CallListError, match="429"):  # no lookback given: every page owed
            await list_calls(session, url, {}, oldest=0, timeout_seconds=5)
        status.clear()
        whole = await list_calls(session, url, {}, oldest=0, lookback=T + 8.5, timeout_seconds=5)
    assert len(whole.rows) == 10
    assert (whole.past_lookback, whole.more, whole.failed) == (True, None, None)


def test_wanted_are_live_calls_and_calls_ended_within_the_window() -> None:
    now, ttl = 10_000.0, 900.0
    assert wanted(CallRow("live", True, 3, 1.0, None), now, ttl)
    assert wanted(CallRow("recent", False, 9, 1.0, now - 600), now, ttl)
    assert not wanted(CallRow("old", False, 9, 1.0, now - 1000), now, ttl)
    assert not wanted(CallRow("unknown end", False, 9, 1.0, None), now, ttl)


def test_a_sealed_call_with_no_end_is_wanted_while_its_start_is_within_the_window() -> None:
    # A sealed row whose ended_at is null (its call.ended unreadable, or never written) was never
    # wanted: its follower lost, only a backfill read its last lines. It ended after it started,
    # so a start within the window puts its end there too; one with neither is left alone.
    now, ttl = 10_000.0, 900.0
    recent = CallRow("recent start", False, 9, now - 600, None)
    assert wanted(recent, now, ttl)
    assert read_by(recent, ttl) == now - 600 + ttl - SKEW_ALLOWANCE_SECONDS
    assert not wanted(CallRow("old start", False, 9, now - 1_000, None), now, ttl)
    assert not wanted(CallRow("no times", False, 9, None, None), now, ttl)
    # Its end, where known, dates it: a start is only the bound when the end is missing.
    assert not wanted(CallRow("long call", False, 9, now - 600, now - 1_000), now, ttl)


def test_a_call_ended_at_the_windows_edge_by_a_clock_ahead_is_left_alone() -> None:
    # `ended_at` is Pinecall's clock: one 60 s ahead of ours dated a call that ended just before
    # the dedup window inside it, and its whole log was read again and published as copies.
    now, ttl = 10_000.0, 900.0
    ended_just_before = now - ttl - 30  # by our clock
    ahead = CallRow("ahead", False, 9, 1.0, ended_just_before + 60)  # as Pinecall dates it
    assert not wanted(ahead, now, ttl)
    assert wanted(CallRow("inside", False, 9, 1.0, now - ttl + SKEW_ALLOWANCE_SECONDS), now, ttl)
    assert not wanted(CallRow("short", False, 9, 1.0, now), now, ttl=30)  # TTL below the skew


def test_calls_started_since_come_oldest_first_and_once() -> None:
    rows = [
        CallRow("c", True, 3, 300.0, None),
        CallRow("b", False, 9, 200.0, 250.0),
        CallRow("b", False, 9, 200.0, 250.0),  # a page boundary that moved under a new call
        CallRow("at", False, 9, 100.0, 150.0),
        CallRow("before", False, 9, 99.9, 150.0),
        CallRow("never started", True, 1, None, None),
    ]
    assert started_since(rows, 100.0) == ["at", "b", "c", "never started"]


def test_a_call_that_never_started_is_backfilled_by_its_end() -> None:
    # Unanswered, it has no started_at, as Pinecall's own export dates it by its end instead:
    # left out, its call.ringing, call.ended and call.score were never backfilled.
    rows = [
        CallRow("started", False, 9, 200.0, 250.0),
        CallRow("unanswered", False, 3, None, 150.0),
        CallRow("unanswered before", False, 3, None, 50.0),
        CallRow("no times at all", False, 3, None, None),
    ]
    assert started_since(rows, 100.0) == ["unanswered", "started"]


async def test_a_list_page_over_the_size_cap_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sessions(_: web.Request) -> web.Response:
        return web.json_response({"calls": [row("CA_1")], "next": None})

    app = web.Application()
    app.router.add_get("/v1/sessions", sessions)
    monkeypatch.setattr(calllist, "MAX_PAGE_BYTES", 50)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        with pytest.raises(CallListError, match="too large"):
            await list_calls(
                session, str(server.make_url("/v1/sessions")), {}, oldest=0, timeout_seconds=5
            )
        monkeypatch.setattr(calllist, "MAX_PAGE_BYTES", 500)
        listing = await list_calls(
            session, str(server.make_url("/v1/sessions")), {}, oldest=0, timeout_seconds=5
        )
    assert [r.call for r in listing.rows] == ["CA_1"]
    assert listing.more is None


async def test_a_list_read_to_its_page_cap_says_where_to_go_on() -> None:
    # Reading stopped at the cap as if the list had ended: no warning, a backfill "succeeded".
    seen: list[str | None] = []

    async def sessions(request: web.Request) -> web.Response:
        before = request.query.get("before")
        seen.append(before)
        n = int(before[3:]) if before else 10
        rows = [row(f"CA_{n - 1}", started_at=T + n - 1)]
        return web.json_response({"calls": rows, "next": f"CA_{n - 1}" if n > 1 else None})

    app = web.Application()
    app.router.add_get("/v1/sessions", sessions)
    url_path = "/v1/sessions"
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url(url_path))
        capped = await list_calls(session, url, {}, oldest=T, timeout_seconds=5, max_pages=3)
        assert [r.call for r in capped.rows] == ["CA_9", "CA_8", "CA_7"]
        assert capped.more == "CA_7"
        rest = await list_calls(
            session, url, {}, oldest=T, timeout_seconds=5, max_pages=30, before=capped.more
        )
    assert [r.call for r in rest.rows] == [f"CA_{n}" for n in range(6, -1, -1)]
    assert rest.more is None
    assert seen[3] == "CA_7"


def test_a_list_answered_404_is_asked_again_but_not_before_some_minutes() -> None:
    missing = CallListError("no call list here (404)", unsupported=True)
    assert retry_delay(missing, 0.5) == calllist.MISSING_RETRY_SECONDS
    assert retry_delay(missing, 900.0) == 900.0
    assert retry_delay(CallListError("the call list answered 503"), 0.5) == 0.5
