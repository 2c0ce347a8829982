"""One WebSocket session: authenticate the upgrade, read the client's frames, answer them."""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from bridge.simulator.auth import ApiKey, unauthorized
from bridge.simulator.config import SimulatorConfig
from bridge.simulator.feed import Connection, Feed, Outgoing
from bridge.simulator.frames import (
    PONG,
    UNAUTHORIZED,
    Invalid,
    Ping,
    Subscribe,
    error,
    interpret,
    subscribed,
)
from bridge.simulator.stats import Stats
from bridge.simulator.tokens import TokenStore

log = logging.getLogger(__name__)


class SessionHandler:
    """`GET <ws_path>?token=<token>`, or with `Authorization: Bearer <api key>`."""

    def __init__(
        self,
        config: SimulatorConfig,
        tokens: TokenStore,
        feed: Feed,
        stats: Stats,
        key: ApiKey,
    ) -> None:
        self._config = config
        self._key = key
        self._tokens = tokens
        self._feed = feed
        self._stats = stats
        self._refused = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        bearer = self._key.ok(request.headers.get("Authorization"))
        token = request.query.get("token")
        allowed = bearer or self._tokens.status(token) == "valid"
        if not allowed:
            self._stats.unauthorized += 1
            if self._config.ws_auth_failure == "http":
                return unauthorized("a valid token or the API key is required")
        ws = web.WebSocketResponse(
            heartbeat=self._config.ws_heartbeat, timeout=self._config.ws_close_timeout
        )
        transport = request.transport
        await ws.prepare(request)
        if not allowed:
            # Accepted, then closed: a browser cannot see an upgrade's status, only a close code.
            await ws.close(code=UNAUTHORIZED, message=b"unauthorized")
            return ws
        expires_in = None
        if not bearer and token is not None and self._config.ws_close_on_token_expiry:
            expires_in = self._tokens.remaining(token)
        conn = self._feed.open(ws, transport, None if bearer else token, expires_in)
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self._answer(conn, message.data)
                elif message.type is WSMsgType.ERROR:
                    break
        finally:
            await self._feed.closed(conn)
        return ws

    def _answer(self, conn: Connection, data: str | bytes) -> None:
        request = interpret(data)
        if isinstance(request, Subscribe) and self._refused < self._config.ws_refuse_subscriptions:
            self._refused += 1
            conn.push(Outgoing(error("subscription refused (simulated)"), "control"))
        elif isinstance(request, Subscribe):
            # Queued before any event frame, since events are queued only once subscribed.
            conn.push(Outgoing(subscribed(request.events), "control"))
            self._feed.subscribe(conn, request.events)
        elif isinstance(request, Ping):
            conn.push(Outgoing(PONG, "control"))
        elif isinstance(request, Invalid):
            conn.push(Outgoing(error(request.message), "control"))
