"""The stand-in for Pinecall: serve the API and the feed, play traffic, inject faults."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from aiohttp import web

from bridge import listen
from bridge.simulator.auth import ApiKey
from bridge.simulator.calllog import CallLogs
from bridge.simulator.config import Channel, DropMode, SimulatorConfig, TrafficSpec
from bridge.simulator.delivery import Deliverer
from bridge.simulator.eventstream import EventStreams, FailOn
from bridge.simulator.feed import Feed
from bridge.simulator.frames import GOING_AWAY, INTERNAL_ERROR, UNAUTHORIZED
from bridge.simulator.hooks import Hook, HookStore, parse_hook
from bridge.simulator.ledger import Ledger
from bridge.simulator.records import Delivery, WsSend
from bridge.simulator.server import Api, build_app
from bridge.simulator.session import SessionHandler
from bridge.simulator.stats import Stats
from bridge.simulator.tokens import TokenStore
from bridge.simulator.traffic import Traffic, TrafficReport

log = logging.getLogger(__name__)


class SimulatorStoppedError(Exception):
    """stop() was called while this traffic was playing."""


class Simulator:
    """`await start()`, then `url` / `ws_url` serve; `await stop()` closes everything."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = Stats()
        self.hooks = HookStore()
        self.tokens = TokenStore(self.config.token_ttl)
        self.ledger = Ledger(self.config.ledger_path, keep=self.config.keep_records)
        self.feed = Feed(
            self.stats, garbage=self.config.ws_garbage, keep_records=self.config.keep_records
        )
        self.deliverer = Deliverer(self.config, self.stats)
        self.calllogs = CallLogs(retain=self.config.sse_retain_calls)
        # The key the API takes: rotate_api_key() changes it, the old one refused from then on.
        self.api_key = ApiKey(self.config.api_key)
        self.streams = EventStreams(self.config, self.calllogs, self.stats, self.api_key)
        # The feed's server token answers name (`ws://host:port`), when the feed is reached through
        # another address than the API (a proxy in front of it); None: the API's own.
        self.feed_server: str | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._runs: set[asyncio.Task[TrafficReport]] = set()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._runner is not None:
            return
        set_up: web.AppRunner | None = None
        self.ledger.open()
        try:
            await self.deliverer.start()
            session = SessionHandler(self.config, self.tokens, self.feed, self.stats, self.api_key)
            api = Api(
                self.config,
                self.tokens,
                self.hooks,
                self.stats,
                self.deliverer,
                self.api_key,
                lambda: self.feed_server,
            )
            runner = web.AppRunner(
                build_app(self.config, api, session, self, self.streams),
                access_log=None,
                shutdown_timeout=1.0,
            )
            await runner.setup()
            set_up = runner
            # The bridge's own helper: `::` takes IPv4 too, in both.
            await listen.start(runner, self.config.host, self.config.port, reuse_port=False)
        except BaseException:
            # A failed start (a taken port, say) is never stopped: close what it opened, or the
            # ledger's file and the delivery client stay open for the life of the process.
            if set_up is not None:
                await set_up.cleanup()
            await self.deliverer.close()
            self.ledger.close()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("simulator listening", extra={"url": self.url, "ws_url": self.ws_url})

    async def stop(self) -> None:
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        await self.feed.close_all(GOING_AWAY, "server stopping")
        self.streams.abort_all()
        await self.deliverer.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.ledger.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """The HTTP base URL, e.g. `http://127.0.0.1:8765`."""
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The feed's URL without a token, e.g. `ws://127.0.0.1:8765/v1/ws`."""
        return "ws" + self.url.removeprefix("http") + self.config.ws_path

    @property
    def token_requests(self) -> int:
        return self.stats.token_requests

    @property
    def deliveries(self) -> list[Delivery]:
        return self.deliverer.records

    @property
    def ws_sends(self) -> list[WsSend]:
        return self.feed.sends

    def register_webhook(
        self, url: str, secret: str | None = None, events: list[str] | None = None
    ) -> Hook:
        """Add one of the simulator's own webhooks; raises InvalidHookError if bad."""
        checked = parse_hook({"url": url, "secret": secret, "events": events})
        return self.hooks.create(*checked)

    async def run_traffic(
        self,
        calls: int = 10,
        *,
        concurrency: int = 10,
        rate: float = 0.0,
        channel: Channel = "both",
        duplicates: float = 0.0,
        reorder: float = 0.0,
        seed: int | None = None,
        subscribers: int = 0,
        subscriber_timeout: float = 10.0,
        feed_subscribers: int = 0,
        alerts: float = 0.0,
    ) -> TrafficReport:
        """Play `calls` calls; returns once every delivery is answered and every frame written."""
        spec = TrafficSpec(
            calls=calls,
            concurrency=concurrency,
            rate=rate,
            channel=channel,
            duplicates=duplicates,
            reorder=reorder,
            seed=seed,
            subscribers=subscribers,
            subscriber_timeout=subscriber_timeout,
            feed_subscribers=feed_subscribers,
            alerts=alerts,
        )
        return await self.play(spec)

    async def play(self, spec: TrafficSpec) -> TrafficReport:
        """run_traffic() with the parameters in one object."""
        traffic = Traffic(
            spec,
            self.config,
            hooks=self.hooks,
            deliverer=self.deliverer,
            feed=self.feed,
            ledger=self.ledger,
            stats=self.stats,
            calllogs=self.calllogs,
        )
        run = asyncio.create_task(traffic.play())
        self._runs.add(run)
        try:
            return await run
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if caller is not None and caller.cancelling():
                raise
            # stop() cancelled the run, not the caller: do not pass a cancellation on to it.
            raise SimulatorStoppedError("the simulator stopped during the traffic") from None
        finally:
            self._runs.discard(run)

    async def wait_for_subscribers(self, count: int = 1) -> None:
        """Return once `count` connections are subscribed (bound it with asyncio.timeout)."""
        await self.feed.wait_for_subscribers(count)

    async def drop_connections(self, mode: DropMode = "abort") -> int:
        """Cut every connection: `abort` without a close frame, `1011` with close code 1011."""
        if mode == "abort":
            dropped = self.feed.abort_all()
        else:
            dropped = await self.feed.close_all(INTERNAL_ERROR, "internal error")
        self.stats.drops += dropped
        log.info("connections dropped", extra={"mode": mode, "connections": dropped})
        return dropped

    async def auth_close(self) -> int:
        """Close every connection with 4001 "unauthorized", as a revoked key would."""
        closed = await self.feed.close_all(UNAUTHORIZED, "unauthorized")
        self.stats.auth_closes += closed
        log.info("connections closed as unauthorized", extra={"connections": closed})
        return closed

    async def expire_tokens(self) -> int:
        """Expire every token; close the connections opened with one (4001 "token expired")."""
        self.tokens.expire_all()
        closed = await self.feed.close_all(UNAUTHORIZED, "token expired", token_only=True)
        self.stats.auth_closes += closed
        log.info("tokens expired", extra={"connections": closed})
        return closed

    def sse_cut(self) -> int:
        """Cut every SSE stream mid-event: half an event written, then the TCP stream aborted."""
        cut = self.streams.cut_all()
        log.info("sse streams cut", extra={"connections": cut})
        return cut

    def sse_silence(self) -> int:
        """Every open SSE stream stops writing, pings included, until it is cut."""
        silenced = self.streams.silence_all()
        log.info("sse streams silenced", extra={"connections": silenced})
        return silenced

    def sse_fail(self, count: int, status: int = 503, on: FailOn = "any") -> None:
        """Answer the next `count` call-log requests with a 5xx: any, only streams or only pages."""
        self.streams.fail_next(count, status, on)

    def sse_break_pages(self, count: int) -> None:
        """Answer the next `count` JSON page requests 200 with a body cut short (not JSON)."""
        self.streams.break_pages(count)

    def sse_forbid(self, call: str) -> None:
        """Answer `call`'s log (streams and pages) 403 from now on: a call the key may not read."""
        self.streams.forbid(call)

    def sse_hide_list(self, count: int) -> None:
        """Answer the next `count` call-list requests 404, as a proxy mid-deploy may."""
        self.streams.hide_list(count)

    def rotate_api_key(self, key: str) -> None:
        """Take `key` from now on and refuse the one before (401), as a revoked key is."""
        self.api_key.rotate(key)

    def sse_refuse_auth(self, seconds: float) -> None:
        """Refuse the call-log, org-feed and call-list requests with 401 for `seconds`."""
        self.streams.refuse_auth(seconds)

    def sse_gap(self, call: str | None = None, entries: int = 3) -> int:
        """Make the live readers (of `call`, or all) miss what they hold and the next entries."""
        return self.streams.force_gap(call, entries)

    def snapshot(self) -> dict[str, Any]:
        """The counters `GET /_sim/stats` answers with."""
        return {
            **self.stats.as_dict(),
            "connections_subscribed": len(self.feed.subscribed()),
            "webhooks_registered": len(self.hooks.all()),
            "ledger_size": self.ledger.size,
            "call_logs": len(self.calllogs.logs),
        }
