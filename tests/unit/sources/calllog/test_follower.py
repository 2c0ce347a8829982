"""The follower's shell against a small real HTTP server: what it sends, how it resumes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge import connlimit, jsoncodec, logthrottle
from bridge.config import PinecallSettings, SseSettings
from bridge.metrics import Metrics
from bridge.normalise import Event, Unrecognised, normalise, split_body
from bridge.simulator import Simulator, SimulatorConfig, wire
from bridge.sources.calllog import follower as follower_module
from bridge.sources.calllog.follow import REASONS
from bridge.sources.calllog.follower import Follower
from bridge.sources.calllog.keygate import KeyGate
from bridge.sources.calllog.pageslots import PageSlots
from bridge.sources.calllog.publish import Publisher
from bridge.sources.reconnect import ReconnectPolicy
from tests.entries import entry
from tests.metrics import sample
from tests.polling import until
from tests.sockets import SpentDescriptors
from tests.unit.sources.backoffs import QUICK_BACKOFF

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


def frame(item: dict[str, Any]) -> bytes:
    return f"id: {item['seq']}\nevent: {item['type']}\ndata: ".encode() + (
        jsoncodec.dumps(item) + b"\n\n"
    )


async def stream(
    request: web.Request,
    *chunks: bytes,
    hold: float = 0.0,
    cut: bool = False,
    head: bytes = b"retry: 10\n\n",
) -> web.StreamResponse:
    """`chunks` as an SSE stream after `head`; `cut`: the connection is then closed without the
    last chunk."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(head)
    for chunk in chunks:
        await response.write(chunk)
    if hold:
        await asyncio.sleep(hold)
    if cut:
        assert request.transport is not None
        request.transport.close()
    return response


class FakePublisher:
    """Acknowledges everything unless told to refuse (as a stopping source's publisher does)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.times: list[float] = []
        self.refuse = False

    async def publish(self, items: list[Any], times: list[float] = ()) -> bool:  # type: ignore[assignment]
        if self.refuse:
            return False
        self.batches.append(list(items))
        self.times.extend(times)
        return True

    @property
    def seqs(self) -> list[int]:
        """The seqs published; a note of an entry too large to read counts at its seq."""
        return [
            (item.item if isinstance(item, Unrecognised) else item)["seq"]
            for batch in self.batches
            for item in batch
        ]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []
        app = web.Application()
        app.router.add_get("/v1/calls/{call}/events", self._handle)
        self.server = TestServer(app)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), dict(request.query)))
        return await self.handler(request, len(self.requests))


# The followers' read and connect timeouts (s). A test counting requests or reconnects must not
# race them: at 0.3 s and 0.2 s (0.5 s for an answer's head), a loaded box's stall was an
# attempt that timed out, one more request and reconnect than the test's script. SLACK is
# above any stall and below run_followers' 10 s; SHORT only where a timeout is what is tested.
SLACK = (5.0, 2.0)
SHORT = (0.3, 0.2)


def first_heads_time_out(monkeypatch: pytest.MonkeyPatch, module: ModuleType, first: int) -> None:
    """The first `first` requests `module` sends wait SHORT's 0.5 s for their answer's head; every
    later one SLACK's 7 s: only the requests meant to hang time out, not the answers after them."""
    heads = iter([sum(SHORT)] * first)
    monkeypatch.setattr(module, "head_timeout", lambda _settings: next(heads, sum(SLACK)))


@pytest.fixture
async def run_followers() -> AsyncIterator[Callable[..., Any]]:
    """Followers of `calls` against one server, sharing one key gate, run to their ends."""
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def run(
        handler: Handler,
        *,
        calls: Sequence[str] = ("CA_1",),
        after: int = 0,
        publisher: FakePublisher | None = None,
        stopping: asyncio.Event | None = None,
        give_up_after_seconds: float = 900.0,
        gate: KeyGate | None = None,
        pages: PageSlots | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeouts: tuple[float, float] = SLACK,
    ) -> tuple[list[bool], Server, FakePublisher, list[Follower], Metrics]:
        server = Server(handler)
        await server.server.start_server()
        servers.append(server.server)
        session = aiohttp.ClientSession()
        sessions.append(session)
        publisher = publisher or FakePublisher()
        metrics = Metrics()
        read_timeout, connect_timeout = timeouts
        settings = SseSettings(
            read_timeout_seconds=read_timeout,
            connect_timeout_seconds=connect_timeout,
            give_up_after_seconds=give_up_after_seconds,
        ).model_copy(update=QUICK_BACKOFF)
        gate = gate or KeyGate(ReconnectPolicy.of(settings))
        pages = pages or PageSlots(settings.max_gap_pages_in_flight)
        followers = [
            Follower(
                call,
                after,
                session=session,
                api=PinecallSettings(
                    api_url=str(server.server.make_url("")).rstrip("/"),
                    api_key=SecretStr("k"),
                    env="sandbox",
                ),
                settings=settings,
                publisher=cast(Publisher, publisher),
                metrics=metrics,
                stopping=stopping or asyncio.Event(),
                gate=gate,
                pages=pages,
                clock=clock,
            )
            for call in calls
        ]
        ended = await asyncio.wait_for(asyncio.gather(*(f.run() for f in followers)), 10)
        return ended, server, publisher, followers, metrics

    yield run
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()


@pytest.fixture
def run_follower(run_followers: Callable[..., Any]) -> Callable[..., Any]:
    """One follower of CA_1: whether it ended, the server, publisher, follower and metrics."""

    async def run(
        handler: Handler, **options: Any
    ) -> tuple[bool, Server, FakePublisher, Follower, Metrics]:
        ended, server, publisher, followers, metrics = await run_followers(handler, **options)
        return ended[0], server, publisher, followers[0], metrics

    return run


def reconnects(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "pinecall_bridge_sse_reconnects_total", stream="call", reason=reason)


async def run_page_out_of_descriptors(
    run_follower: Callable[..., Any], handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> tuple[bool, Server, FakePublisher, Follower, Metrics]:
    """`run_follower(handler)` with its first connect (the stream's) let through, the next (a
    page's) refused as with no descriptor left (EMFILE), and every one after let through."""
    spent = SpentDescriptors(spare=1).on(monkeypatch)

    async def give_back() -> None:
        await until(lambda: spent.refused >= 1)
        spent.spent = False

    back = asyncio.create_task(give_back())
    ran: tuple[bool, Server, FakePublisher, Follower, Metrics] = await run_follower(handler)
    await back
    return ran


async def test_it_authenticates_and_resumes_from_what_was_acknowledged(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:  # three entries, then the server goes away without the call's end
            return await stream(request, frame(entry(1)), frame(entry(2)) + frame(entry(3)))
        return await stream(request, frame(entry(4, "call.score")))

    ended, server, publisher, follower, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3, 4]
    (first_headers, first_query), (headers, query) = server.requests
    assert first_headers["Authorization"] == "Bearer k"
    assert first_headers["pinecall-env"] == "sandbox"
    assert first_headers["Accept"] == "text/event-stream"
    assert "Last-Event-ID" not in first_headers
    assert first_query == {"after": "0"}
    assert (headers["Last-Event-ID"], query) == ("3", {"after": "3"})
    assert reconnects(metrics, "closed") == 1
    assert follower.state.acked == 4


async def test_the_call_ends_at_its_score_without_waiting_for_the_stream_to_close(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        # The connection stays open after the score: no close, no 204 to learn the end from.
        return await stream(request, frame(entry(1)) + frame(entry(2, "call.score")), hold=5.0)

    ended, server, publisher, follower, metrics = await run_follower(handler)
    assert ended
    assert follower.state.ended
    assert publisher.seqs == [1, 2]
    assert len(server.requests) == 1
    assert sum(reconnects(metrics, reason) for reason in REASONS) == 0


async def test_a_seq_0_entry_after_the_score_does_not_hide_the_end(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        # Seq 0 marks entries outside the numbered log (local errors); it may come last.
        chunk = frame(entry(1)) + frame(entry(2, "call.score")) + frame(entry(0, "error"))
        return await stream(request, chunk, hold=5.0)

    ended, server, publisher, follower, _ = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 0]
    assert follower.state.acked == 2
    assert len(server.requests) == 1


async def test_an_entry_too_large_to_read_is_noted_and_the_call_goes_on_past_it(
    run_follower: Callable[..., Any],
) -> None:
    big = entry(2, "call.summary", transcript="x" * 2_000_000)  # over the 960 KiB default

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return await stream(request, frame(entry(1)), frame(big), frame(entry(3, "call.score")))

    ended, server, publisher, _follower, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3]
    [note] = [
        item for batch in publisher.batches for item in batch if isinstance(item, Unrecognised)
    ]
    assert note.reason == "too_large"
    assert note.item["type"] == "call.summary"
    assert note.item["bytes"] > 2_000_000
    assert len(server.requests) == 1
    assert sum(reconnects(metrics, reason) for reason in REASONS) == 0


async def test_an_entry_with_bytes_not_utf8_is_published_as_decoded_and_said(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = frame(entry(1, "transcript", text="caf\u00e9")).replace(b"\xc3\xa9", b"\xe9")

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return await stream(request, bad, frame(entry(2, "call.score")))

    caplog.set_level(logging.WARNING, logger="bridge.sources.calllog.follower")
    ended, _, publisher, _, _ = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2]
    assert publisher.batches[0][0]["data"]["text"] == "caf\ufffd"
    [said] = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert said.levelname == "WARNING"
    assert 1 in said.__dict__["seqs"]  # the seqs read with the bytes


async def test_bytes_not_utf8_are_said_with_the_entry_they_arrived_ahead_of(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Entry 2's bad byte came in a chunk that ended mid-entry: said with the seqs completed in
    # that chunk (entry 1, intact), entry 2 went out holding U+FFFD and named by no line.
    bad = frame(entry(2, "transcript", text="caf\u00e9")).replace(b"\xc3\xa9", b"\xe9")
    cut = bad.index(b"\xe9") + 3  # past the byte: no lead of a character to come

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = await stream(request, frame(entry(1, "transcript", text="ok")), bad[:cut])
        await asyncio.sleep(0.1)  # the rest in a chunk of its own
        await response.write(bad[cut:] + frame(entry(3, "call.score")))
        return response

    caplog.set_level(logging.WARNING, logger="bridge.sources.calllog.follower")
    ended, _, publisher, _, _ = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3]
    said = [r.__dict__["seqs"] for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert any(2 in seqs for seqs in said), said


async def test_a_sealed_call_ends_at_once(run_follower: Callable[..., Any]) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=204)

    ended, server, publisher, _, _ = await run_follower(handler, after=9)
    assert ended
    assert publisher.seqs == []
    assert server.requests[0][1] == {"after": "9"}


async def test_a_silent_connection_is_dropped_and_resumed(run_follower: Callable[..., Any]) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:  # an entry, then nothing at all, not even a ping
            return await stream(request, frame(entry(1)), hold=5.0)
        return await stream(request, frame(entry(2, "call.score")))

    ended, server, publisher, _, metrics = await run_follower(handler, timeouts=SHORT)
    assert ended
    assert publisher.seqs == [1, 2]
    assert reconnects(metrics, "silent") == 1
    assert server.requests[1][1] == {"after": "1"}


async def test_a_request_never_answered_is_left_and_asked_again(
    run_follower: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:  # the request is taken, and no status or header ever comes
            await asyncio.sleep(2.0)
        return await stream(request, frame(entry(1, "call.score")))

    first_heads_time_out(monkeypatch, follower_module, 1)
    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1]
    assert len(server.requests) == 2
    assert reconnects(metrics, "connect_error") == 1


async def test_a_process_out_of_descriptors_is_said_so_once_not_counted_as_an_outage(
    run_followers: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # EMFILE was an INFO line, thinned, and a connect_error: an outage of Pinecall's to see.
    spent = SpentDescriptors().on(monkeypatch)
    calls = [f"CA_{n}" for n in range(5)]

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return await stream(request, frame(entry(1, "call.score", call=request.match_info["call"])))

    async def give_back() -> None:
        await until(lambda: spent.refused >= 2 * len(calls))
        spent.spent = False

    caplog.set_level(logging.INFO, logger="bridge")
    back = asyncio.create_task(give_back())
    ended, _, _, _, metrics = await run_followers(handler, calls=calls)
    await back
    assert all(ended)
    assert reconnects(metrics, "out_of_descriptors") >= 2 * len(calls)
    assert reconnects(metrics, "connect_error") == 0
    said = [r for r in caplog.records if r.getMessage() == connlimit.OUT_OF_DESCRIPTORS]
    assert [(r.levelname, r.__dict__["source"]) for r in said] == [("WARNING", "call_log")]
    assert said[0].__dict__["open_files_limit"] == connlimit.open_files_limit()
    assert "Too many open files" in said[0].__dict__["error"]
    assert not [r for r in caplog.records if r.getMessage() == "call log connection failed"]


async def test_an_outage_is_one_connection_failed_line_not_one_a_call(
    run_followers: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = [f"CA_{n}" for n in range(20)]
    asked: dict[str, int] = {}

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        call = request.match_info["call"]
        asked[call] = asked.get(call, 0) + 1
        if asked[call] == 1:  # every call's first request times out: the platform is down
            await asyncio.sleep(2.0)
        return await stream(request, frame(entry(1, "call.score", call=call)))

    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.follower")
    # Each follower's first attempt takes its head timeout before any attempt can time out.
    first_heads_time_out(monkeypatch, follower_module, len(calls))
    ended, _, _, _, metrics = await run_followers(handler, calls=calls)
    assert all(ended)
    assert reconnects(metrics, "connect_error") == len(calls)  # each counted
    failed = [r for r in caplog.records if r.getMessage() == "call log connection failed"]
    assert len(failed) == 1
    logthrottle.flush_all()
    assert "call log connection failed: 19 more like this" in caplog.text


def awkward(item: dict[str, Any], end: bytes) -> bytes:
    """`item` as a valid but awkward server frames it: lines ending in `end`, no space after the
    colons, its data over two lines with other fields between, and a `retry:` not a number."""
    body = jsoncodec.dumps(item)
    cut = body.index(b",") + 1  # between two members: the two lines join into the same JSON
    lines = [
        b"data:" + body[:cut],
        b"retry:soon",
        b"id:" + str(item["seq"]).encode(),
        b"event:" + item["type"].encode(),
        b"data:" + body[cut:],
        b"",
    ]
    return b"".join(line + end for line in lines)


async def test_an_awkward_stream_cut_mid_entry_resumes_with_no_entry_lost_or_sent_twice(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:  # a BOM, CRLF then lone CR, and a cut in the middle of the third entry
            third = awkward(entry(3), b"\n")
            return await stream(
                request,
                awkward(entry(1), b"\r\n"),
                awkward(entry(2), b"\r") + third[: len(third) // 2],
                cut=True,
                head=b"\xef\xbb\xbf",  # read as part of the first line, it would lose its data
            )
        # The replay from the start, as a server ignoring `after` would send it.
        kinds = ["turn.user"] * 3 + ["call.score"]
        frames = [awkward(entry(seq, kind), b"\n") for seq, kind in enumerate(kinds, 1)]
        return await stream(request, *frames)

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3, 4]
    # Each entry read whole: none dead-lettered as not JSON.
    published = [item for batch in publisher.batches for item in batch]
    assert not [item for item in published if isinstance(item, Unrecognised)]
    assert (server.requests[1][0]["Last-Event-ID"], server.requests[1][1]) == ("2", {"after": "2"})
    assert reconnects(metrics, "closed") == 1


async def test_pings_keep_an_idle_connection(run_follower: Callable[..., Any]) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = await stream(request, frame(entry(1)))
        for _ in range(5):  # 0.5 s idle in all, longer than the read timeout, pinged
            await asyncio.sleep(0.1)
            await response.write(b": ping\n\n")
        await response.write(frame(entry(2, "call.score")))
        return response

    ended, server, publisher, _, metrics = await run_follower(handler, timeouts=SHORT)
    assert ended
    assert publisher.seqs == [1, 2]
    assert len(server.requests) == 1
    assert reconnects(metrics, "silent") == 0


async def test_refusals_back_off_and_retry(run_follower: Callable[..., Any]) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.json_response({"detail": "bad key"}, status=401)
        if n == 2:
            return web.json_response({"detail": "busy"}, status=503)
        if n == 3:
            return web.json_response({"entries": [], "live": True, "next": None})  # not a stream
        return await stream(request, frame(entry(1, "call.score")))

    ended, _, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1]
    assert [reconnects(metrics, r) for r in ("auth", "server_error", "protocol")] == [1, 1, 1]


async def test_a_server_refusing_every_call_is_said_thinned_not_per_call_and_retry(
    run_followers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    calls = [f"CA_{i}" for i in range(20)]

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n <= 3 * len(calls):  # each call refused about three times
            return web.json_response({"detail": "down"}, status=500)
        return await stream(request, frame(entry(1, "call.score")))

    caplog.set_level(logging.WARNING)
    ended, _, _, _, metrics = await run_followers(handler, calls=calls)
    assert all(ended)
    assert reconnects(metrics, "server_error") == 3 * len(calls)
    said = [r for r in caplog.records if r.getMessage() == "call log stream refused"]
    assert len(said) == 1, len(said)  # said once, within the throttle's 10 s
    assert said[0].levelno == logging.WARNING


# A Content-Type of comments nested deeper than the stack: aiohttp's parser (the email
# package's) recurses once per comment, so reading it raises RecursionError.
NESTED_CONTENT_TYPE = "text/event-stream; x=" + "(" * 1000 + ")" * 1000


async def test_a_content_type_too_nested_to_parse_is_refused_as_a_wrong_one(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            response = web.StreamResponse(headers={"Content-Type": NESTED_CONTENT_TYPE})
            await response.prepare(request)
            await response.write(frame(entry(1, "call.score")))
            return response
        return await stream(request, frame(entry(1, "call.score")))

    caplog.set_level(logging.WARNING)
    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1]  # from the second answer: the first is no event stream
    assert (len(server.requests), reconnects(metrics, "protocol")) == (2, 1)
    assert [r.getMessage() for r in caplog.records] == ["call log stream refused"]


async def test_a_redirect_is_not_followed(run_follower: Callable[..., Any]) -> None:
    # Followed, it would take the key along (to the same origin, as here, or, without it, to
    # another one).
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            raise web.HTTPTemporaryRedirect(request.path + "?followed=1")
        return await stream(request, frame(entry(1, "call.score")))

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1]
    assert [query.get("followed") for _, query in server.requests] == [None, None]
    assert reconnects(metrics, "protocol") == 1


async def test_a_redirect_to_another_host_sends_it_nothing(
    run_follower: Callable[..., Any],
) -> None:
    elsewhere: list[web.Request] = []

    async def other(request: web.Request) -> web.StreamResponse:
        elsewhere.append(request)
        return await stream(request, frame(entry(1, "call.score")))

    app = web.Application()
    app.router.add_get("/{tail:.*}", other)
    other_host = TestServer(app, host="localhost")  # another origin, as the key's must not reach
    await other_host.start_server()
    try:

        async def handler(request: web.Request, n: int) -> web.StreamResponse:
            if n == 1:
                raise web.HTTPMovedPermanently(str(other_host.make_url(request.path_qs)))
            return await stream(request, frame(entry(1, "call.score")))

        ended, _, publisher, _, metrics = await run_follower(handler)
    finally:
        await other_host.close()
    assert ended
    assert publisher.seqs == [1]
    assert elsewhere == []
    assert reconnects(metrics, "protocol") == 1


def given_up(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "pinecall_bridge_sse_calls_given_up_total", reason=reason)


@pytest.mark.parametrize(("status", "reason"), [(404, "not_found"), (410, "gone")])
async def test_a_log_not_found_or_gone_is_given_up_at_once(
    run_follower: Callable[..., Any], status: int, reason: str
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"detail": "no such log"}, status=status)

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert len(server.requests) == 1
    assert publisher.seqs == []
    assert given_up(metrics, reason) == 1


async def test_a_log_refused_for_the_give_up_time_is_left_not_retried_forever(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"detail": "bad request"}, status=400)

    ended, server, publisher, _, metrics = await run_follower(handler, give_up_after_seconds=0.3)
    assert ended
    assert len(server.requests) > 1  # retried, with backoff, until the give-up time
    assert publisher.seqs == []
    assert given_up(metrics, "refused") == 1
    assert reconnects(metrics, "protocol") == len(server.requests) - 1


@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_a_stream_in_an_encoding_not_asked_for_is_refused_and_given_up_in_time(
    run_follower: Callable[..., Any], encoding: str
) -> None:
    # aiohttp has no decoder for these here: it fails in the request, though the server answered.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": encoding}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(b"\x1b\x00\xf8")
        return response

    ended, server, publisher, _, metrics = await run_follower(handler, give_up_after_seconds=0.3)
    assert ended
    assert len(server.requests) > 1
    assert publisher.seqs == []
    assert given_up(metrics, "refused") == 1
    assert reconnects(metrics, "connect_error") == 0
    assert reconnects(metrics, "protocol") == len(server.requests) - 1


async def test_a_stream_between_refusals_restarts_the_give_up_clock(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n in (1, 3):  # refused before and after 0.4 s of stream: never 0.3 s in a row
            return web.json_response({"detail": "bad request"}, status=400)
        if n == 2:
            response = await stream(request, frame(entry(1)))
            for _ in range(4):
                await asyncio.sleep(0.1)
                await response.write(b": ping\n\n")
            return response
        return await stream(request, frame(entry(2, "call.score")))

    ended, _, publisher, _, metrics = await run_follower(handler, give_up_after_seconds=0.3)
    assert ended
    assert publisher.seqs == [1, 2]
    assert given_up(metrics, "refused") == 0


async def test_an_outage_between_refusals_does_not_run_the_give_up_clock(
    run_follower: Callable[..., Any],
) -> None:
    started: list[float] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        started.append(now)
        if n == 1:
            return web.json_response({"detail": "bad request"}, status=400)
        if now - started[0] < 0.4:  # down for longer than the give-up time
            return web.json_response({"detail": "down"}, status=503)
        if started[-2] - started[0] < 0.4:  # the first answer after the outage
            return web.json_response({"detail": "bad request"}, status=400)
        return await stream(request, frame(entry(1, "call.score")))

    ended, _, publisher, _, metrics = await run_follower(handler, give_up_after_seconds=0.3)
    assert ended
    assert publisher.seqs == [1]
    assert given_up(metrics, "refused") == 0
    assert reconnects(metrics, "protocol") == 2


async def test_a_retry_after_of_forever_does_not_stall_the_call(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.json_response({"detail": "busy"}, status=429, headers={"Retry-After": "inf"})
        return await stream(request, frame(entry(1, "call.score")))

    ended, _, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1]
    assert reconnects(metrics, "server_error") == 1


async def test_a_gap_is_read_from_the_pages_before_what_follows(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if "text/event-stream" not in request.headers.get("Accept", ""):
            after = int(request.query["after"])
            stored = [entry(s) for s in (2, 4) if s > after]  # 3 was ephemeral: never stored
            return web.json_response(
                {"entries": stored, "live": True, "next": stored[-1]["seq"] if stored else None}
            )
        gap = entry(4, "log.gap", from_seq=2, to_seq=4, snapshot=None)
        return await stream(request, frame(entry(1)) + frame(gap) + frame(entry(5, "call.score")))

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 4, 5]
    page_headers, page_query = server.requests[1]
    assert page_query["after"] == "1"
    assert page_headers["Authorization"] == "Bearer k"
    assert sample(metrics, "pinecall_bridge_sse_gaps_total") == 1
    assert sample(metrics, "pinecall_bridge_sse_gaps_filled_total") == 1
    assert sample(metrics, "pinecall_bridge_sse_gap_entries_total") == 2


async def test_a_gap_page_entry_too_large_to_read_is_noted_as_the_stream_notes_it(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Pages passed it whole: one over BRIDGE_SSE__MAX_EVENT_BYTES the stream notes at its seq
    # was refused by Kafka even as a dead letter, and lost.
    big = entry(2, "call.summary", transcript="x" * 2_000_000)  # over the 960 KiB default

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return web.json_response({"entries": [big, entry(3)], "live": True, "next": 3})
        gap = entry(3, "log.gap", from_seq=2, to_seq=3, snapshot=None)
        return await stream(request, frame(entry(1)) + frame(gap) + frame(entry(4, "call.score")))

    with caplog.at_level(logging.WARNING):
        ended, _server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3, 4]
    [note] = [
        item for batch in publisher.batches for item in batch if isinstance(item, Unrecognised)
    ]
    assert note.reason == "too_large"
    assert (note.item["seq"], note.item["type"]) == (2, "call.summary")
    # As the stream counts it: past the parser's line cap, the whole line, `data: ` too.
    assert note.item["bytes"] == len(b"data: " + jsoncodec.dumps(big))
    said = [r for r in caplog.records if "larger than BRIDGE_SSE__MAX_EVENT_BYTES" in r.message]
    assert [(r.call, r.seq) for r in said] == [("CA_1", 2)]  # type: ignore[attr-defined]
    assert sample(metrics, "pinecall_bridge_sse_gaps_filled_total") == 1


async def test_a_score_read_in_a_gap_ends_the_call_without_asking_again(
    run_follower: Callable[..., Any],
) -> None:
    # The log's last entry came in the gap, so the stream never showed it: once Kafka took it
    # from the page the call is over, not read again (nor held on a stream that has no end).
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if "text/event-stream" not in request.headers.get("Accept", ""):
            after = int(request.query["after"])
            stored = [entry(2), entry(3, "call.score")]
            stored = [e for e in stored if e["seq"] > after]
            return web.json_response({"entries": stored, "live": False, "next": None})
        if request.query["after"] != "0":
            return web.Response(status=204)
        gap = entry(3, "log.gap", from_seq=2, to_seq=3, snapshot=None)
        return await stream(request, frame(entry(1)) + frame(gap) + b": ping\n\n", hold=5.0)

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3]
    assert len(server.requests) == 2  # the stream and its gap's page: no second stream
    assert sum(reconnects(metrics, reason) for reason in REASONS) == 0


async def test_a_failed_gap_fill_resumes_the_stream_before_the_gap(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return web.json_response({"detail": "down"}, status=500)
        if request.query["after"] == "0":
            gap = entry(3, "log.gap", from_seq=2, to_seq=3, snapshot=None)
            return await stream(request, frame(entry(1)) + frame(gap), hold=5.0)
        # The replay of stored entries covers what the gap skipped.
        return await stream(request, frame(entry(2)) + frame(entry(3, "call.score")))

    ended, _, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3]
    assert reconnects(metrics, "gap_fill_failed") == 1


async def test_a_gap_page_out_of_descriptors_is_said_so_not_counted_as_a_gap_fill_failure(
    run_follower: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stream holds its connection, so the page needs one more descriptor: EMFILE there was
    # gap_fill_failed (PinecallBridgeCallLogGapsNotFilled blames Pinecall's pages) and a line
    # naming only the error's class, while the stream's own reconnect went through.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.query["after"] == "0":
            gap = entry(3, "log.gap", from_seq=2, to_seq=3, snapshot=None)
            return await stream(request, frame(entry(1)) + frame(gap), hold=5.0)
        return await stream(request, frame(entry(2)) + frame(entry(3, "call.score")))

    caplog.set_level(logging.INFO, logger="bridge")
    ended, server, publisher, _, metrics = await run_page_out_of_descriptors(
        run_follower, handler, monkeypatch
    )
    assert ended
    assert publisher.seqs == [1, 2, 3]
    assert all("text/event-stream" in headers["Accept"] for headers, _ in server.requests)
    assert reconnects(metrics, "gap_fill_failed") == 0
    assert reconnects(metrics, "out_of_descriptors") >= 1
    said = [r for r in caplog.records if r.getMessage() == connlimit.OUT_OF_DESCRIPTORS]
    assert [(r.levelname, r.__dict__["source"]) for r in said] == [("WARNING", "call_log")]
    assert "Too many open files" in said[0].__dict__["error"]
    assert not [r for r in caplog.records if r.getMessage() == "call log gap not read"]


@pytest.mark.parametrize(
    ("status", "retry_after", "waits"), [(503, "120", 120.0), (429, "86400", 300.0)]
)
async def test_a_failed_gap_fill_waits_the_pages_retry_after_before_resuming(
    run_follower: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    status: int,
    retry_after: str,
    waits: float,
) -> None:
    # The stream that replays the gap is asked of the server that said to wait (up to 300 s),
    # as a stream's own 5xx or 429 is.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return web.json_response(
                {"detail": "busy"}, status=status, headers={"Retry-After": retry_after}
            )
        gap = entry(3, "log.gap", from_seq=2, to_seq=3, snapshot=None)
        return await stream(request, frame(entry(1)) + frame(gap), hold=5.0)

    def reconnecting() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "call log reconnecting"]

    caplog.set_level(logging.DEBUG, logger="bridge.sources.calllog.follower")
    stopping = asyncio.Event()
    followed = asyncio.create_task(run_follower(handler, stopping=stopping))
    try:
        await until(lambda: bool(reconnecting()), what="the follower waiting to reconnect")
        (record,) = reconnecting()
        assert (record.reason, record.in_s) == ("gap_fill_failed", waits)  # type: ignore[attr-defined]
        stopping.set()
        ended, server, publisher, _, _ = await followed
    finally:
        followed.cancel()
    assert not ended
    assert publisher.seqs == [1]
    assert len(server.requests) == 2  # the stream and its gap's page; no reconnect yet


async def test_what_was_not_acknowledged_is_not_skipped(run_follower: Callable[..., Any]) -> None:
    publisher = FakePublisher()
    publisher.refuse = True

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return await stream(request, frame(entry(6)) + frame(entry(7, "call.score")))

    ended, _, _, follower, _ = await run_follower(handler, after=5, publisher=publisher)
    assert not ended
    assert follower.state.acked == 5
    assert not follower.state.ended


async def test_a_stop_during_a_publish_leaves_once_it_landed(
    run_follower: Callable[..., Any],
) -> None:
    stopping = asyncio.Event()

    class StoppedMeanwhile(FakePublisher):
        async def publish(self, items: list[Any], times: list[float] = ()) -> bool:  # type: ignore[assignment]
            stopping.set()  # the source stops while Kafka takes this batch
            return await super().publish(items, times)

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        response = await stream(request, frame(entry(1)))
        await asyncio.sleep(0.1)
        await response.write(frame(entry(2)) + frame(entry(3, "call.score")))
        return response

    ended, _, publisher, follower, _ = await run_follower(
        handler, publisher=StoppedMeanwhile(), stopping=stopping
    )
    assert not ended
    assert publisher.seqs == [1]  # not a read more: the stop waits for nothing else
    assert follower.state.acked == 1


async def test_not_json_goes_to_the_dead_letter_topic_as_it_came(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        broken = b"id: 1\nevent: turn.user\ndata: {oops\n\n"
        return await stream(request, broken + frame(entry(2, "call.score")))

    ended, server, publisher, _, _ = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2]
    note = publisher.batches[0][0]
    assert note == Unrecognised(
        "invalid_json", {"call": "CA_1", "seq": 1, "type": "turn.user", "data": "{oops"}
    )
    assert len(server.requests) == 1
    assert "call log entry is not JSON" in caplog.text


async def test_an_unreadable_entrys_type_is_logged_cut_and_dead_lettered_within_a_types_bound(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # An `event:` line may be nearly BRIDGE_SSE__MAX_EVENT_BYTES: each such line logged whole,
    # and its note, beside text fitted to that limit, too large for a record (test_follow.py).
    kind = "turn." + "x" * 100_000

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        broken = f"id: 1\nevent: {kind}\ndata: {{oops\n\n".encode()
        return await stream(request, broken + frame(entry(2, "call.score")))

    ended, _, publisher, _, _ = await run_follower(handler)
    assert ended
    assert publisher.batches[0][0].item["type"].startswith(kind[:256] + "… (100005 chars, sha256 ")
    [said] = [r for r in caplog.records if r.getMessage().startswith("call log entry is not JSON")]
    assert said.__dict__["type"] == "turn." + "x" * 59 + "… (100005 chars)"


def key_refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("Pinecall refuses the API key")]


async def test_a_refused_key_holds_every_follower_back_while_one_probes(
    run_followers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    calls = [f"CA_{i}" for i in range(20)]
    refused: list[str] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if len(refused) < len(calls) + 5:  # the first round, then five probes
            refused.append(request.match_info["call"])
            return web.json_response({"detail": "bad key"}, status=401)
        return await stream(request, frame(entry(1, "call.score")))

    ended, server, publisher, _, metrics = await run_followers(handler, calls=calls)
    assert all(ended)
    assert sorted(publisher.seqs) == [1] * len(calls)  # each resumed from its own position
    # One request each before the key was known refused; then one probe at a time, no more.
    assert len(server.requests) == len(refused) + len(calls)
    assert set(refused[: len(calls)]) == set(calls)
    assert reconnects(metrics, "auth") == len(refused)
    assert len(key_refusals(caplog)) == 1
    assert key_refusals(caplog)[0].levelno == logging.ERROR
    assert "call log stream refused" not in caplog.text  # not a line per follower


async def test_one_calls_403_holds_back_only_its_own_follower(
    run_followers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A 403 may be about that call alone: the others read on, no gate opens for them.
    forbidden = iter([403, 403, 403])

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.match_info["call"] == "CA_0" and next(forbidden, None) == 403:
            return web.json_response({"detail": "not yours"}, status=403)
        return await stream(request, frame(entry(1, "call.score")))

    ended, server, publisher, _, metrics = await run_followers(
        handler, calls=["CA_0", "CA_1", "CA_2"]
    )
    assert ended == [True, True, True]
    assert publisher.seqs == [1, 1, 1]
    assert len(server.requests) == 4 + 1 + 1
    assert reconnects(metrics, "auth") == 3
    assert key_refusals(caplog) == []
    forbidden_lines = [r for r in caplog.records if r.getMessage().startswith("call log forbidden")]
    assert len(forbidden_lines) == 3


async def test_a_log_forbidden_for_the_give_up_time_is_left_and_frees_its_slot(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # The org feed announces calls the key may not read: each 403 call held a MAX_CALLS slot
    # for the life of the process, and after a day the queue filled and calls were dropped.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"detail": "not yours"}, status=403)

    ended, server, publisher, _, metrics = await run_follower(handler, give_up_after_seconds=0.3)
    assert ended
    assert len(server.requests) > 1  # retried, with backoff, until the give-up time
    assert publisher.seqs == []
    assert given_up(metrics, "forbidden") == 1
    assert given_up(metrics, "refused") == 0
    assert key_refusals(caplog) == []
    assert "call log given up" in caplog.text


class ReopenedGate(KeyGate):
    """A key gate that another follower's 401 reopens just after the first answer accepting
    the key; `entered` is set as a follower comes to it (having found it holding or not)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ReconnectPolicy(0.01, 0.01, 60.0, rand=lambda _low, high: high), clock)
        self.entered = asyncio.Event()
        self.reopened = asyncio.Event()

    async def enter(self) -> tuple[int | None, bool]:
        self.entered.set()
        return await super().enter()

    def accepted(self) -> None:
        super().accepted()
        if not self.reopened.is_set():
            self.reopened.set()
            self.entered.clear()
            self.refused("CA_2", 401)


async def test_a_403_is_counted_whatever_the_gate_does_meanwhile(
    run_follower: Callable[..., Any],
) -> None:
    forbidden = iter([403])

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if next(forbidden, None) == 403:
            return web.json_response({"detail": "not yours"}, status=403)
        return await stream(request, frame(entry(1, "call.score")))

    ended, server, publisher, _, metrics = await run_follower(handler, gate=ReopenedGate())
    assert ended
    assert publisher.seqs == [1]
    assert len(server.requests) == 2
    assert reconnects(metrics, "auth") == 1


async def test_waiting_for_a_refused_key_does_not_run_the_give_up_clock(
    run_follower: Callable[..., Any],
) -> None:
    # CA_1 is refused (400) as the key is found refused; it waits at the gate, whose clock
    # stands still until then, and is refused again 1,000 s after its first refusal: those
    # seconds, over the give-up time, were the key's, not its call's.
    now = [0.0]
    gate = ReopenedGate(clock=lambda: now[0])
    answers = iter([400, 400])

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        status = next(answers, None)
        if status is not None:
            return web.json_response({"detail": "bad request"}, status=status)
        return await stream(request, frame(entry(1, "call.score")))

    async def key_accepted_later() -> None:
        await gate.reopened.wait()
        await gate.entered.wait()  # CA_1 came to the gate, and found it holding
        now[0] += 1_000.0

    later = asyncio.create_task(key_accepted_later())
    ended, _, publisher, _, metrics = await run_follower(
        handler, give_up_after_seconds=100.0, gate=gate, clock=lambda: now[0]
    )
    await later
    assert ended
    assert publisher.seqs == [1]
    assert given_up(metrics, "refused") == 0
    assert reconnects(metrics, "protocol") == 2


class WatchedGate(KeyGate):
    """A key gate on a clock the test moves: `waiting` counts the followers held at it, and
    `opened` is set once the key is refused."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(ReconnectPolicy(0.01, 0.01, 60.0, rand=lambda _low, high: high), clock)
        self.waiting = 0
        self.opened = asyncio.Event()

    async def enter(self) -> tuple[int | None, bool]:
        self.waiting += 1
        try:
            return await super().enter()
        finally:
            self.waiting -= 1

    def refused(self, call: str, status: int) -> None:
        super().refused(call, status)
        self.opened.set()


def call_log(call: str, seqs: range) -> bytes:
    """Frames of `call`'s entries at `seqs`; seq 4 is its score, the end."""
    return b"".join(
        frame(entry(s, "call.score" if s == 4 else "turn.user", call=call)) for s in seqs
    )


def gap_frame(call: str) -> bytes:
    """Seqs 2 and 3 skipped on this connection."""
    return frame(entry(3, "log.gap", call=call, from_seq=2, to_seq=3, snapshot=None))


def is_page(request: web.Request) -> bool:
    return "text/event-stream" not in request.headers.get("Accept", "")


def published(publisher: FakePublisher, call: str) -> list[int]:
    return [item["seq"] for batch in publisher.batches for item in batch if item["call"] == call]


async def test_a_401_on_a_gap_page_holds_every_follower_back_until_the_key_is_accepted(
    run_followers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # The key is revoked as CA_0 asks for its gap's first page: that 401 opens the gate. CA_1
    # and CA_2 read a gap of their own once it is open: they ask for no page, and no follower
    # asks for anything (the gate's clock stands still) until the probe.
    now = [0.0]
    gate = WatchedGate(clock=lambda: now[0])
    calls = ["CA_0", "CA_1", "CA_2"]
    key_ok = True
    refused: list[tuple[str, str]] = []

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        nonlocal key_ok
        call = request.match_info["call"]
        if call == "CA_0" and is_page(request):
            key_ok = False
        if not key_ok:
            refused.append((call, "page" if is_page(request) else "stream"))
            return web.json_response({"detail": "bad key"}, status=401)
        if request.query["after"] == "0":
            response = await stream(request, call_log(call, range(1, 2)))
            if call != "CA_0":
                await gate.opened.wait()
            await response.write(gap_frame(call))
            await asyncio.sleep(5.0)
            return response
        return await stream(request, call_log(call, range(2, 5)))

    followed = asyncio.create_task(
        run_followers(handler, calls=calls, gate=gate, clock=lambda: now[0])
    )
    try:
        await until(lambda: gate.waiting == len(calls), what="every follower held at the gate")
        assert refused == [("CA_0", "page")]
        key_ok = True
        now[0] += 60.0  # the probe's turn
        ended, server, publisher, _, metrics = await followed
    finally:
        followed.cancel()
    assert ended == [True, True, True]
    for call in calls:  # each resumed from its own position: nothing lost, nothing twice
        assert published(publisher, call) == [1, 2, 3, 4], call
    after_the_key = server.requests[len(calls) + 1 :]
    assert [query["after"] for _, query in after_the_key] == ["1"] * len(calls)
    assert len(key_refusals(caplog)) == 1
    assert reconnects(metrics, "auth") == len(calls)
    assert reconnects(metrics, "gap_fill_failed") == 0
    assert sample(metrics, "pinecall_bridge_sse_gaps_total") == len(calls)


async def test_a_403_on_a_gap_page_holds_back_only_its_own_follower(
    run_followers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    forbidden = iter([403])

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        call = request.match_info["call"]
        if is_page(request):
            assert next(forbidden) == 403  # the one page asked for
            return web.json_response({"detail": "not yours"}, status=403)
        if call == "CA_0" and request.query["after"] == "0":
            return await stream(request, call_log(call, range(1, 2)) + gap_frame(call), hold=5.0)
        return await stream(request, call_log(call, range(int(request.query["after"]) + 1, 5)))

    ended, _, publisher, _, metrics = await run_followers(handler, calls=["CA_0", "CA_1", "CA_2"])
    assert ended == [True, True, True]
    for call in ("CA_0", "CA_1", "CA_2"):
        assert published(publisher, call) == [1, 2, 3, 4], call
    assert key_refusals(caplog) == []
    forbidden_lines = [r for r in caplog.records if r.getMessage().startswith("call log forbidden")]
    assert [r.__dict__["call"] for r in forbidden_lines] == ["CA_0"]
    assert reconnects(metrics, "auth") == 1
    assert reconnects(metrics, "gap_fill_failed") == 0


class RecordingGate(KeyGate):
    """A key gate with a short backoff; `held` says, at each entry, whether the key was then
    known refused (so that follower had to wait for a probe)."""

    def __init__(self) -> None:
        super().__init__(ReconnectPolicy(0.01, 0.01, 60.0, rand=lambda _low, high: high))
        self.held: list[bool] = []

    async def enter(self) -> tuple[int | None, bool]:
        self.held.append(self.holding)
        return await super().enter()


@pytest.mark.parametrize(
    "body", [b"<html>a proxy's page</html>", b'{"entries": "none"}', b'{"entries": [{"seq": 2']
)
async def test_a_gap_page_answered_200_with_no_page_in_it_takes_the_key_and_is_retried(
    run_follower: Callable[..., Any], caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    # Another follower's 401 opens the gate while CA_1's gap page is out; the page's 200 says
    # the key was taken (the gate closes: no wait for a probe), though its body is no page: the
    # gap is not filled, counted, and read again from the replay of the stream that follows.
    gate = RecordingGate()

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):
            gate.refused("CA_2", 401)
            return web.Response(body=body, content_type="application/json")
        if request.query["after"] == "0":
            return await stream(request, call_log("CA_1", range(1, 2)) + gap_frame("CA_1"), hold=5)
        return await stream(request, call_log("CA_1", range(2, 5)))

    ended, server, publisher, _, metrics = await run_follower(handler, gate=gate)
    assert ended
    assert publisher.seqs == [1, 2, 3, 4]
    assert gate.held == [False, False]
    assert not gate.holding
    assert len(server.requests) == 3
    assert server.requests[2][1]["after"] == "1"
    assert reconnects(metrics, "gap_fill_failed") == 1
    assert reconnects(metrics, "auth") == 0
    assert sample(metrics, "pinecall_bridge_sse_gaps_total") == 1
    assert sample(metrics, "pinecall_bridge_sse_gaps_filled_total") == 0
    assert "call log gap not read" in caplog.text


class HeldPublisher(FakePublisher):
    """Holds the gap pages' entries (seqs 2 and 3) until `release` is set, as a slow Kafka does."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.held = self.most_held = 0  # gap pages being published now, and at most

    async def publish(self, items: list[Any], times: list[float] = ()) -> bool:  # type: ignore[assignment]
        if not any(item["seq"] in (2, 3) for item in items):
            return await super().publish(items, times)
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.release.wait()
            return await super().publish(items, times)
        finally:
            self.held -= 1


def paged_gaps(asked: list[str]) -> Handler:
    """Each call's stream skips seqs 2 and 3, read from two pages of one entry, and closes (the
    follower resumes past the gap on a new one); `asked` names the call of each page request."""

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        call = request.match_info["call"]
        if is_page(request):
            asked.append(call)
            seq = int(request.query["after"]) + 1
            return web.json_response(
                {"entries": [entry(seq, call=call)], "live": True, "next": seq}
            )
        if request.query["after"] == "0":
            return await stream(request, call_log(call, range(1, 2)) + gap_frame(call))
        return await stream(request, call_log(call, range(int(request.query["after"]) + 1, 5)))

    return handler


async def test_gap_pages_read_and_held_at_once_are_bounded_across_followers(
    run_followers: Callable[..., Any],
) -> None:
    # In a Kafka stall Pinecall gaps hundreds of calls at once; each page held until Kafka takes
    # it may be 64 MiB raw: only the slots' worth of them are asked for, the rest wait their turn.
    calls = [f"CA_{n}" for n in range(5)]
    slots, publisher = PageSlots(2), HeldPublisher()
    asked: list[str] = []
    followed = asyncio.create_task(
        run_followers(paged_gaps(asked), calls=calls, publisher=publisher, pages=slots)
    )
    try:
        await until(
            lambda: (publisher.held, slots.waiting) == (2, 3),
            what="two pages held until Kafka takes them, three followers waiting for a slot",
        )
        assert len(asked) == 2
        publisher.release.set()
        ended, _, _, _, metrics = await followed
    finally:
        followed.cancel()
    assert ended == [True] * len(calls)
    for call in calls:
        assert published(publisher, call) == [1, 2, 3, 4], call
    assert sorted(asked) == sorted(calls * 2)
    assert publisher.most_held == 2
    assert sample(metrics, "pinecall_bridge_sse_gaps_filled_total") == len(calls)


async def test_a_follower_waiting_for_a_page_slot_leaves_at_once_on_a_stop(
    run_followers: Callable[..., Any],
) -> None:
    stopping, slots, publisher = asyncio.Event(), PageSlots(1), HeldPublisher()
    asked: list[str] = []
    followed = asyncio.create_task(
        run_followers(
            paged_gaps(asked),
            calls=["CA_0", "CA_1"],
            publisher=publisher,
            pages=slots,
            stopping=stopping,
        )
    )
    try:
        await until(
            lambda: (publisher.held, slots.waiting) == (1, 1),
            what="one page held until Kafka takes it, one follower waiting for the slot",
        )
        stopping.set()
        # It leaves while the other still holds the slot, its publish not yet landed.
        await until(lambda: slots.waiting == 0, what="the waiting follower gone")
        assert not followed.done()
        publisher.release.set()
        ended, _, _, followers, _ = await followed
    finally:
        followed.cancel()
    assert ended == [False, False]
    assert len(asked) == 1
    # The one whose page landed resumes after it; the other where it was.
    assert sorted(f.state.acked for f in followers) == [1, 2]


async def test_entry_times_for_how_far_behind_live_are_read_as_the_events_time_is(
    run_follower: Callable[..., Any],
) -> None:
    # `sse_behind_live` took a raw number: milliseconds made an entry look live, `ts: 0` made it
    # 56 years late, and an epoch in a string was left out, while the CloudEvent's time read each.
    times: list[object] = [
        1_700_000_000_123,  # milliseconds
        "1700000000",  # epoch seconds as a string
        1e9,  # a number in exponent form is a number
        "1e9",  # a string is a time only as digits or ISO 8601
        0,  # a field left unset
        "2023-11-14T22:13:20Z",
    ]
    items = [{**entry(seq), "ts": ts} for seq, ts in enumerate(times, 1)]

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        chunks = b"".join(frame(item) for item in items)
        return await stream(request, chunks + frame(entry(len(items) + 1, "call.score", ts=1e9)))

    ended, _, publisher, _, _ = await run_follower(handler)
    assert ended
    assert publisher.times == [1_700_000_000.123, 1_700_000_000.0, 1e9, 1_700_000_000.0, 1e9]


async def test_a_log_whose_gap_pages_are_forbidden_is_given_up_and_frees_its_slot(
    run_follower: Callable[..., Any],
) -> None:
    # Every stream opens on a gap (then caught up from its end, as the platform sends it) and
    # the gap's pages answer 403: the streams read nothing, so they must not start the give-up
    # clock over (the call held its MAX_CALLS slot for good).
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):
            return web.json_response({"detail": "not yours"}, status=403)
        caught_up = frame(entry(3, "log.caught_up", call="CA_1", data={"seq": 3}))
        return await stream(request, gap_frame("CA_1") + caught_up, hold=5.0)

    ended, server, publisher, _, metrics = await run_follower(handler, give_up_after_seconds=0.3)
    assert ended
    assert len(server.requests) > 2  # retried, with backoff, until the give-up time
    assert publisher.seqs == []
    assert given_up(metrics, "forbidden") == 1


async def test_a_gap_too_large_to_read_without_an_id_is_read_from_the_pages(
    run_follower: Callable[..., Any],
) -> None:
    # Its end unknown, the pages are read to the end of the stored log; the stream's entries
    # up to there are replays of what the pages gave.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):
            after = int(request.query["after"])
            stored = [entry(s, "call.score" if s == 4 else "turn.user") for s in (2, 3, 4)]
            stored = [e for e in stored if e["seq"] > after]
            return web.json_response(
                {"entries": stored, "live": True, "next": stored[-1]["seq"] if stored else None}
            )
        huge_gap = b"event: log.gap\ndata: " + b"x" * (SseSettings().max_event_bytes + 100)
        return await stream(
            request,
            frame(entry(1)) + huge_gap + b"\n\n" + frame(entry(3)) + frame(entry(4, "call.score")),
        )

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 3, 4]
    assert [query["after"] for _, query in server.requests[1:]] == ["1", "4"]
    assert sample(metrics, "pinecall_bridge_sse_gaps_filled_total") == 1


async def test_a_gap_page_entry_past_any_real_seq_does_not_skip_the_rest_of_the_call(
    run_follower: Callable[..., Any],
) -> None:
    # Its seq was taken as the page's last: the resume point moved past every real entry, and
    # the stream's next ones were skipped as replays, the call's end never seen.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):
            stored = [entry(2), entry(2**40)] if request.query["after"] == "1" else []
            return web.json_response({"entries": stored, "live": True, "next": None})
        huge_gap = b"event: log.gap\ndata: " + b"x" * (SseSettings().max_event_bytes + 100)
        return await stream(
            request,
            frame(entry(1)) + huge_gap + b"\n\n" + frame(entry(3)) + frame(entry(4, "call.score")),
        )

    ended, _, publisher, follower, _ = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 2**40, 3, 4]
    assert follower.state.acked == 4


async def follow_simulated(
    sim: Simulator, call: str, publisher: FakePublisher | None = None, **sse: Any
) -> tuple[bool, Follower, Metrics]:
    """A follower of `call` from its start against the simulator, run to its end or for 3 s;
    `sse`: settings other than the quick timeouts and backoffs."""
    settings = SseSettings(read_timeout_seconds=0.3, connect_timeout_seconds=0.2, **sse).model_copy(
        update=QUICK_BACKOFF
    )
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        follower = Follower(
            call,
            0,
            session=session,
            api=PinecallSettings(api_url=sim.url, api_key=SecretStr("sim-api-key")),
            settings=settings,
            publisher=cast(Publisher, publisher or FakePublisher()),
            metrics=metrics,
            stopping=asyncio.Event(),
            gate=KeyGate(ReconnectPolicy.of(settings)),
            pages=PageSlots(settings.max_gap_pages_in_flight),
        )
        try:
            ended = await asyncio.wait_for(follower.run(), 3)
        except TimeoutError:
            ended = False  # it was still reconnecting
        return ended, follower, metrics


async def test_a_sealed_call_whose_last_line_is_ephemeral_ends_once_read_to_its_end() -> None:
    # No call.score (the call dropped) and an ephemeral last line: the replay stops at the last
    # stored seq, which the platform does not answer 204 (the log's last seq is past it), and
    # each stream ended at once after log.caught_up: the follower reconnected for ever.
    async with Simulator(SimulatorConfig(sse_retry_ms=10)) as sim:
        sim.calllogs.append(entry(1, "call.started"))
        sim.calllogs.append(entry(2, "user.transcript", ephemeral=True))
        sim.calllogs.seal("CA_1")
        ended, follower, metrics = await follow_simulated(sim, "CA_1")
        assert ended
        assert follower.state.acked == 1
        assert sample(metrics, "pinecall_bridge_sse_calls_read_to_end_total") == 1
        assert sim.stats.log_pages_served == 1


# What the platform's callers say: é, €, and emoji, which its SSE (json.dumps, ensure_ascii)
# escapes as a surrogate pair, `\\ud83c\\udf89`, 12 bytes where UTF-8 takes 4.
SAID = "Jos\u00e9 pag\u00f3 15 \u20ac \U0001f389\U0001f44d"


async def test_escaped_entries_read_over_sse_are_the_webhooks_entries_with_their_ids() -> None:
    written = [
        entry(1, "call.started"),
        entry(2, "turn.user", text=SAID),
        entry(3, "turn.agent", text="\U0001f600" * 40),
        entry(4, "call.score"),
    ]
    publisher = FakePublisher()
    async with Simulator(SimulatorConfig(sse_retry_ms=10)) as sim:
        for item in written:
            sim.calllogs.append(item)
        ended, _, _ = await follow_simulated(sim, "CA_1", publisher)
    assert ended
    read = [item for batch in publisher.batches for item in batch]
    assert read == written
    for over_sse, sent in zip(read, written, strict=True):
        [posted] = split_body(jsoncodec.loads(wire.encode(sent)))  # a webhook's UTF-8 body
        by_log = normalise(over_sse, channel="sse", received_at=2.0)
        by_hook = normalise(posted, channel="webhook", received_at=2.0)
        assert isinstance(by_log, Event)
        assert isinstance(by_hook, Event)
        assert by_log.id == by_hook.id == f"CA_1:{sent['seq']}"
        assert by_log.data == by_hook.data


async def test_the_event_size_limit_meets_the_escaped_bytes_on_the_wire() -> None:
    # 200 emoji: 800 bytes in UTF-8, within 1 KiB; 2,400 as the platform's \\u escapes, not.
    big = entry(2, "turn.user", text="\U0001f389" * 200)
    sent = json.dumps(big, separators=(",", ":"))
    assert len(jsoncodec.dumps(big)) < 1024 < len(sent)
    publisher = FakePublisher()
    async with Simulator(SimulatorConfig(sse_retry_ms=10)) as sim:
        for item in (entry(1, "call.started"), big, entry(3, "call.score")):
            sim.calllogs.append(item)
        ended, _, _ = await follow_simulated(sim, "CA_1", publisher, max_event_bytes=1024)
    assert ended
    assert publisher.seqs == [1, 2, 3]
    [note] = [
        item for batch in publisher.batches for item in batch if isinstance(item, Unrecognised)
    ]
    assert note.reason == "too_large"
    # Its line, past the line cap, is counted whole: the bytes the platform sent, not their UTF-8.
    assert (note.item["seq"], note.item["bytes"]) == (2, len(f"data: {sent}"))


async def test_a_live_calls_stream_closed_after_catching_up_is_resumed_not_ended(
    run_follower: Callable[..., Any],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):  # the log is live: its stream's close was no end
            return web.json_response({"entries": [], "live": True, "next": None})
        if n == 1:
            return await stream(request, frame(entry(1)) + frame(entry(1, "log.caught_up")))
        return await stream(request, frame(entry(2, "call.score")))

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2]
    assert [query for _, query in server.requests] == [
        {"after": "0"},
        {"after": "1", "limit": "1"},
        {"after": "1"},
    ]
    assert sample(metrics, "pinecall_bridge_sse_calls_read_to_end_total") == 0


async def test_a_stream_cut_after_catching_up_to_a_sealed_log_ends_the_call(
    run_follower: Callable[..., Any],
) -> None:
    # Cut (no last chunk: a proxy's reset, say), not closed: it skipped the page that says the
    # log is sealed, and the follower reconnected for ever.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):
            return web.json_response({"entries": [], "live": False, "next": None})
        return await stream(request, frame(entry(1)) + frame(entry(1, "log.caught_up")), cut=True)

    ended, server, publisher, _, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1]
    assert [query for _, query in server.requests] == [{"after": "0"}, {"after": "1", "limit": "1"}]
    assert sample(metrics, "pinecall_bridge_sse_calls_read_to_end_total") == 1


async def test_the_end_check_out_of_descriptors_is_said_so_not_counted_as_a_close(
    run_follower: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The page asking whether a cut stream's log is sealed needs a connection of its own: EMFILE
    # there was a DEBUG `call log end not checked` and a reconnect counted `closed`.
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if is_page(request):
            return web.json_response({"entries": [], "live": False, "next": None})
        return await stream(request, frame(entry(1)) + frame(entry(1, "log.caught_up")), cut=True)

    caplog.set_level(logging.DEBUG, logger="bridge")
    ended, _, publisher, _, metrics = await run_page_out_of_descriptors(
        run_follower, handler, monkeypatch
    )
    assert ended
    assert publisher.seqs == [1]
    assert sample(metrics, "pinecall_bridge_sse_calls_read_to_end_total") == 1
    assert reconnects(metrics, "out_of_descriptors") >= 1
    assert reconnects(metrics, "closed") == 0
    said = [r for r in caplog.records if r.getMessage() == connlimit.OUT_OF_DESCRIPTORS]
    assert [(r.levelname, r.__dict__["source"]) for r in said] == [("WARNING", "call_log")]
    assert "Too many open files" in said[0].__dict__["error"]
    assert not [r for r in caplog.records if r.getMessage() == "call log end not checked"]


async def test_a_replay_with_holes_and_times_going_back_is_published_in_seq_order(
    run_follower: Callable[..., Any],
) -> None:
    # The wire as the platform sends it: a stored log has holes where ephemeral lines were (never
    # stored), `ts` is its writer's clock and may go back, `log.caught_up` reuses the last seq,
    # and a live ephemeral line uses up a seq of its own. None of it is a gap to fill.
    replay = [
        entry(1, ts=1_764_950_000.5),
        entry(2, ts=1_764_950_003.25),
        entry(5, ts=1_764_949_990.0),
    ]
    caught_up = entry(5, "log.caught_up", ts=1_764_950_004.0, data={"seq": 5})
    live = [
        entry(6, "user.transcript", ts=1_764_950_004.5, ephemeral=True),
        entry(8, ts=1_764_950_001.0),
        entry(9, "call.score", ts=1_764_950_006.0),
    ]

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        chunks = b"".join(frame(item) for item in [*replay, caught_up, *live])
        return await stream(request, chunks, head=b"retry: 1000\n\n")

    ended, server, publisher, follower, metrics = await run_follower(handler)
    assert ended
    assert publisher.seqs == [1, 2, 5, 6, 8, 9]
    assert publisher.times == [item["ts"] for item in [*replay, *live]]
    assert len(server.requests) == 1  # no JSON page asked for: the holes are no gap
    assert follower.state.acked == 9
    assert sum(reconnects(metrics, reason) for reason in REASONS) == 0
