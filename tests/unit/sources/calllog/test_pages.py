from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web

from bridge import jsoncodec
from bridge.sources.calllog import pages
from bridge.sources.calllog.pages import (
    MAX_RETRY_AFTER,
    SEALED_END,
    CallNotFoundError,
    Page,
    PageAuthError,
    PageError,
    PageFormatError,
    PageServerError,
    PageTransportError,
    error_for,
    events_url,
    fetch_page,
    fetch_pages,
    parse_page,
    retry_after_seconds,
)
from tests.entries import entry
from tests.sockets import refusing_address


def test_a_page_parses_into_its_entries_live_flag_and_cursor() -> None:
    body = jsoncodec.dumps({"entries": [entry(1), entry(3)], "live": True, "next": 3})
    page = parse_page(body)
    assert page == Page(entries=(entry(1), entry(3)), live=True, next=3)
    assert page.last_seq == 3


def test_next_is_the_servers_cursor_not_the_last_kept_entry() -> None:
    # A filtered page keeps nothing but still moves the cursor.
    page = parse_page(b'{"entries": [], "live": true, "next": 40}')
    assert page.entries == ()
    assert page.next == 40
    assert page.last_seq is None


def test_a_missing_next_falls_back_to_the_last_seq_and_missing_live_to_false() -> None:
    page = parse_page(jsoncodec.dumps({"entries": [entry(2), entry(5)]}))
    assert page.next == 5
    assert page.live is False
    assert parse_page(b'{"entries": []}').next is None


def test_entries_keep_unknown_keys() -> None:
    odd = {**entry(1), "future": [1, 2]}
    assert parse_page(jsoncodec.dumps({"entries": [odd], "live": False, "next": 1})).entries == (
        odd,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"live": true}',
        b'{"entries": {}, "live": true}',
        b'{"entries": [1], "live": true}',
        b'{"entries": [{"type": "x"}], "live": true}',
        b'{"entries": [{"seq": "1"}], "live": true}',
        b'{"entries": [{"seq": -1}], "live": true}',
        b'{"entries": [{"seq": true}], "live": true}',
        b'{"entries": [], "live": "yes"}',
        b'{"entries": [], "live": true, "next": "7"}',
        b'{"entries": [], "live": true, "next": 1.5}',
    ],
)
def test_what_is_not_a_page_is_a_format_error(body: bytes) -> None:
    with pytest.raises(PageFormatError) as raised:
        parse_page(body)
    # Only a body that is not JSON at all may mend itself (a cut or a proxy's page) when re-read.
    assert raised.value.retriable is (body == b"not json")


@pytest.mark.parametrize(
    ("status", "kind", "retriable"),
    [
        (401, PageAuthError, False),
        (403, PageAuthError, False),
        (404, CallNotFoundError, False),
        (400, PageError, False),
        (429, PageServerError, True),
        (500, PageServerError, True),
        (503, PageServerError, True),
    ],
)
def test_statuses_map_to_typed_errors(status: int, kind: type[PageError], retriable: bool) -> None:
    error = error_for(status, '{"detail": "why"}')
    assert type(error) is kind
    assert error.retriable is retriable
    assert error.status == status
    assert "why" in str(error)


def test_retry_after_is_kept_when_it_is_a_number() -> None:
    error = error_for(429, "", "7")
    assert isinstance(error, PageServerError)
    assert error.retry_after == 7.0
    unusable = error_for(503, "", "Wed, 21 Oct 2015 07:28:00 GMT")
    assert isinstance(unusable, PageServerError)
    assert unusable.retry_after is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("inf", None), ("nan", None), ("-1", None), ("1e12", MAX_RETRY_AFTER), ("2.5", 2.5)],
)
def test_retry_after_is_finite_and_capped(header: str, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_the_call_id_is_quoted_into_the_path() -> None:
    assert events_url("http://h:1/", "CA_1") == "http://h:1/v1/calls/CA_1/events"
    assert events_url("http://h", "a?b#c d%2F") == "http://h/v1/calls/a%3Fb%23c%20d%252F/events"
    assert events_url("http://h", "...") == "http://h/v1/calls/.../events"


@pytest.mark.parametrize("call", [".", "..", "", "a/../../v1/events", "a\\b", "a\nb", "x" * 300])
def test_an_id_that_is_no_path_segment_never_reaches_the_url(call: str) -> None:
    # `quote` keeps dots, and yarl (and many servers) normalise `/v1/calls/../events` to
    # `/v1/events`: the org feed; many servers decode a quoted `/` back into a separator.
    with pytest.raises(ValueError, match="cannot be a URL path segment"):
        events_url("http://h", call)


class Platform:
    """A tiny stand-in log door whose answers the test scripts; it records every request."""

    def __init__(self) -> None:
        self.log = [entry(seq) for seq in (1, 2, 4, 5, 6)]  # 3 was ephemeral
        self.raw: web.Response | None = None  # answered as it is, before anything else
        self.sealed = True
        self.limit = 2
        self.statuses: list[int] = []
        self.requests: list[aiohttp.web.Request] = []
        self.url = ""
        self.fixed: dict[str, Any] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        if self.raw is not None:
            return self.raw
        if self.statuses:
            status = self.statuses.pop(0)
            return web.json_response({"detail": "scripted"}, status=status)
        if self.fixed is not None:
            return web.json_response(self.fixed)
        after = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", self.limit)), self.limit)
        if self.sealed and after >= self.log[-1]["seq"]:
            return web.Response(status=204)
        read = [item for item in self.log if item["seq"] > after][:limit]
        next_seq = read[-1]["seq"] if read else None
        return web.json_response({"entries": read, "live": not self.sealed, "next": next_seq})


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    stand_in = Platform()
    app = web.Application()
    app.router.add_get("/v1/calls/{call}/events", stand_in.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stand_in.url = f"http://127.0.0.1:{port}"
    yield stand_in
    await runner.cleanup()


async def collect(session: aiohttp.ClientSession, platform: Platform, **kwargs: Any) -> list[Page]:
    return [page async for page in fetch_pages(session, platform.url, "key", "CA_1", **kwargs)]


async def test_pages_are_followed_until_a_sealed_call_answers_204(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        pages = await collect(session, platform)
    seqs = [item["seq"] for page in pages for item in page.entries]
    assert seqs == [1, 2, 4, 5, 6]
    assert pages[-1] == SEALED_END
    assert [r.query["after"] for r in platform.requests] == ["0", "2", "5", "6"]


async def test_a_live_call_stops_at_the_first_page_without_next(platform: Platform) -> None:
    platform.sealed = False
    async with aiohttp.ClientSession() as session:
        pages = await collect(session, platform, after=2, limit=10)
    assert [item["seq"] for page in pages for item in page.entries] == [4, 5, 6]
    assert pages[-1].next is None
    assert all(page.live for page in pages)
    assert platform.requests[0].query["limit"] == "10"


async def test_headers_carry_the_key_the_env_and_ask_for_json(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        await fetch_page(session, platform.url, "sek", "CA_1", env="production", limit=9999)
    request = platform.requests[0]
    assert request.headers["Authorization"] == "Bearer sek"
    assert request.headers["pinecall-env"] == "production"
    assert request.headers["Accept"] == "application/json"
    assert request.query["limit"] == "500"


@pytest.mark.parametrize(
    ("status", "kind"), [(401, PageAuthError), (404, CallNotFoundError), (502, PageServerError)]
)
async def test_error_statuses_raise_typed_errors(
    platform: Platform, status: int, kind: type[PageError]
) -> None:
    platform.statuses = [status]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(kind) as raised:
            await collect(session, platform)
    assert raised.value.status == status


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_an_error_body_echoing_the_key_names_none_of_it(
    platform: Platform, status: int
) -> None:
    key = "pc_live/k3y+é"
    echoed = f'{{"detail": "Bearer {key} refused", "raw": {jsoncodec.dumps(key).decode()}}}'
    platform.raw = web.Response(status=status, text=f"{echoed} {quote_plus(key)}")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PageError) as raised:
            await fetch_page(session, platform.url, key, "CA_1")
    said = str(raised.value)
    assert raised.value.status == status
    assert "k3y" not in said, said
    assert said.count("[credential]") == 3, said


async def test_a_cursor_that_does_not_move_is_refused(platform: Platform) -> None:
    platform.fixed = {"entries": [], "live": True, "next": 0}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PageFormatError) as raised:
            await collect(session, platform)
    assert len(platform.requests) == 1
    assert raised.value.status == 200


@pytest.mark.parametrize(
    ("body", "retriable"),
    [
        (b"<html>a proxy's page</html>", True),
        (b'{"entries": "none"}', False),
        (b'{"entries": [{"seq": 1', True),
    ],
)
async def test_a_200_whose_body_is_no_page_says_it_was_a_200(
    platform: Platform, body: bytes, retriable: bool
) -> None:
    # The status is what tells the key gate the key was taken; the body only that it is no page.
    platform.raw = web.Response(body=body, content_type="application/json")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PageFormatError) as raised:
            await fetch_page(session, platform.url, "key", "CA_1")
    assert raised.value.status == 200
    # Not JSON (cut short, a proxy's page) may read whole when asked again; a changed shape not.
    assert raised.value.retriable is retriable


async def test_a_page_over_the_size_cap_is_a_format_error(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "MAX_PAGE_BYTES", 100)
    platform.fixed = {"entries": [entry(1)], "live": True, "next": 1}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PageFormatError, match="too large") as raised:
            await fetch_page(session, platform.url, "key", "CA_1")
    assert raised.value.retriable is False
    assert raised.value.status == 200


async def test_a_page_over_the_size_cap_is_asked_again_for_fewer_entries(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entries the stream takes whole (up to BRIDGE_SSE__MAX_EVENT_BYTES) can fill a page of the
    # platform's 500 past the cap: that gap was never read, nor that call backfilled.
    monkeypatch.setattr(pages, "MAX_PAGE_BYTES", 1200)
    platform.log = [entry(seq, data={"text": "x" * 200}) for seq in range(1, 12)]
    platform.limit = pages.MAX_LIMIT
    async with aiohttp.ClientSession() as session:
        read = await collect(session, platform)
    assert [item["seq"] for page in read for item in page.entries] == list(range(1, 12))
    limits = [r.query.get("limit") for r in platform.requests]
    # Halved from the platform's 500 until a page fits, then kept for the pages after it.
    assert limits[:8] == [None, "250", "125", "62", "31", "15", "7", "3"]
    assert set(limits[8:]) == {"3"}


async def test_an_entry_over_the_size_cap_alone_is_still_a_format_error(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "MAX_PAGE_BYTES", 100)
    platform.log = [entry(1, data={"text": "x" * 200})]
    platform.limit = pages.MAX_LIMIT
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PageFormatError, match="too large"):
            await collect(session, platform)
    assert platform.requests[-1].query["limit"] == "1"


@pytest.mark.parametrize(
    ("status", "kind", "retriable"),
    [(401, PageAuthError, False), (503, PageServerError, True), (429, PageServerError, True)],
)
async def test_an_error_over_the_size_cap_is_still_the_error_its_status_says(
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    kind: type[PageError],
    retriable: bool,
) -> None:
    # A proxy's long error page: a 401 must still reach the key gate, a 503 still be retried.
    monkeypatch.setattr(pages, "MAX_PAGE_BYTES", 100)
    platform.raw = web.Response(body=b"x" * 1000, status=status, headers={"Retry-After": "3"})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(kind) as raised:
            await fetch_page(session, platform.url, "key", "CA_1")
    assert raised.value.status == status
    assert raised.value.retriable is retriable


async def test_an_unreachable_platform_is_a_retriable_transport_error() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PageTransportError) as raised:
            await fetch_page(
                session, f"http://{refusing_address()}", "key", "CA_1", timeout_seconds=2
            )
    assert raised.value.retriable is True
