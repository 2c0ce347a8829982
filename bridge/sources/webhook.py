"""The webhook source: limits, signature on the raw bytes, JSON, then the one publish path."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.helpers import parse_content_type
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler

from bridge import jsoncodec
from bridge.config import REQUEST_OVERHEAD_BYTES, HttpSettings, WebhookSettings
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.normalise import event_time, split_body
from bridge.pipeline import Pipeline
from bridge.rejections import RejectReason
from bridge.sources.signature import Verdict, forget_keys, read_header, verify

log = logging.getLogger(__name__)
# A refusal can come once per request: thinned (bridge.logthrottle), the metric counts each. Not
# logged at all, a wrong secret lost every webhook with nothing in the log to say why.
flood = LogThrottle(log)

SIGNATURE_HEADER = "X-Pinecall-Signature"
RETRY_AFTER_SECONDS = "5"
# What each event of a body costs until Kafka answers (its record's future and the pipeline's
# note of it: 600 to 800 bytes measured), charged once the body is parsed: a 960 KiB array of
# half a million tiny items held 285 MB, 300 times its bytes.
ITEM_OVERHEAD_BYTES = 768


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """aiohttp's json_response, with orjson: the stdlib encoder showed up in the profile."""
    return web.Response(
        body=jsoncodec.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    """A short JSON error; `reason` is the same word the rejection metric carries."""
    response = json_response({"error": reason, "detail": detail}, status, headers or None)
    if headers.get("Connection", "").lower() == "close":
        # aiohttp sends the header as given but keeps the connection: it drained the body left
        # unread and served a request pipelined after it, one its client takes as unanswered.
        response.force_close()
    return response


class WebhookHandler:
    """POST handler; answers 2xx only once every event of the body is acknowledged by Kafka."""

    def __init__(
        self,
        settings: WebhookSettings,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        body_timeout_seconds: float = HttpSettings().body_timeout_seconds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._body_timeout = body_timeout_seconds
        self._pipeline = pipeline
        self._metrics = metrics
        self._secrets = _encoded(settings)
        self._in_flight_bytes = 0  # one event loop: a plain int, no lock
        # Read at scrape time, as the pipeline's in-flight gauge: no update per request.
        metrics.webhook_in_flight_bytes.set_function(lambda: self._in_flight_bytes)
        # At 0 from the start, for increase(): a first 503 or replay must count as an increase.
        for reason in (
            "kafka_unavailable",
            "stopping",
            "overloaded",
            "stale_timestamp",
            "future_timestamp",
            "missing_timestamp",
            "too_many_events",
        ):
            metrics.rejection("webhook", reason)

    @property
    def settings(self) -> WebhookSettings:
        return self._settings

    def use(self, settings: WebhookSettings) -> None:
        """Verify with `settings`' secrets from the next request on (a reloaded secret file)."""
        # No await between the two: a request sees the old pair or the new, never a mix.
        self._settings, self._secrets = settings, _encoded(settings)
        forget_keys()

    def _reject(
        self, status: int, reason: RejectReason, detail: str, **headers: str
    ) -> web.Response:
        self._metrics.rejection("webhook", reason).inc()
        # One message a reason (a fixed set): a flood of one kind hides no other.
        flood.warning(f"webhook refused: {reason}", extra={"status": status, "detail": detail})
        return error(status, reason, detail, **headers)

    async def handle(self, request: web.Request) -> web.Response:
        """Refuse at once a body declared too large (413) or past the bytes in flight (503)."""
        limit = self._settings.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            # Before the 503: a final answer, where a 503 would have it retried for nothing.
            return self._too_large(limit)
        size = _request_charge(length, limit)
        if self._overloaded(size, held=0):
            return self._overloaded_answer()
        self._in_flight_bytes += size
        try:
            return await self._handle(request, limit, size)
        finally:
            self._in_flight_bytes -= size

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a body too large (413), not JSON or encoded (415), without a
        well-formed signature (401) or past the bytes in flight (503) is refused unsent; another
        expectation gets 417."""
        limit = self._settings.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            # aiohttp's own would send 100 Continue, and the client the whole body, for nothing.
            return self._too_large(limit)
        # Final answers the head alone decides, before the 503 (which would have it retried) and
        # before the body is asked for; closed, as for the 413: the body left unsent is not awaited.
        refused = self._refused_media(request, Connection="close")
        if refused is None and self._signed_only():
            header = _signature(request)
            given = header if isinstance(header, Verdict) else read_header(header)
            if isinstance(given, Verdict):  # no digest to check the body against, whatever it is
                refused = self._unsigned(given, Connection="close")
        if refused is not None:
            return refused
        # Only looked at: handle() checks again and charges, as it does without an Expect.
        if self._overloaded(_request_charge(length, limit), held=0):
            # Closed, as for the 413: the body it refuses unsent is not waited for.
            return self._overloaded_answer(Connection="close")
        try:
            await _default_expect_handler(request)  # 100 Continue, or 417 to another expectation
        except web.HTTPExpectationFailed:
            # Raised from here, aiohttp answered it itself: text/plain, past every middleware,
            # and counted nowhere. Closed: the body is not sent without its 100 Continue.
            detail = "only `Expect: 100-continue` is understood"
            return self._reject(417, "expectation_failed", detail, Connection="close")
        return None

    def _overloaded(self, charge: int, *, held: int) -> bool:
        """Whether `charge` more would pass the bytes in flight, with other requests than the
        one holding `held` in flight: a lone request always gets in."""
        others = self._in_flight_bytes - held
        return others > 0 and self._in_flight_bytes + charge > self._settings.in_flight_limit

    def _overloaded_answer(self, **headers: str) -> web.Response:
        detail = "too many webhooks in flight; retry later"
        return self._reject(
            503, "overloaded", detail, **{"Retry-After": RETRY_AFTER_SECONDS, **headers}
        )

    def _too_large(self, limit: int) -> web.Response:
        return self._reject(
            413, "body_too_large", f"the limit is {limit} bytes", Connection="close"
        )

    def _refused_media(self, request: web.Request, **headers: str) -> web.Response | None:
        """The 415 for a body that is not JSON or is encoded, if it is so; `headers` added."""
        if not _json_media(request.headers.get(hdrs.CONTENT_TYPE)):
            return self._reject(415, "unsupported_media_type", "send application/json", **headers)
        if _coded_body(request):
            return self._reject(
                415,
                "unsupported_media_type",
                "send the body unencoded",
                **{**headers, "Connection": "close"},
            )
        return None

    def _signed_only(self) -> bool:
        """Whether a body must be signed: no secret and unsigned not allowed refuses them all."""
        return bool(self._secrets) or not self._settings.allow_unsigned

    def _unsigned(self, verdict: Verdict, **headers: str) -> web.Response:
        detail = f"check the {SIGNATURE_HEADER} header"
        # mypy reads an Enum's value as str: tests/unit/test_metrics.py holds these to reasons.
        return self._reject(401, cast(RejectReason, verdict.value), detail, **headers)

    async def _handle(self, request: web.Request, limit: int, held: int) -> web.Response:
        refused = self._refused_media(request)
        if refused is not None:
            return refused
        try:
            content = request.content
            if content.is_eof():
                # The whole body is already here (a small webhook arrives with its head): the
                # read cannot wait, and the timer cost about 5% of the path's CPU per event.
                # Taken as it lies, not through request.read()'s loop of reads and copies; the
                # limit it would have enforced is enforced here.
                body = content.read_nowait()
                if len(body) > limit:
                    return self._too_large(limit)
            else:
                async with asyncio.timeout(self._body_timeout):
                    body = await request.read()
        except TimeoutError:
            # A client this slow holds a connection and a buffer: answer, then hang up.
            self._metrics.http_timed_out.labels("webhook", "body").inc()
            detail = f"the body did not arrive within {self._body_timeout:g} s"
            return self._reject(408, "body_timeout", detail, Connection="close")
        except web.HTTPRequestEntityTooLarge:  # no Content-Length: the stream passed the limit
            return self._too_large(limit)
        except (web.RequestPayloadError, HttpProcessingError):
            # Broken chunked framing or content encoding: the sender's fault, final, not a bug.
            # (aiohttp's pure-Python parser hands the reader its own error, not the wrapper.)
            detail = "the body's chunked framing or content encoding is invalid"
            return self._reject(400, "invalid_body", detail)
        except ConnectionResetError:
            # The sender went away mid-body: nothing is stored, and it is no bug to log.
            return self._reject(400, "incomplete_body", "the connection closed mid-body")
        # No secret and unsigned not allowed (settings loaded for a Kafka tool): refuse them all.
        if self._signed_only():
            header = _signature(request)
            verdict = header if isinstance(header, Verdict) else verify(header, body, self._secrets)
            if verdict is not Verdict.VALID:
                return self._unsigned(verdict)
        try:
            document: Any = jsoncodec.loads(body)
        except jsoncodec.JSONDecodeError as exc:
            return self._reject(400, *_why_not_json(body, exc))
        items = split_body(document)
        if len(items) > self._settings.max_events_per_body:
            # Final, before anything is charged or sent: a lone body gets in whatever the bytes
            # in flight, and each event holds far more than its bytes until Kafka answers.
            detail = f"{len(items)} events; the limit is {self._settings.max_events_per_body}"
            return self._reject(413, "too_many_events", detail)
        times = None
        if self._secrets and self._settings.max_age_seconds:
            # Read once: the pipeline's normalise takes them, where it would read them again.
            times = [event_time(item) for item in items]
            refusal = _outside_window(times, self._clock(), self._settings.max_age_seconds)
            if refusal is not None:
                # Final (a 4xx): Pinecall's retry of an old body would be refused again anyway.
                return self._reject(400, *refusal)
        charge = len(items) * ITEM_OVERHEAD_BYTES
        if self._overloaded(charge, held=held):
            return self._overloaded_answer()
        self._in_flight_bytes += charge
        try:
            result = await self._pipeline.submit(
                items,
                "webhook",
                raw=None if isinstance(document, list) else body,
                event_times=times,
                answered=True,
            )
        finally:
            self._in_flight_bytes -= charge
        if not result.ok:
            # Released by a stop, Kafka failing nothing: its own reason, as every rolling update
            # answers some so, and PinecallBridgeWebhooksRefused503 pages on kafka_unavailable.
            reason: RejectReason = "stopping" if result.stopped else "kafka_unavailable"
            self._metrics.rejection("webhook", reason).inc()
            return json_response(
                {
                    "error": reason,
                    "detail": "not stored; retry later",
                    **result.as_dict(),
                },
                503,
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        if result.refused:
            # Kafka will never take it, even as a dead letter: a 4xx is final for Pinecall, where
            # a 503 would have it retried (once) for nothing. What was stored of it stays stored.
            return json_response(
                {
                    "error": "record_too_large",
                    "detail": "Kafka refuses a record this large, even as a dead letter",
                    **result.as_dict(),
                },
                413,
            )
        return json_response(result.as_dict(), 202 if result.dead_lettered else 200)


def _signature(request: web.Request) -> str | Verdict | None:
    """The signature header's value; sent twice or more, malformed (which one was meant?)."""
    values = request.headers.getall(SIGNATURE_HEADER, ())
    # Not the first one: a proxy or client that adds its own before ours would choose what is
    # verified, and two receivers taking different ones would disagree about the same request.
    if len(values) > 1:
        return Verdict.MALFORMED
    return values[0] if values else None


# By the header's text, remembered: `request.content_type` sets its parsed form up again on
# every request (a copy of the parameters, three attributes of a new object), 2-4 µs a webhook.
@functools.lru_cache(maxsize=64)
def _json_media(raw: str | None) -> bool:
    """Whether a Content-Type header's value names JSON, as `request.content_type` reads it."""
    try:
        media = "application/octet-stream" if raw is None else parse_content_type(raw)[0]
    except RecursionError:  # email's header parser recurses per nested comment: no media type
        return False
    return media == "application/json" or media.endswith("+json")


def _coded_body(request: web.Request) -> bool:
    """Whether the body comes encoded: any content coding, or a transfer coding besides chunked."""
    headers = request.headers
    if "Content-Encoding" not in headers and "Transfer-Encoding" not in headers:
        return False  # Pinecall's own requests: the hot path
    # Every Content-Encoding, not the first: a parser that decodes (aiohttp's) takes the last.
    content = headers.getall("Content-Encoding", ())
    # aiohttp undoes chunked only: `gzip, chunked` came as the body still gzipped, taken as JSON.
    # (Its parser refuses a second Transfer-Encoding header, and one that does not end chunked.)
    transfer = headers.get("Transfer-Encoding", "").split(",")
    return any(value.lower() != "identity" for value in content) or any(
        coding.strip().lower() not in ("", "chunked") for coding in transfer
    )


def _request_charge(length: int | None, limit: int) -> int:
    """What a request is charged against the bytes in flight before its body is read."""
    return (limit if length is None else length) + REQUEST_OVERHEAD_BYTES


def _encoded(settings: WebhookSettings) -> list[bytes]:
    return [secret.get_secret_value().encode() for secret in settings.secrets]


def _outside_window(
    item_times: list[float | None], now: float, max_age: float
) -> tuple[RejectReason, str] | None:
    """Why a signed body is refused as a replay (its own time too old or too far ahead), if it is;
    `item_times` are its items' times as `event_time` reads them.

    Pinecall sends the same bytes on a retry and puts no time in a header: the body's time is
    all there is. A body is replayed whole, so one readable time among its items bounds it all.
    """
    if not item_times:  # `[]` publishes nothing, replayed or not
        return None
    times = [t for t in item_times if t is not None]
    if not times:
        # Every alert Pinecall sends has its `at`: a signed body with no time could be replayed
        # for ever, which is what turning the check on means to prevent.
        return "missing_timestamp", (
            "no readable event time (`at`, `ts`, `timestamp`, ...); with the replay check on"
            f" ({max_age:g} s), a signed body must carry one"
        )
    oldest, newest = min(times), max(times)
    if now - oldest > max_age:
        return "stale_timestamp", (
            f"the event time is {now - oldest:.0f} s old; signed bodies older than"
            f" {max_age:g} s are refused as replays (every body this old: check the bridge's"
            " clock)"
        )
    if newest - now > max_age:
        return "future_timestamp", (
            f"the event time is {newest - now:.0f} s ahead of the bridge's clock; more than"
            f" {max_age:g} s is refused (check the sender's clock and the bridge's)"
        )
    return None


def _why_not_json(body: bytes, exc: jsoncodec.JSONDecodeError) -> tuple[RejectReason, str]:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", "the body is not valid UTF-8"
    if not body.strip():
        return "empty_body", "the body is empty"
    return "invalid_json", f"the body is not valid JSON: {exc.msg}"
