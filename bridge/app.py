"""The HTTP edge: the webhook route, /healthz, /readyz and /metrics on one port; the last three
also on the admin port when one is set (BRIDGE_HTTP__ADMIN_PORT)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge.config import Settings
from bridge.logthrottle import LogThrottle
from bridge.metrics import CONTENT_TYPE, Metrics
from bridge.rejections import RejectReason
from bridge.sources.webhook import WebhookHandler, error, json_response

log = logging.getLogger(__name__)
# A bug hit by every request must not log a traceback per request: thinned (bridge.logthrottle).
flood = LogThrottle(log)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A bug answering a webhook 503 loses it as a refused write does (Pinecall tries twice): counted.
WEBHOOK_BUGS = web.AppKey("webhook_bugs", tuple[str, Callable[[], None]])
# A webhook URL misconfigured at Pinecall (a wrong path, a proxy's GET) answers these, and Pinecall
# does not retry a 4xx: counted on the webhook port, by status only (a path label is unbounded).
UNROUTED: dict[int, RejectReason] = {404: "not_found", 405: "method_not_allowed"}
WEBHOOK_UNROUTED = web.AppKey("webhook_unrouted", dict[int, Callable[[], None]])
# What an error answer's own JSON body sets: not taken from aiohttp's exception.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


# A worker's /readyz while it waits for Kafka without the webhook port bound (a restarted one).
NOT_LISTENING = "not_listening"


class Readiness:
    """Ready once Kafka is connected, and never again once shutdown has begun.

    Alive unless a Kafka client of ours died and could not be replaced (a broker outage never
    counts), or Kafka is unanswered while its credential files changed since start: only a
    process restart can help then.
    """

    def __init__(
        self,
        metrics: Metrics,
        kafka_connected: Callable[[], bool],
        clients_alive: Callable[[], bool] = lambda: True,
        credentials_stale: Callable[[], bool] = lambda: False,
    ) -> None:
        self._metrics = metrics
        self._kafka_connected = kafka_connected
        self._clients_alive = clients_alive
        # Kafka unanswered with its credential files rotated since start: a restart reads them.
        self.credentials_stale = credentials_stale
        self.started = False
        self.stopping = False
        # False while a restarted worker (listen_when_ready) has not bound the webhook port yet,
        # and once a pod's worker closed it as it stops: it takes no webhook, so the pod's
        # /readyz does not wait for it (bridge/workers/pod.py).
        self.listening = True

    def alive(self) -> bool:
        return self._clients_alive() and not self.credentials_stale()

    def ready(self) -> bool:
        value = self.started and not self.stopping and self._kafka_connected()
        self._metrics.ready.set(1 if value else 0)
        # With `ready`, so an alert can tell a worker taking no webhook from an unready one.
        self._metrics.listening.set(1 if self.listening else 0)
        return value


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers JSON; a bug answers 503 so Pinecall retries rather than loses."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Its own headers but the body's: a 405 must say what is allowed (RFC 9110, 15.5.6).
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        unrouted = request.app.get(WEBHOOK_UNROUTED, {}).get(exc.status)
        if unrouted is not None:
            unrouted()
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, **kept)
    except Exception:
        flood.exception("unexpected error while handling a request", extra={"path": request.path})
        bugs = request.app.get(WEBHOOK_BUGS)
        if bugs is not None and request.path == bugs[0]:
            bugs[1]()
        return error(503, "internal_error", "not stored; retry later", **{"Retry-After": "5"})


def probe_routes(readiness: Readiness, metrics: Metrics) -> list[web.RouteDef]:
    """/healthz, /readyz and /metrics of this process."""

    async def healthz(_: web.Request) -> web.Response:
        if not readiness.alive():
            stale = readiness.credentials_stale()
            status = "kafka_credentials_changed" if stale else "kafka_client_dead"
            return json_response({"status": status}, status=503)
        return json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if readiness.ready():
            return json_response({"status": "ready"})
        # Not listening first: a pod's worker that closed its listener as it stops holds no
        # share of the port, so the pod counts it as down, as it does a restarted one.
        state = (
            NOT_LISTENING
            if not readiness.listening
            else "stopping"
            if readiness.stopping
            else "waiting_for_kafka"
        )
        return json_response({"status": state}, status=503)

    async def metrics_view(_: web.Request) -> web.Response:
        readiness.ready()  # refresh the gauge at scrape time
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics_view),
    ]


def build_app(
    settings: Settings,
    webhook: WebhookHandler,
    readiness: Readiness,
    metrics: Metrics,
    probes: list[web.RouteDef] | None = None,
) -> web.Application:
    """The public app; `probes` replace this process's own (a worker answers for its pod)."""
    # client_max_size makes aiohttp stop reading a body past the limit instead of buffering it.
    app = web.Application(
        client_max_size=settings.webhook.max_body_bytes,
        middlewares=[closing_while_stopping(readiness), json_errors],
    )
    app.add_routes(probes if probes is not None else probe_routes(readiness, metrics))
    app.router.add_post(settings.webhook.path, webhook.handle, expect_handler=webhook.expect)
    bugs = metrics.rejection("webhook", "internal_error")  # exists from 0, for increase()
    app[WEBHOOK_BUGS] = (settings.webhook.path, bugs.inc)
    # The admin app has no such key: its probes' 404s and 405s stay uncounted.
    unrouted: dict[int, Callable[[], None]] = {
        code: metrics.rejection("webhook", why).inc for code, why in UNROUTED.items()
    }
    app[WEBHOOK_UNROUTED] = unrouted
    return app


def closing_while_stopping(readiness: Readiness) -> Middleware:
    """A middleware: once the stop has begun, each answer closes its connection."""

    @web.middleware
    async def closing(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        # A balancer's connection kept alive through the drain delay would be closed idle by the
        # listener's close, racing a request it sends there (a 502, a webhook lost); told to close
        # with each answer, it moves its next requests to another pod during the delay.
        if readiness.stopping:
            response.force_close()
        return response

    return closing


def build_admin_app(probes: list[web.RouteDef]) -> web.Application:
    """The admin port's app: the probes and /metrics only (no body is ever read)."""
    app = web.Application(client_max_size=1024, middlewares=[json_errors])
    app.add_routes(probes)
    return app
