"""A call log's stored entries as JSON pages (`{entries, live, next}`): parse one, follow them all.

The parser is pure. `fetch_pages` is the thin aiohttp shell the follower's gap fill and the
backfill command read through: it asks for `after=<cursor>` and moves the cursor to the page's
`next` until there is none. Pinecall sets `next` to the last seq it READ (before any filter), so
a page can be empty and still move the cursor; a missing `next` falls back to the last entry's
seq. A 204 means the call is sealed and read to the end: an empty, not-live last page.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge import jsoncodec
from bridge.normalise.ids import shown, valid_call_id
from bridge.redaction import echo_spellings, hidden
from bridge.sources.capped import BodyTooLargeError, read_capped
from bridge.sources.redirects import redirected

ENV_HEADER = "pinecall-env"
# The platform's cap on `limit` (pinecall-runtime log/store.py DEFAULT_LIMIT).
MAX_LIMIT = 500
# The longest wait a `Retry-After` may ask for (a 429 of the per-org pacing is seconds).
MAX_RETRY_AFTER = 300.0
# A page's whole answer: MAX_LIMIT entries of 128 KiB each, far above real pages (entries are
# about a KiB), and a bound on what a broken or hostile server can make one read hold.
MAX_PAGE_BYTES = MAX_LIMIT * 128 * 1024


@dataclass(frozen=True, slots=True)
class Page:
    """One page: its entries as sent (seq order), whether the call is still live, the cursor."""

    entries: tuple[dict[str, Any], ...]
    live: bool
    next: int | None

    @property
    def last_seq(self) -> int | None:
        """The highest seq on the page, or None for an empty page."""
        return max((entry["seq"] for entry in self.entries), default=None)


SEALED_END = Page(entries=(), live=False, next=None)


class PageError(Exception):
    """Reading a page failed; `retriable` says whether asking again may succeed."""

    retriable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PageFormatError(PageError):
    """The answer is not a `{entries, live, next}` page: a bug or a changed wire, not a blip.

    `status` is the answer's (200): the key was taken, only the body is unreadable.
    """


class PageTooLargeError(PageFormatError):
    """A 200 whose page passes MAX_PAGE_BYTES: fewer entries a page may fit (`fetch_pages`)."""


class PageGarbledError(PageFormatError):
    """A 200 whose body is not even JSON: cut short or replaced on the way (a proxy), so retriable.

    JSON that parses but is no page stays a PageFormatError: asking again reads the same wire.
    """

    retriable = True


class PageAuthError(PageError):
    """401/403: the API key is missing, wrong or lacks the `calls` scope."""


class CallNotFoundError(PageError):
    """404: no such call in this key's org and world."""


class PageServerError(PageError):
    """5xx or 429: the platform is struggling; `retry_after` is its own hint in seconds."""

    retriable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PageTransportError(PageError):
    """The connection failed or timed out before a whole answer came back."""

    retriable = True


def parse_page(body: bytes | str) -> Page:
    """Parse one page's JSON body; raise PageFormatError when it is not a page."""
    try:
        decoded = jsoncodec.loads(body)
    except ValueError as exc:
        raise PageGarbledError(f"the log page is not JSON: {exc}") from exc
    return page_of(decoded)


def page_of(decoded: Any) -> Page:
    """A decoded JSON value as a Page; entries must be objects with a non-negative int seq."""
    if not isinstance(decoded, dict):
        raise PageFormatError("the log page is not a JSON object")
    raw_entries = decoded.get("entries")
    if not isinstance(raw_entries, list):
        raise PageFormatError("the log page has no `entries` list")
    entries: list[dict[str, Any]] = []
    for entry in raw_entries:
        if not isinstance(entry, dict) or not _is_seq(entry.get("seq")):
            raise PageFormatError(f"a log page entry has no valid seq: {entry!r:.200}")
        entries.append(entry)
    live = decoded.get("live", False)
    if not isinstance(live, bool):
        raise PageFormatError("the log page's `live` is not a boolean")
    if "next" in decoded:
        nxt = decoded["next"]
        if nxt is not None and not _is_seq(nxt):
            raise PageFormatError("the log page's `next` is not a seq")
    else:
        nxt = max((entry["seq"] for entry in entries), default=None)
    return Page(entries=tuple(entries), live=live, next=nxt)


# What stands for the API key in an error's text.
HIDDEN = "[credential]"


def error_for(status: int, detail: str, retry_after: str | None = None) -> PageError:
    """The typed error for a non-success HTTP status."""
    message = f"call log page answered {status}: {detail[:200]}"
    if status in (401, 403):
        return PageAuthError(message, status=status)
    if status == 404:
        return CallNotFoundError(message, status=status)
    if status >= 500 or status == 429:
        return PageServerError(message, status=status, retry_after=retry_after_seconds(retry_after))
    return PageError(message, status=status)


def bearer_headers(api_key: str, env: str | None, accept: str) -> dict[str, str]:
    """Bearer auth, the `pinecall-env` header where set, and what we accept."""
    headers = {"Authorization": f"Bearer {api_key}", "Accept": accept}
    if env:
        headers[ENV_HEADER] = env
    return headers


def events_url(api_url: str, call_id: str) -> str:
    """`GET /v1/calls/{id}/events` under the API's base URL; ValueError for an unusable id."""
    if not valid_call_id(call_id):
        raise ValueError(f"call id {shown(call_id)!r} cannot be a URL path segment")
    return f"{api_url.rstrip('/')}/v1/calls/{quote(call_id, safe='')}/events"


async def fetch_page(
    session: aiohttp.ClientSession,
    api_url: str,
    api_key: str,
    call_id: str,
    *,
    after: int = 0,
    env: str | None = None,
    limit: int | None = None,
    timeout_seconds: float = 10.0,
) -> Page:
    """One page of the call's stored entries above `after`; SEALED_END for a 204."""
    headers = bearer_headers(api_key, env, "application/json")
    params: dict[str, str] = {"after": str(after)}
    if limit is not None:
        params["limit"] = str(min(max(limit, 1), MAX_LIMIT))
    try:
        async with session.get(
            events_url(api_url, call_id),
            headers=headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=False,
        ) as response:
            # Read whole before returning, so no connection is held while a caller works.
            if (refused := redirected(response)) is not None:
                raise PageError(f"call log page refused: {refused}", status=response.status)
            status = response.status
            retry_after = response.headers.get("Retry-After")
            try:
                body = await read_capped(response, MAX_PAGE_BYTES)
            except BodyTooLargeError as exc:
                if status not in (200, 204):
                    # An error's body too long to read: its status still says what it is.
                    raise error_for(status, str(exc), retry_after) from exc
                raise PageTooLargeError(f"the log page is too large: {exc}", status=status) from exc
            if status == 204:
                return SEALED_END
            if status != 200:
                # The platform's text (a proxy's page, a framework's echo of the request) may
                # quote the key: never in the error, which is logged.
                text = hidden(body.decode("utf-8", "replace"), echo_spellings(api_key), 200, HIDDEN)
                raise error_for(status, text, retry_after)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PageTransportError(f"call log page request failed ({type(exc).__name__})") from exc
    try:
        return parse_page(body)
    except PageFormatError as exc:
        # With its 200: the platform took the key (it refuses one before any handler).
        raise type(exc)(str(exc), status=200) from exc


async def fetch_pages(
    session: aiohttp.ClientSession,
    api_url: str,
    api_key: str,
    call_id: str,
    *,
    after: int = 0,
    env: str | None = None,
    limit: int | None = None,
    timeout_seconds: float = 10.0,
) -> AsyncGenerator[Page, None]:
    """Every page above `after`, in order, until one has no `next` (or the call answers 204).

    A page too large to hold is asked again for half as many entries, down to one.
    """
    cursor = after
    while True:
        try:
            page = await fetch_page(
                session,
                api_url,
                api_key,
                call_id,
                after=cursor,
                env=env,
                limit=limit,
                timeout_seconds=timeout_seconds,
            )
        except PageTooLargeError:
            # Entries of up to BRIDGE_SSE__MAX_EVENT_BYTES each, as the stream takes them: 70
            # such in a row passed MAX_PAGE_BYTES at the platform's 500 a page, and that gap was
            # never read from the pages, nor that call by `backfill`, at any retry.
            if limit == 1:
                raise  # one entry over the cap: no page holds it
            # Kept for the pages after it: large entries come in runs (a tool's long outputs).
            limit = max(1, min(limit or MAX_LIMIT, MAX_LIMIT) // 2)
            continue
        yield page
        if page.next is None:
            return
        if page.next <= cursor:
            # A cursor that does not move would loop forever against a misbehaving server.
            raise PageFormatError(
                f"the log page's next ({page.next}) is not past {cursor}", status=200
            )
        cursor = page.next


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def retry_after_seconds(header: str | None) -> float | None:
    """A `Retry-After` of delta seconds, at most MAX_RETRY_AFTER; None when absent or not one.

    Capped, and only finite: a header of `inf` or of a year would otherwise stall a call forever.
    """
    try:
        value = float(header) if header is not None else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER)
