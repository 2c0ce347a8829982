"""The WebSocket source: token, connect, subscribe, read; reconnect forever; publish in order.

Frames go from the reader into a bounded queue and from there, in micro-batches and in the
order they arrived, through the one publish path. A batch Kafka did not acknowledge is retried
before the next one is taken, so when Kafka is slow the queue fills, the reader stops reading
and the socket pushes back, instead of memory growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bridge.config import PinecallSettings, WebSocketSettings
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.sources.frames import classify, subscribe_message
from bridge.sources.reconnect import DisconnectReason, ReconnectPolicy

log = logging.getLogger(__name__)

# Close codes that mean "your credentials are bad or expired": fetch a new token before retrying.
AUTH_CLOSE_CODES = frozenset({1008, 4001, 4003, 4401, 4403})
MAX_BATCH = 500
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
_DRAINED = object()


class TokenError(Exception):
    """The token request failed; `auth` when the API refused the key."""

    def __init__(self, message: str, *, auth: bool) -> None:
        super().__init__(message)
        self.auth = auth


class TokenClient:
    """Asks Pinecall's REST API for a short-lived WebSocket token."""

    def __init__(
        self, session: aiohttp.ClientSession, api: PinecallSettings, ws: WebSocketSettings
    ) -> None:
        self._session = session
        self._api = api
        self._ws = ws

    async def fetch(self) -> tuple[str, float | None]:
        """The token and its expiry (epoch seconds) when the API says."""
        key = self._api.api_key.get_secret_value() if self._api.api_key else ""
        try:
            async with self._session.request(
                self._ws.token_method,
                self._api.api_url + self._ws.token_path,
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=self._api.request_timeout_seconds),
            ) as response:
                if response.status in (401, 403):
                    raise TokenError(f"token request refused ({response.status})", auth=True)
                if response.status >= 300:
                    raise TokenError(f"token request failed ({response.status})", auth=False)
                body: Any = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenError(f"token request failed ({type(exc).__name__})", auth=False) from exc
        token = body.get(self._ws.token_field) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"no {self._ws.token_field!r} in the token response", auth=False)
        expires_in = body.get("expires_in")
        expires = (
            time.time() + float(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
            else None
        )
        return token, expires


def with_token(url: str, token: str) -> str:
    """The feed URL with `token=<token>` added to its query."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"token": token})))


class WebSocketSource:
    """start() returns at once; the feed connects, reconnects and publishes in the background."""

    def __init__(
        self,
        settings: WebSocketSettings,
        api: PinecallSettings,
        pipeline: Pipeline,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._api = api
        self._pipeline = pipeline
        self._metrics = metrics
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_inflight)
        self._policy = ReconnectPolicy(
            settings.backoff_initial_seconds,
            settings.backoff_max_seconds,
            settings.stable_after_seconds,
        )
        self._session: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._draining = False
        self.token_expires_at: float | None = None

    async def start(self) -> None:
        if self._reader is not None:
            return
        self._session = aiohttp.ClientSession()
        self._metrics.websocket_connected.set(0)
        self._reader = asyncio.create_task(self._read_forever(), name="websocket-reader")
        self._publisher = asyncio.create_task(self._publish_forever(), name="websocket-publisher")

    async def stop(self, deadline: float) -> None:
        """Stop reading, then publish what was already read until `deadline` (loop time)."""
        self._stopping.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._draining = True
        # Wakes a publisher waiting on an empty queue; a full queue needs no wake-up.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_DRAINED)
        if self._publisher is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._publisher, timeout=max(remaining, 0.0))
            left = 0
            while not self._queue.empty():
                left += self._queue.get_nowait() is not _DRAINED
            if left:
                log.error(
                    "feed events not published before the grace period ended",
                    extra={"events": left},
                )
        if self._session is not None:
            await self._session.close()
        self._reader = self._publisher = self._session = None

    async def _read_forever(self) -> None:
        assert self._session is not None
        tokens = TokenClient(self._session, self._api, self._settings)
        while not self._stopping.is_set():
            opened_at: float | None = None
            reason: DisconnectReason = "error"
            try:
                url, headers = await self._target(tokens)
                async with connect(
                    url,
                    additional_headers=headers,
                    open_timeout=self._settings.open_timeout_seconds,
                    ping_interval=self._settings.ping_interval_seconds,
                    ping_timeout=self._settings.ping_timeout_seconds,
                    max_size=self._settings.max_frame_bytes,
                ) as ws:
                    opened_at = time.monotonic()
                    self._metrics.websocket_connected.set(1)
                    log.info("feed connected", extra={"url": self._settings.url})
                    await ws.send(subscribe_message(self._settings.events))
                    reason = await self._read(ws)
            except TokenError as exc:
                reason = "token_error" if not exc.auth else "auth"
                log.warning("feed token unavailable", extra={"error": str(exc)})
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = "auth" if status in (401, 403) else "connect_error"
                log.warning("feed refused the connection", extra={"status": status})
            except ConnectionClosed as exc:
                reason = _close_reason(exc)
                log.warning("feed closed", extra={"reason": reason, "detail": str(exc)})
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                reason = "connect_error"
                log.warning("feed unreachable", extra={"error": f"{type(exc).__name__}: {exc}"})
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any bug in one connection's handling
                log.exception("feed connection failed")
            finally:
                self._metrics.websocket_connected.set(0)
            if self._stopping.is_set():
                return
            self._metrics.websocket_reconnects.labels(reason).inc()
            connected_for = time.monotonic() - opened_at if opened_at is not None else None
            delay = self._policy.next_delay(reason, connected_for)
            log.info("feed reconnecting", extra={"reason": reason, "in_s": round(delay, 2)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _target(self, tokens: TokenClient) -> tuple[str, dict[str, str]]:
        """A fresh token on every connect: a reconnect never reuses an old or expired one."""
        if self._settings.auth == "bearer":
            key = self._api.api_key.get_secret_value() if self._api.api_key else ""
            return self._settings.url, {"Authorization": f"Bearer {key}"}
        token, self.token_expires_at = await tokens.fetch()
        return with_token(self._settings.url, token), {}

    async def _read(self, ws: ClientConnection) -> DisconnectReason:
        frames = self._metrics.websocket_frames
        async for message in ws:
            frame = classify(message)
            frames.labels(frame.kind).inc()
            if frame.kind == "event":
                # Blocks when the queue is full: the socket then stops being read (backpressure).
                await self._queue.put(frame.item)
                self._metrics.websocket_backlog.set(self._queue.qsize())
            elif frame.kind == "control" and frame.detail == "error":
                log.warning("feed sent an error notice", extra={"notice": str(frame.item)[:500]})
            elif frame.kind == "garbage":
                log.debug("feed sent garbage", extra={"detail": frame.detail})
        # The server closed cleanly; async-for ends without raising.
        code = ws.close_code or 1000
        return "auth" if code in AUTH_CLOSE_CODES else "closed"

    async def _publish_forever(self) -> None:
        while not (self._draining and self._queue.empty()):
            first = await self._queue.get()
            if first is _DRAINED:
                return
            batch, last = [first], False
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _DRAINED:
                    last = True
                    break
                batch.append(item)
            await self._publish(batch)
            self._metrics.websocket_backlog.set(self._queue.qsize())
            if last:
                return

    async def _publish(self, batch: list[Any]) -> None:
        """Retry until Kafka acknowledges the whole batch; dedup makes retries publish the rest."""
        attempt = 0
        while True:
            try:
                result = await self._pipeline.submit(batch, "websocket")
            except Exception:  # a bug must not end publishing silently, nor drop the batch
                log.exception("feed batch failed unexpectedly; retrying it")
                failed = len(batch)
            else:
                if result.ok:
                    return
                failed = result.failed
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            attempt += 1
            log.warning(
                "feed events not acknowledged by Kafka; retrying",
                extra={"events": failed, "attempt": attempt, "retry_in_s": delay},
            )
            await asyncio.sleep(delay)


def _close_reason(exc: ConnectionClosed) -> DisconnectReason:
    received = exc.rcvd
    if received is None:
        # No close frame: the peer vanished, or our keepalive ping went unanswered.
        return "ping_timeout" if "keepalive" in str(exc) else "closed"
    if received.code in AUTH_CLOSE_CODES or "auth" in received.reason.lower():
        return "auth"
    return "closed"
