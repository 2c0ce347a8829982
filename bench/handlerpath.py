"""CPU per event of the webhook handler path, in-process: two variants paired in ABBA rounds.

    python -m bench.handlerpath [--variant timer|payload-id|event-time|hmac|read|content-type|
                                 rfc3339|all|control]
                                [--rounds 40] [--per-round 300] [--gc-threshold 700]

What runs: `WebhookHandler.handle` on prepared `make_mocked_request`s (signed one-event bodies
from `bench.events`, the whole body arrived: no HTTP parsing or socket writes), the real pipeline
and `KafkaSink.send`, the producer's `send` answering a done future (no Kafka I/O); replay check
on (300 s), uvloop when installed. The old variant is today's code with one change undone by
patching (the old function is copied below); `stop-middleware` times both sides through the
public app's middlewares as aiohttp chains them, the old side with `closing_while_stopping` too
(`bridge/app.py`), the new without it; `control` runs today's code against itself, to
show what the harness reads into no change. Each round times `--per-round` requests of each
variant with `time.process_time`, the order alternated per round (A B, B A, ...), the GC frozen
over the prepared requests. Printed: each variant's min and median µs per event, then the median
of the per-round ratios new/old and in how many rounds new was lower. The box may be shared:
only the paired ratios mean anything, and a control's tells how far they move with no change.
To measure another change, copy its old function here and add a variant to VARIANTS.

The cyclic GC's settings are variants too: `gc-threshold` runs the old side at CPython's gen-0
threshold (700) against the process's (`--gc-threshold`, for every variant of the run);
`gc-freeze` runs the old side with nothing frozen (start-up objects and the prepared work back
in the collected generations), the new side as the harness always runs, frozen. Full collections
come about once a minute at 800 requests/s: only rounds of thousands of requests see any.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any, cast

from aiohttp import streams, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import make_mocked_request

from bench.events import body
from bench.paired import (
    CPYTHON_GEN0_THRESHOLD,
    Outcome,
    Patch,
    gc_threshold,
    gc_unfrozen,
    paired,
    report,
    set_gen0_threshold,
)
from bench.paired import patched as _patched
from bench.paired import run as _run
from bridge import jsoncodec
from bridge import pipeline as pipeline_module
from bridge.app import Handler, Readiness, closing_while_stopping, json_errors
from bridge.config import load_settings
from bridge.metrics import Metrics
from bridge.normalise import Channel, Event, Unrecognised, event_time, shapes, split_body
from bridge.normalise import event as event_module
from bridge.normalise.ids import valid_call_id, valid_id
from bridge.pipeline import BatchResult, Pipeline, _Refused, pipeline_for
from bridge.routing import Router
from bridge.sink import kafka
from bridge.sink.limits import too_large
from bridge.sink.record import Record
from bridge.sources import webhook
from bridge.sources.signature import Verdict, signature_header, verify
from bridge.sources.webhook import (
    ITEM_OVERHEAD_BYTES,
    RETRY_AFTER_SECONDS,
    SIGNATURE_HEADER,
    WebhookHandler,
    _outside_window,
    _why_not_json,
    json_response,
)

# The shared machinery lives in bench.paired; these names stay importable from here too.
__all__ = ["VARIANTS", "Outcome", "Patch", "_patched", "_run", "main", "measure", "report"]

SECRET = "bench-handlerpath-secret"
MAX_AGE_SECONDS = 300.0


# --- The old functions, as they were before each change -----------------------------------------


async def _old_send(
    self: Pipeline,
    record: Record,
    deadline: float,
    result: BatchResult,
    answered: bool,
    own: float,
) -> asyncio.Future[Any] | _Refused | None:
    """A copy, on purpose (the A/B's old side), of bridge/pipeline.py's `Pipeline._send` before
    the timer was armed only for a send that suspends. `answered` and `own` are today's
    signature only: a stop's sooner answer deadline (`Pipeline.answer_by`) is not what this pair
    measures."""
    from bridge.pipeline import _REFUSED, PublishFailure, flood

    try:
        async with asyncio.timeout_at(deadline):
            delivery = await self._sink.send(record)
    except TimeoutError:
        self._fail("timeout", result)
        return None
    except Exception as exc:
        if too_large(exc):
            return _REFUSED
        reason: PublishFailure = "retriable" if getattr(exc, "retriable", False) else "error"
        flood.warning("Kafka refused a record", extra={"error": type(exc).__name__})
        self._fail(reason, result)
        return None
    self._records_in_flight += 1
    delivery.add_done_callback(self._delivered)
    return delivery


def _old_checked(
    event: Event | Unrecognised, item: dict[str, Any], payload_id: str | None
) -> Event | Unrecognised:
    """A copy, on purpose (the A/B's old side), of bridge/normalise/shapes.py's `_checked` before
    the payload's id was read once: it read it again."""
    if isinstance(event, Unrecognised):
        return event
    if event.call is not None and not valid_call_id(event.call):
        return Unrecognised("invalid_call_id", item)
    for value in (shapes._payload_id(item), event.agent, event.org):
        if value is not None and not valid_id(value):
            return Unrecognised("invalid_id", item)
    return event


def _old_normalise(
    item: Any,
    *,
    channel: Channel,
    received_at: float,
    known_time: float | shapes._Unread | None = shapes.UNREAD,
) -> Event | Unrecognised:
    """A copy, on purpose (the A/B's old side), of bridge/normalise/shapes.py's `normalise`
    before it took the time the replay check read: it read it again."""
    if not isinstance(item, dict):
        return Unrecognised("not_an_object", item)
    shape = shapes._shape(item)
    payload_id = shapes._payload_id(item)
    if shape == "legacy":
        when = shapes._time(item, shape)
        legacy = shapes._legacy(item, payload_id, when, channel, received_at)
        return shapes._checked(legacy, item, payload_id)
    event_type = item.get("type")
    if event_type is None:
        return Unrecognised("missing_type", item)
    if not isinstance(event_type, str) or not valid_id(event_type, shapes.MAX_TYPE_LENGTH):
        return Unrecognised("invalid_type", item)
    when = shapes._time(item, shape)
    event: Event | Unrecognised
    if shape == "entry":
        event = shapes._entry(item, payload_id, when, event_type, channel, received_at)
    elif shape == "alert":
        event = shapes._alert(item, payload_id, when, event_type, channel, received_at)
    else:
        event = shapes._documented(item, payload_id, when, event_type, channel, received_at)
    return shapes._checked(event, item, payload_id)


async def _old_handle(
    self: WebhookHandler, request: web.Request, limit: int, held: int
) -> web.Response:
    """A copy, on purpose (the A/B's old side), of bridge/sources/webhook.py's
    `WebhookHandler._handle` before a body that has all arrived was taken as it lies: it went
    through `request.read()`."""
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        return self._reject(415, "unsupported_media_type", "send application/json")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        return self._reject(
            415, "unsupported_media_type", "send the body unencoded", Connection="close"
        )
    try:
        if request.content.is_eof():
            # The whole body is already here (a small webhook arrives with its head): the
            # read cannot wait, and the timer cost about 5% of the path's CPU per event.
            body = await request.read()
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
    except web.RequestPayloadError:
        # Broken chunked framing or content encoding: the sender's fault, final, not a bug.
        detail = "the body's chunked framing or content encoding is invalid"
        return self._reject(400, "invalid_body", detail)
    except ConnectionResetError:
        # The sender went away mid-body: nothing is stored, and it is no bug to log.
        return self._reject(400, "incomplete_body", "the connection closed mid-body")
    # No secret and unsigned not allowed (settings loaded for a Kafka tool): refuse them all.
    if self._secrets or not self._settings.allow_unsigned:
        verdict = verify(request.headers.get(SIGNATURE_HEADER), body, self._secrets)
        if verdict is not Verdict.VALID:
            return self._reject(401, verdict.value, f"check the {SIGNATURE_HEADER} header")
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
        )
    finally:
        self._in_flight_bytes -= charge
    if not result.ok:
        self._metrics.rejection("webhook", "kafka_unavailable").inc()
        return json_response(
            {
                "error": "kafka_unavailable",
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


def _old_verify(header: str | None, body: bytes, secrets: Sequence[bytes]) -> Verdict:
    """A copy, on purpose (the A/B's old side), of bridge/sources/signature.py's `verify` before
    each secret's keyed HMAC was copied per body: it built an `hmac.HMAC` (the key's set-up
    included) per secret and body."""
    if header is None or not header.strip():
        return Verdict.MISSING
    value = header.strip()
    if value[:7].lower() == "sha256=":
        value = value[7:]
    if len(value) != 64:
        return Verdict.MALFORMED
    try:
        given = bytes.fromhex(value)
    except ValueError:
        return Verdict.MALFORMED
    if len(given) != 32:
        return Verdict.MALFORMED
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(expected, given)
    return Verdict.VALID if matched else Verdict.INVALID


def _old_refused_media(
    self: WebhookHandler, request: web.Request, **headers: str
) -> web.Response | None:
    """A copy, on purpose (the A/B's old side), of bridge/sources/webhook.py's
    `WebhookHandler._refused_media` before issue 12: it read `request.content_type`."""
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        return self._reject(415, "unsupported_media_type", "send application/json", **headers)
    if webhook._coded_body(request):
        return self._reject(
            415,
            "unsupported_media_type",
            "send the body unencoded",
            **{**headers, "Connection": "close"},
        )
    return None


def _old_rfc3339(epoch_seconds: float) -> str:
    """A copy, on purpose (the A/B's old side), of bridge/normalise/event.py's `rfc3339` before
    the milliseconds' text was looked up: it formatted them per call."""
    seconds = int(epoch_seconds)
    micros = round((epoch_seconds - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return f"{event_module._second(seconds)}.{micros // 1000:03d}Z"


VARIANTS: dict[str, Patch] = {
    "timer": lambda: _patched((Pipeline, "_send", _old_send)),
    "payload-id": lambda: _patched((shapes, "_checked", _old_checked)),
    "event-time": lambda: _patched((pipeline_module, "normalise", _old_normalise)),
    "all": lambda: _patched(
        (Pipeline, "_send", _old_send),
        (shapes, "_checked", _old_checked),
        (pipeline_module, "normalise", _old_normalise),
    ),
    "hmac": lambda: _patched((webhook, "verify", _old_verify)),
    "read": lambda: _patched((WebhookHandler, "_handle", _old_handle)),
    "content-type": lambda: _patched((WebhookHandler, "_refused_media", _old_refused_media)),
    "rfc3339": lambda: _patched((event_module, "rfc3339", _old_rfc3339)),
    "stop-middleware": lambda: _patched((_path, "call", _path.old)),
    "gc-threshold": lambda: gc_threshold(CPYTHON_GEN0_THRESHOLD),
    "gc-freeze": gc_unfrozen,
    "control": contextlib.nullcontext,
}


# --- The path --------------------------------------------------------------------------------


class _Path:
    """What the timed part calls per request: the handler alone, or (a middleware variant) the
    public app's chain of middlewares around it, `old` the chain the variant undoes."""

    def __init__(self) -> None:
        self.call: Handler | None = None
        self.old: Handler | None = None


_path: _Path = _Path()
# The variants timed through the public app's middlewares (json_errors on both sides; the old
# side adds `closing_while_stopping`, never stopping, as while serving).
THROUGH_MIDDLEWARES = frozenset({"stop-middleware"})


def _chain(handler: WebhookHandler, *middlewares: Any) -> Handler:
    """`handler.handle` inside `middlewares` as aiohttp 3.14 wraps a route's (`_build_middlewares`,
    cached per route): a partial each, so a request pays one call and coroutine a middleware."""
    call: Handler = handler.handle
    for middleware in reversed(middlewares):
        call = functools.partial(middleware, handler=call)
    return call


class _Producer:
    """Takes each record at once, acknowledged: the path without Kafka's I/O."""

    async def send(self, topic: str, **_: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _handler() -> WebhookHandler:
    settings = load_settings(
        webhook={"secrets": [SECRET], "max_age_seconds": MAX_AGE_SECONDS},
    )
    metrics = Metrics()
    sink = kafka.KafkaSink(settings.kafka, metrics)
    sink._producer = _Producer()
    router = Router(settings.topics, settings.routing.rules)
    pipeline = pipeline_for(settings, sink, router, metrics)
    return WebhookHandler(settings.webhook, pipeline, metrics)


def _requests(salt: int, first: int, count: int) -> list[web.Request]:
    """`count` signed one-event webhooks, each body already arrived whole."""
    loop = asyncio.get_running_loop()
    made: list[web.Request] = []
    shared: dict[str, Any] = {}  # the first request's mocks, for all: making them costs ms
    for index in range(first, first + count):
        raw = body(salt, index, 1, time.time())
        payload = streams.StreamReader(cast(BaseProtocol, _Protocol()), 2**16, loop=loop)
        payload.feed_data(raw)
        payload.feed_eof()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(raw)),
            SIGNATURE_HEADER: signature_header(SECRET.encode(), raw),
        }
        request = make_mocked_request(
            "POST", "/webhooks/pinecall", headers, payload=payload, **shared
        )
        if not shared:
            shared = {
                "app": request.app,
                "protocol": request.protocol,
                "transport": request.transport,
                "writer": request._payload_writer,
            }
        made.append(request)
    return made


class _Protocol:
    """What a StreamReader asks of its protocol: nothing here ever pauses reading."""

    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self, **_: Any) -> None: ...


async def _timed(requests: list[web.Request]) -> float:
    """CPU seconds to handle `requests` one after another (through `_path.call`)."""
    path = _path
    started = time.process_time()
    for request in requests:
        response = await cast(Handler, path.call)(request)
        if response.status != 200:
            raise RuntimeError(f"answered {response.status}: {cast(web.Response, response).text}")
    return time.process_time() - started


async def measure(variant: str, rounds: int, per_round: int) -> Outcome:
    """`rounds` paired rounds of `per_round` requests of the old and the new variant each."""
    handler = _handler()
    if variant in THROUGH_MIDDLEWARES:
        stopping = closing_while_stopping(Readiness(Metrics(), lambda: True))
        _path.call, _path.old = _chain(handler, json_errors), _chain(handler, stopping, json_errors)
    else:
        _path.call = _path.old = handler.handle

    def prepare(n: int, k: int) -> list[web.Request]:
        return _requests(n, k * per_round, per_round)

    return await paired(VARIANTS[variant], prepare, _timed, rounds, per_round)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=300)
    parser.add_argument("--gc-threshold", type=int, help="gen 0's, the whole run (the new side)")
    args = parser.parse_args(argv)
    set_gen0_threshold(args.gc_threshold)

    async def each() -> None:
        default = ["timer", "payload-id", "event-time", "hmac", "read", "all", "control"]
        for variant in args.variant or default:
            print(report(variant, await measure(variant, args.rounds, args.per_round)), flush=True)

    _run(each())


if __name__ == "__main__":
    main()
