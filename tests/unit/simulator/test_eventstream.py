"""The simulator's call-log doors over real HTTP: pages, SSE, the org feed, the list, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.simulator import Channel, Simulator, eventstream
from bridge.simulator.eventstream import cursor_of, frame
from bridge.sources.calllog.eventstream import Event, EventStreamParser, Item, KeepAlive, Retry
from bridge.sources.calllog.pages import fetch_pages
from tests import entries
from tests.polling import until
from tests.unit.simulator.conftest import AUTH, FAST, Stream, stream

CALL = "CA_test"


entry = partial(
    entries.entry, call=CALL, epoch=1_700_000_000.0, ephemeral=False, numbered_text="line"
)


def write(sim: Simulator, *entries: dict[str, Any]) -> None:
    for item in entries:
        sim.calllogs.append(item)


async def cut_off(sse: Stream) -> list[Item]:
    """What the client still parses before the connection breaks (an abort, or a bare EOF)."""
    items: list[Item] = []
    with contextlib.suppress(EOFError, aiohttp.ClientPayloadError):
        while True:
            items.append(await sse.item())
    return items


def events_url(sim: Simulator, call: str = CALL) -> str:
    return f"{sim.url}/v1/calls/{call}/events"


@contextlib.asynccontextmanager
async def past_replay(sim: Simulator, client: aiohttp.ClientSession) -> AsyncIterator[Stream]:
    """A live stream of the call's log past its replay: entry 1 written, read, caught up."""
    write(sim, entry(1))
    async with stream(client, events_url(sim)) as sse:
        await sse.events(2)
        yield sse


@pytest.fixture
async def quick() -> AsyncIterator[Simulator]:
    """Pings every 50 ms, and a reader buffer of 4 entries."""
    async with Simulator(replace(FAST, sse_ping_interval=0.05, sse_reader_buffer=4)) as sim:
        yield sim


def test_a_frame_is_id_event_and_the_entry_as_one_line_of_json() -> None:
    line = frame(entry(7))
    head, data = line.split(b"data: ")
    assert head == b"id: 7\nevent: turn.user\n"
    assert data.endswith(b"\n\n")
    assert jsoncodec.loads(data) == entry(7)


# é, €, emoji: on pinecall-runtime's SSE as `\u` escapes, an emoji as a surrogate pair.
SAID = "Jos\u00e9 pag\u00f3 15 \u20ac \U0001f389"


def test_sse_data_is_the_platforms_json_ascii_with_escapes_and_compact() -> None:
    """pinecall-runtime's gateway/_streams.py writes json.dumps(data, separators=(",", ":"))."""
    said = entry(7, text=SAID)
    data = frame(said).split(b"data: ")[1]
    assert data == json.dumps(said, separators=(",", ":")).encode() + b"\n\n"
    assert data.isascii()
    assert b"Jos\\u00e9" in data
    assert b"\\ud83c\\udf89" in data
    [event] = EventStreamParser().feed(frame(said))
    assert isinstance(event, Event)
    assert jsoncodec.loads(event.data) == said


async def test_a_stream_escapes_what_a_page_sends_as_utf8(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    # Pages (and the call list) are FastAPI's JSON answers: UTF-8 as is, compact.
    write(sim, entry(1, text=SAID), entry(2, "call.score"))
    asked = {**AUTH, "Accept": "text/event-stream"}
    async with client.get(events_url(sim), headers=asked) as answer:
        streamed = await answer.read()  # a sealed log's stream ends after call.score
    async with client.get(events_url(sim), headers=AUTH) as answer:
        page = await answer.read()
    assert streamed.isascii()
    assert json.dumps(SAID).encode() in streamed
    assert SAID.encode() in page
    entries = [entry(1, text=SAID), entry(2, "call.score")]
    assert page == jsoncodec.dumps({"entries": entries, "live": False, "next": 2})


@pytest.mark.parametrize(
    ("after", "last_event_id", "cursor"),
    [(None, None, 0), ("3", None, 3), (None, "5", 5), ("3", "5", 5), ("9", "5", 9)],
)
def test_the_cursor_is_the_larger_of_after_and_last_event_id(
    after: str | None, last_event_id: str | None, cursor: int
) -> None:
    assert cursor_of(after, last_event_id) == cursor


def test_a_bad_after_is_refused_and_a_bad_last_event_id_reads_as_zero() -> None:
    assert cursor_of("x", None) is None
    assert cursor_of("-1", None) is None
    assert cursor_of("2", "garbage") == 2


async def test_every_call_log_door_needs_the_api_key(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1))
    for path in (f"/v1/calls/{CALL}/events", "/v1/events", "/v1/sessions"):
        async with client.get(sim.url + path, headers={"Authorization": "Bearer no"}) as answer:
            assert answer.status == 401
    assert sim.stats.unauthorized == 3


async def test_an_unknown_call_is_404_and_bad_parameters_400(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1))
    async with client.get(events_url(sim, "CA_nobody"), headers=AUTH) as answer:
        assert answer.status == 404
        assert "CA_nobody" in (await answer.json())["detail"]
    for query in ("after=x", "limit=0", "limit=501"):
        async with client.get(f"{events_url(sim)}?{query}", headers=AUTH) as answer:
            assert answer.status == 400


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
async def test_an_unknown_call_is_a_sealed_log_read_to_its_end_where_configured(
    client: aiohttp.ClientSession, accept: str
) -> None:
    # The demo's: its bridge resumes an earlier simulator's unfinished calls, which a 404 gave
    # up with an ERROR line each. A known call is served as ever.
    async with Simulator(replace(FAST, unknown_calls_sealed=True)) as sim:
        write(sim, entry(1))
        headers = {**AUTH, "Accept": accept, "Last-Event-ID": "7"}
        async with client.get(events_url(sim, "CA_earlier"), headers=headers) as answer:
            assert answer.status == 204
        assert sim.stats.sealed_answers == 1
        async with client.get(f"{events_url(sim)}?limit=1", headers=AUTH) as answer:
            assert await answer.json() == {"entries": [entry(1)], "live": True, "next": 1}


async def test_pages_hold_stored_entries_only_and_a_sealed_log_read_to_the_end_is_204(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1, "call.started"), entry(2, ephemeral=True), entry(3), entry(4))
    async with client.get(f"{events_url(sim)}?limit=2", headers=AUTH) as answer:
        assert await answer.json() == {
            "entries": [entry(1, "call.started"), entry(3)],
            "live": True,
            "next": 3,
        }
    async with client.get(events_url(sim), headers={**AUTH, "Last-Event-ID": "3"}) as answer:
        assert await answer.json() == {"entries": [entry(4)], "live": True, "next": 4}
    async with client.get(f"{events_url(sim)}?after=4", headers=AUTH) as answer:
        assert await answer.json() == {"entries": [], "live": True, "next": None}
    write(sim, entry(5, "call.score"))
    async with client.get(f"{events_url(sim)}?after=4", headers=AUTH) as answer:
        assert await answer.json() == {
            "entries": [entry(5, "call.score")],
            "live": False,
            "next": 5,
        }
    for headers in ({}, {"Accept": "text/event-stream"}):
        async with client.get(f"{events_url(sim)}?after=5", headers={**AUTH, **headers}) as answer:
            assert answer.status == 204
    assert sim.stats.log_pages_served == 4
    assert sim.stats.sealed_answers == 2


async def test_the_bridge_page_client_reads_a_whole_log(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, *(entry(seq, ephemeral=seq % 3 == 0) for seq in range(1, 12)))
    write(sim, entry(12, "call.score"))
    pages = [
        page
        async for page in fetch_pages(
            client, sim.url, sim.config.api_key, CALL, env="sandbox", limit=4
        )
    ]
    read = [item["seq"] for page in pages for item in page.entries]
    assert read == [1, 2, 4, 5, 7, 8, 10, 11, 12]
    assert pages[-1].live is False


async def test_a_stream_replays_then_says_caught_up_then_goes_live_until_call_score(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1, "call.started"), entry(2, ephemeral=True), entry(3))
    async with stream(client, events_url(sim)) as sse:
        assert await sse.item() == Retry(1000)
        replayed = await sse.events(3)
        assert replayed[:2] == [entry(1, "call.started"), entry(3)]
        assert replayed[2]["type"] == "log.caught_up"
        assert (replayed[2]["seq"], replayed[2]["data"]) == (3, {"seq": 3})
        assert replayed[2]["ephemeral"] is True
        write(sim, entry(4, ephemeral=True), entry(5))
        assert await sse.events(2) == [entry(4, ephemeral=True), entry(5)]
        write(sim, entry(6, "call.score"))
        assert await sse.events(1) == [entry(6, "call.score")]
        assert [item for item in await sse.rest() if not isinstance(item, KeepAlive)] == []
    assert sim.stats.sse_entries_streamed == 5
    assert sim.stats.sse_connections_total == 1
    await until(lambda: sim.stats.sse_connections_open == 0)


async def test_a_stream_resumes_after_last_event_id_or_after(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, *(entry(seq) for seq in range(1, 6)))
    async with stream(client, events_url(sim), {"Last-Event-ID": "3"}) as sse:
        assert [item["seq"] for item in await sse.events(3)] == [4, 5, 5]
    async with stream(client, events_url(sim) + "?after=4") as sse:
        got = await sse.events(2)
        assert [(item["seq"], item["type"]) for item in got] == [
            (5, "turn.user"),
            (5, "log.caught_up"),
        ]


async def test_a_sealed_call_read_from_the_middle_ends_after_the_replay(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1), entry(2))
    sim.calllogs.seal(CALL)  # sealed without call.score (a log whose writer went away)
    async with stream(client, events_url(sim), {"Last-Event-ID": "1"}) as sse:
        rest = [item for item in await sse.rest() if isinstance(item, Event)]
    assert [(jsoncodec.loads(item.data)["seq"], item.type) for item in rest] == [
        (2, "turn.user"),
        (2, "log.caught_up"),
    ]


async def test_a_quiet_stream_is_pinged(quick: Simulator, client: aiohttp.ClientSession) -> None:
    async with past_replay(quick, client) as sse:
        assert await sse.item() == KeepAlive("ping")
    assert quick.stats.sse_pings_sent >= 1


async def test_a_slow_reader_gets_a_gap_then_goes_on_live(
    quick: Simulator, client: aiohttp.ClientSession
) -> None:
    async with past_replay(quick, client) as sse:
        # Written in one go, faster than any connection: the 4-entry buffer overflows at 6.
        write(quick, *(entry(seq) for seq in range(2, 9)))
        got = await sse.events(4)
    gap, caught_up, *live = got
    assert (gap["type"], gap["seq"]) == ("log.gap", 6)
    assert (gap["data"]["from_seq"], gap["data"]["to_seq"]) == (2, 6)
    # As the platform's: the call's state so far, written when the gap was (all 8 stored).
    state = gap["data"]["snapshot"]
    assert (state["seq"], state["live"], len(state["turns"])) == (8, True, 8)
    assert (caught_up["type"], caught_up["seq"]) == ("log.caught_up", 6)
    assert [item["seq"] for item in live] == [7, 8]
    assert quick.stats.sse_gaps == 1


async def test_the_entries_a_gap_lost_are_on_the_pages(
    quick: Simulator, client: aiohttp.ClientSession
) -> None:
    async with past_replay(quick, client) as sse:
        assert quick.sse_gap(CALL, entries=2) == 1
        write(quick, entry(2), entry(3, ephemeral=True), entry(4))
        gap, _, live = await sse.events(3)
    assert (gap["data"]["from_seq"], gap["data"]["to_seq"]) == (2, 3)
    assert live == entry(4)
    missing = [
        item["seq"]
        async for page in fetch_pages(
            client, quick.url, quick.config.api_key, CALL, after=gap["data"]["from_seq"] - 1
        )
        for item in page.entries
        if item["seq"] <= gap["data"]["to_seq"]
    ]
    assert missing == [2]  # 3 was ephemeral: never stored


async def test_a_cut_leaves_half_an_event_that_the_client_never_sees(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with past_replay(sim, client) as sse:
        assert sim.sse_cut() == 1
        assert not [item for item in await cut_off(sse) if isinstance(item, Event)]
        assert sse.parser.last_event_id == "1"
    assert sim.stats.sse_cuts == 1
    await until(lambda: sim.stats.sse_connections_open == 0)


async def test_a_cut_mid_event_loses_the_event_to_that_connection_only(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with past_replay(sim, client) as sse:
        sim.sse_silence()  # hold the next entry in the buffer, then cut inside it
        write(sim, entry(2))
        await asyncio.sleep(0.05)
        sim.sse_cut()
        assert not [item for item in await cut_off(sse) if isinstance(item, Event)]
    async with stream(client, events_url(sim), {"Last-Event-ID": "1"}) as sse:
        assert (await sse.events(1))[0] == entry(2)


async def test_a_silent_stream_writes_nothing_not_even_pings(
    quick: Simulator, client: aiohttp.ClientSession
) -> None:
    async with past_replay(quick, client) as sse:
        assert quick.sse_silence() == 1
        write(quick, entry(2))
        pings = quick.stats.sse_pings_sent
        with pytest.raises(TimeoutError):
            await sse.item(within=0.4)
        assert quick.stats.sse_pings_sent == pings
        quick.sse_cut()
    assert quick.stats.sse_silenced == 1


async def test_injected_5xx_answer_the_next_requests_then_it_recovers(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1))
    async with client.post(sim.url + "/_sim/sse/fail?count=2&status=502") as answer:
        assert await answer.json() == {"failing": 2, "status": 502, "on": "any"}
    statuses = []
    for accept in ("application/json", "text/event-stream", "application/json"):
        async with client.get(events_url(sim), headers={**AUTH, "Accept": accept}) as answer:
            statuses.append(answer.status)
    assert statuses == [502, 502, 200]
    assert sim.stats.sse_errors_injected == 2


@pytest.mark.parametrize(
    ("on", "failed"), [("stream", "text/event-stream"), ("page", "application/json")]
)
async def test_injected_5xx_scoped_to_one_kind_pass_the_other_by(
    sim: Simulator, client: aiohttp.ClientSession, on: str, failed: str
) -> None:
    write(sim, entry(1))
    write(sim, entry(2, "call.score"))  # a stream that answers 200 then ends, not hangs
    async with client.post(sim.url + f"/_sim/sse/fail?count=1&on={on}") as answer:
        assert await answer.json() == {"failing": 1, "status": 503, "on": on}
    passed = "application/json" if failed == "text/event-stream" else "text/event-stream"
    statuses = []
    for accept in (passed, passed, failed, failed):
        async with client.get(events_url(sim), headers={**AUTH, "Accept": accept}) as answer:
            await answer.read()
            statuses.append(answer.status)
    assert statuses == [200, 200, 503, 200]
    assert sim.stats.sse_errors_injected == 1


async def test_broken_pages_answer_200_cut_short_then_it_recovers(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1))
    async with client.post(sim.url + "/_sim/sse/break-pages?count=1") as answer:
        assert await answer.json() == {"breaking": 1}
    bodies = []
    for accept in ("text/event-stream", "application/json", "application/json"):
        async with client.get(events_url(sim), headers={**AUTH, "Accept": accept}) as answer:
            assert answer.status == 200
            if accept == "application/json":  # a stream is never broken: only pages
                bodies.append(await answer.read())
    with pytest.raises(jsoncodec.JSONDecodeError):
        jsoncodec.loads(bodies[0])
    assert [item["seq"] for item in jsoncodec.loads(bodies[1])["entries"]] == [1]
    assert bodies[1].startswith(bodies[0])
    assert sim.stats.log_pages_broken == 1


async def test_auth_is_refused_for_a_while(
    sim: Simulator, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the wall clock, a loaded CI box can take the 0.3 s to answer: the GET to refuse gets in.
    now = [0.0]
    monkeypatch.setattr(eventstream, "time", SimpleNamespace(monotonic=lambda: now[0]))
    write(sim, entry(1))
    async with client.post(sim.url + "/_sim/sse/refuse-auth?seconds=0.3") as answer:
        assert answer.status == 200
    now[0] = 0.29
    async with client.get(events_url(sim), headers=AUTH) as answer:
        assert answer.status == 401
    now[0] = 0.3
    async with client.get(events_url(sim), headers=AUTH) as answer:
        assert answer.status == 200
    assert sim.stats.sse_auth_refused == 1
    assert sim.stats.sse_log_auth_refused == 1
    assert sim.stats.sse_page_auth_refused == 1  # no `Accept: text/event-stream`


async def test_a_forbidden_calls_log_answers_403_and_the_others_are_read(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1))
    async with client.post(sim.url + "/_sim/sse/forbid?call=" + CALL + "") as answer:
        assert await answer.json() == {"forbidden": CALL}
    for accept in ("text/event-stream", "application/json"):
        async with client.get(events_url(sim), headers={**AUTH, "Accept": accept}) as answer:
            assert answer.status == 403
    async with client.get(events_url(sim, CALL + "_other"), headers=AUTH) as answer:
        assert answer.status == 404  # no such call: not forbidden, only unknown
    assert sim.stats.sse_forbidden == 2


async def test_a_hidden_call_list_answers_404_then_it_recovers(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    write(sim, entry(1))
    async with client.post(sim.url + "/_sim/sse/hide-list?count=1") as answer:
        assert await answer.json() == {"hiding": 1}
    statuses = []
    for _ in range(2):
        async with client.get(sim.url + "/v1/sessions", headers=AUTH) as answer:
            statuses.append(answer.status)
    assert statuses == [404, 200]
    assert sim.stats.lists_hidden == 1


@pytest.mark.parametrize(
    "path",
    [
        "/_sim/sse/fail?count=x",
        "/_sim/sse/fail?status=404",
        "/_sim/sse/fail?on=feed",
        "/_sim/sse/refuse-auth?seconds=-1",
        "/_sim/sse/break-pages?count=-1",
        "/_sim/sse/gap?entries=-2",
        "/_sim/sse/forbid",
        "/_sim/sse/hide-list?count=-1",
    ],
)
async def test_bad_fault_parameters_are_400(
    sim: Simulator, client: aiohttp.ClientSession, path: str
) -> None:
    async with client.post(sim.url + path) as answer:
        assert answer.status == 400


async def test_the_fault_controls_answer_over_http(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with past_replay(sim, client):
        for path, body in (
            ("/_sim/sse/gap?call=" + CALL + "&entries=1", {"readers": 1}),
            ("/_sim/sse/silence", {"silenced": 1}),
            ("/_sim/sse/cut", {"cut": 1}),
        ):
            async with client.post(sim.url + path) as answer:
                assert await answer.json() == body


async def test_the_org_feed_carries_lifecycle_entries_of_every_call(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with stream(client, sim.url + "/v1/events") as feed:
        assert await feed.item() == Retry(1000)
        await until(lambda: len(sim.calllogs.feed_readers) == 1)
        write(sim, entry(1, "call.started"), entry(2), entry(1, "call.started", call="CA_b"))
        write(sim, entry(3, "call.ended"), entry(4, "call.summary"), entry(5, "call.score"))
        write(sim, entry(2, "call.ended", call="CA_b"))
        got = await feed.events(4)
    # No call.summary or call.score: the platform's feed never carries them.
    assert [(item["call"], item["seq"], item["type"]) for item in got] == [
        (CALL, 1, "call.started"),
        ("CA_b", 1, "call.started"),
        (CALL, 3, "call.ended"),
        ("CA_b", 2, "call.ended"),
    ]
    assert got[0] == entry(1, "call.started")
    assert sim.stats.feed_entries_sent == 4


async def test_the_call_list_pages_newest_first(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    for number in range(3):
        write(sim, entry(1, "call.started", call=f"CA_{number}", ts=100.0 + number))
    async with client.get(sim.url + "/v1/sessions?limit=2", headers=AUTH) as answer:
        first = await answer.json()
    assert [row["call"] for row in first["calls"]] == ["CA_2", "CA_1"]
    assert (first["total"], first["next"]) == (3, "CA_1")
    assert first["calls"][0]["live"] is True
    query = f"?limit=2&before={first['next']}"
    async with client.get(sim.url + "/v1/sessions" + query, headers=AUTH) as answer:
        rest = await answer.json()
    assert [row["call"] for row in rest["calls"]] == ["CA_0"]
    assert rest["next"] is None
    async with client.get(sim.url + "/v1/sessions?limit=201", headers=AUTH) as answer:
        assert answer.status == 400


async def test_sse_traffic_writes_the_very_entries_the_ledger_records(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    report = await sim.run_traffic(calls=3, channel="sse", seed=7)
    durable = [record for record in report.records if record["durable"]]
    assert all(record["channels"] == ["sse"] for record in report.records)
    for call in {record["call"] for record in report.records}:
        log = sim.calllogs.get(call)
        assert log is not None
        assert log.sealed
        assert log.stored == [record["entry"] for record in durable if record["call"] == call]
        assert log.last_seq == max(r["seq"] for r in report.records if r["call"] == call)
    assert sim.ledger.expected_ids() == {
        f"{item['call']}:{item['seq']}" for log in sim.calllogs.logs.values() for item in log.stored
    }
    assert sim.stats.deliveries_ok == 0
    assert sim.stats.frames_sent == 0


async def test_all_channels_send_each_event_by_webhook_websocket_and_log(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    report = await sim.run_traffic(calls=1, channel="all", seed=3)
    assert {tuple(record["channels"]) for record in report.records} == {
        ("webhook", "websocket", "sse")
    }
    assert len(sim.calllogs.logs) == 1


@pytest.mark.parametrize("channel", ["both", "webhook", "websocket"])
async def test_every_channel_keeps_and_serves_the_call_logs(
    sim: Simulator, client: aiohttp.ClientSession, channel: Channel
) -> None:
    report = await sim.run_traffic(calls=2, channel=channel, seed=3)
    assert len(sim.calllogs.logs) == 2
    assert all(record["channels"][-1] == "sse" for record in report.records)
    for call in sim.calllogs.logs:
        async with client.get(f"{sim.url}/v1/calls/{call}/events", headers=AUTH) as answer:
            assert answer.status == 200
            page = await answer.json()
        assert page["entries"][-1]["type"] == "call.score"
        assert page["live"] is False


async def test_traffic_waits_for_org_feed_readers(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    run = asyncio.create_task(sim.run_traffic(calls=2, channel="sse", seed=5, feed_subscribers=1))
    await asyncio.sleep(0.1)
    assert not run.done()
    assert sim.stats.events_generated == 0
    async with stream(client, sim.url + "/v1/events") as feed:
        await run
        # Written after the traffic: the feed is in order, so nothing of it follows this one.
        write(sim, entry(1, "call.started", call="CA_after"))
        got = await feed.events(5)
    assert got[-1]["call"] == "CA_after"
    # The calls' lifecycle only: the platform's feed carries no call.summary or call.score.
    assert sorted(item["type"] for item in got[:-1]) == [
        "call.ended",
        "call.ended",
        "call.started",
        "call.started",
    ]
