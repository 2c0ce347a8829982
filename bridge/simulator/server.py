"""The HTTP surface: token, webhook registration, the feeds, the call logs, `/_sim/` controls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from bridge import jsoncodec
from bridge.simulator.auth import ApiKey, unauthorized
from bridge.simulator.config import DropMode, SimulatorConfig
from bridge.simulator.delivery import Deliverer
from bridge.simulator.eventstream import (
    CALL_EVENTS_PATH,
    FAIL_ON,
    ORG_EVENTS_PATH,
    SESSIONS_PATH,
    EventStreams,
    FailOn,
)
from bridge.simulator.hooks import ORG_HOOK_ID, HookStore, InvalidHookError, parse_org_hook
from bridge.simulator.session import SessionHandler
from bridge.simulator.stats import Stats
from bridge.simulator.tokens import TokenStore
from bridge.simulator.wire import alert_wire, test_alert

DROP_MODES: tuple[DropMode, ...] = ("abort", "1011")


class Controls(Protocol):
    """Fault injection and counters, as the Simulator offers them."""

    async def drop_connections(self, mode: DropMode = "abort") -> int: ...

    async def auth_close(self) -> int: ...

    async def expire_tokens(self) -> int: ...

    def sse_cut(self) -> int: ...

    def sse_silence(self) -> int: ...

    def sse_fail(self, count: int, status: int = 503, on: FailOn = "any") -> None: ...

    def sse_break_pages(self, count: int) -> None: ...

    def sse_refuse_auth(self, seconds: float) -> None: ...

    def sse_forbid(self, call: str) -> None: ...

    def sse_hide_list(self, count: int) -> None: ...

    def sse_gap(self, call: str | None = None, entries: int = 3) -> int: ...

    def snapshot(self) -> dict[str, Any]: ...


class Api:
    """The REST endpoints; each answers 401 without `Authorization: Bearer <api key>`."""

    def __init__(
        self,
        config: SimulatorConfig,
        tokens: TokenStore,
        hooks: HookStore,
        stats: Stats,
        deliverer: Deliverer,
        key: ApiKey,
        server: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`server`: the feed's server a token answer names; None: the one the request reached."""
        self._config = config
        self._key = key
        self._server = server
        self._tokens = tokens
        self._hooks = hooks
        self._stats = stats
        self._deliverer = deliverer

    async def _hook_request(self, request: web.Request) -> web.Response | None:
        """The registration endpoints' common start: the API's latency, then its key check."""
        if self._config.api_latency:
            await asyncio.sleep(self._config.api_latency)
        return self._refused(request)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self._key.ok(request.headers.get("Authorization")):
            return None
        self._stats.unauthorized += 1
        return unauthorized("Authorization: Bearer <api key> is required")

    async def token(self, request: web.Request) -> web.Response:
        self._stats.token_requests += 1
        if refused := self._refused(request):
            return refused
        ttl = self._config.token_ttl
        expires_in = int(ttl) if ttl.is_integer() else ttl
        # The older SDK's answer names the feed's server too (`{token, server, expires_in}`): a
        # client reading it must find it here as on the platform.
        # From the URL, not request.host: a request through a proxy (absolute-form, `POST
        # http://host:port/...`) has aiohttp's host without the port, naming another server.
        reached = request.url.origin().with_scheme("wss" if request.secure else "ws")
        server = self._server() or str(reached)
        return web.json_response(
            {"token": self._tokens.issue(), "server": server, "expires_in": expires_in}
        )

    async def get_hook(self, request: web.Request) -> web.Response:
        if refused := await self._hook_request(request):
            return refused
        hook = self._hooks.org()
        return web.json_response(None if hook is None else hook.shown())

    async def put_hook(self, request: web.Request) -> web.Response:
        if refused := await self._hook_request(request):
            return refused
        try:
            url, secret = parse_org_hook(jsoncodec.loads(await request.read()))
        except jsoncodec.JSONDecodeError:
            return _bad_request("the body is not JSON")
        except InvalidHookError as exc:
            return _bad_request(str(exc))
        self._hooks.put_org(url, secret)
        return web.Response(status=204)

    async def delete_hook(self, request: web.Request) -> web.Response:
        if refused := await self._hook_request(request):
            return refused
        if not self._hooks.delete(ORG_HOOK_ID):
            return _alerts_go_nowhere()
        return web.Response(status=204)

    async def test_hook(self, request: web.Request) -> web.Response:
        """One signed `webhook.test` alert, waited for, as the platform's test button sends it."""
        if refused := await self._hook_request(request):
            return refused
        hook = self._hooks.org()
        if hook is None:
            return _alerts_go_nowhere()
        alert = test_alert(time.time())
        record = await self._deliverer.submit(
            hook, alert_wire(alert), call="@test", seq=0, event_type=alert["type"]
        )
        return web.json_response({"sent": record.outcome == "ok", "error": record.why_not()})


class ControlRoutes:
    """`/_sim/...`: no authentication, for the demo and the command line."""

    def __init__(self, controls: Controls) -> None:
        self._controls = controls

    async def drop(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "abort")
        if mode not in DROP_MODES:
            return _bad_request(f"mode must be one of {', '.join(DROP_MODES)}")
        closed = await self._controls.drop_connections(mode)
        return web.json_response({"closed": closed})

    async def auth_close(self, _: web.Request) -> web.Response:
        return web.json_response({"closed": await self._controls.auth_close()})

    async def expire_tokens(self, _: web.Request) -> web.Response:
        return web.json_response({"closed": await self._controls.expire_tokens()})

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response(self._controls.snapshot())

    async def sse_cut(self, _: web.Request) -> web.Response:
        return web.json_response({"cut": self._controls.sse_cut()})

    async def sse_silence(self, _: web.Request) -> web.Response:
        return web.json_response({"silenced": self._controls.sse_silence()})

    async def sse_fail(self, request: web.Request) -> web.Response:
        count = _query_int(request, "count", 1)
        status = _query_int(request, "status", 503)
        asked = request.query.get("on", "any")
        on = next((kind for kind in FAIL_ON if kind == asked), None)
        if count is None or count < 0 or status is None or not 500 <= status <= 599:
            return _bad_request("count must be a non-negative integer, status a 5xx")
        if on is None:
            return _bad_request(f"on must be one of {', '.join(FAIL_ON)}")
        self._controls.sse_fail(count, status, on)
        return web.json_response({"failing": count, "status": status, "on": on})

    async def sse_break_pages(self, request: web.Request) -> web.Response:
        count = _query_int(request, "count", 1)
        if count is None or count < 0:
            return _bad_request("count must be a non-negative integer")
        self._controls.sse_break_pages(count)
        return web.json_response({"breaking": count})

    async def sse_refuse_auth(self, request: web.Request) -> web.Response:
        try:
            seconds = float(request.query.get("seconds", "5"))
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:
            return _bad_request("seconds must be a non-negative number")
        self._controls.sse_refuse_auth(seconds)
        return web.json_response({"refusing_for": seconds})

    async def sse_forbid(self, request: web.Request) -> web.Response:
        call = request.query.get("call")
        if not call:
            return _bad_request("call is required")
        self._controls.sse_forbid(call)
        return web.json_response({"forbidden": call})

    async def sse_hide_list(self, request: web.Request) -> web.Response:
        count = _query_int(request, "count", 1)
        if count is None or count < 0:
            return _bad_request("count must be a non-negative integer")
        self._controls.sse_hide_list(count)
        return web.json_response({"hiding": count})

    async def sse_gap(self, request: web.Request) -> web.Response:
        entries = _query_int(request, "entries", 3)
        if entries is None or entries < 0:
            return _bad_request("entries must be a non-negative integer")
        readers = self._controls.sse_gap(request.query.get("call"), entries)
        return web.json_response({"readers": readers})


def build_app(
    config: SimulatorConfig,
    api: Api,
    session: SessionHandler,
    controls: Controls,
    streams: EventStreams,
) -> web.Application:
    app = web.Application()
    control = ControlRoutes(controls)
    app.router.add_post(config.token_path, api.token)
    app.router.add_get(config.token_path, api.token)
    app.router.add_get(config.webhook_path, api.get_hook)
    app.router.add_put(config.webhook_path, api.put_hook)
    app.router.add_delete(config.webhook_path, api.delete_hook)
    app.router.add_post(config.webhook_path + "/test", api.test_hook)
    app.router.add_get(config.ws_path, session.handle)
    app.router.add_get(CALL_EVENTS_PATH, streams.call_events)
    app.router.add_get(ORG_EVENTS_PATH, streams.org_events)
    app.router.add_get(SESSIONS_PATH, streams.sessions)
    app.router.add_post("/_sim/drop", control.drop)
    app.router.add_post("/_sim/auth-close", control.auth_close)
    app.router.add_post("/_sim/expire-tokens", control.expire_tokens)
    app.router.add_get("/_sim/stats", control.stats)
    app.router.add_post("/_sim/sse/cut", control.sse_cut)
    app.router.add_post("/_sim/sse/silence", control.sse_silence)
    app.router.add_post("/_sim/sse/fail", control.sse_fail)
    app.router.add_post("/_sim/sse/break-pages", control.sse_break_pages)
    app.router.add_post("/_sim/sse/refuse-auth", control.sse_refuse_auth)
    app.router.add_post("/_sim/sse/gap", control.sse_gap)
    app.router.add_post("/_sim/sse/forbid", control.sse_forbid)
    app.router.add_post("/_sim/sse/hide-list", control.sse_hide_list)
    return app


def _query_int(request: web.Request, name: str, default: int) -> int | None:
    try:
        return int(request.query.get(name, str(default)))
    except ValueError:
        return None


def _alerts_go_nowhere() -> web.Response:
    return web.json_response(
        {"error": "not_found", "detail": "the organisation has no webhook"}, status=404
    )


def _bad_request(detail: str) -> web.Response:
    return web.json_response({"error": "invalid_request", "detail": detail}, status=400)
