"""`pinecall-bridge simulate`: serve the stand-in platform, play traffic, print a summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.argtypes import not_negative, rate
from bridge.simulator.config import CHANNELS, SimulatorConfig, TrafficSpec
from bridge.simulator.simulator import Simulator
from bridge.simulator.summary import render
from bridge.simulator.traffic import TrafficReport

log = logging.getLogger(__name__)


def _events(value: str) -> list[str]:
    return [event for event in value.split(",") if event]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinecall-bridge simulate",
        description=(
            "A local stand-in for Pinecall: REST API, WebSocket feed, signed webhooks, "
            "per-call event logs (JSON pages and SSE) and the org feed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve = parser.add_argument_group("server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8765, help="0: any free port")
    serve.add_argument("--api-key", default="sim-api-key", help="the key the API accepts")
    serve.add_argument("--token-ttl", type=rate, default=300.0, help="seconds")
    serve.add_argument(
        "--ws-auth-failure",
        choices=("close", "http"),
        default="close",
        help="refused upgrade: accept then close 4001, or answer HTTP 401",
    )
    serve.add_argument(
        "--ws-heartbeat",
        type=not_negative,
        default=20.0,
        help="seconds between protocol pings; 0: none",
    )
    serve.add_argument(
        "--ws-close-on-token-expiry",
        action="store_true",
        help="close a connection with 4001 when its token expires",
    )
    serve.add_argument(
        "--ws-garbage",
        type=float,
        default=0.0,
        help="probability of a garbage frame before an event frame",
    )
    serve.add_argument(
        "--ws-documented",
        type=float,
        default=0.0,
        help="share of durable frames in the docs page's {type, data} shape (no id or seq)",
    )
    serve.add_argument(
        "--ws-legacy",
        type=float,
        default=0.0,
        help="share of durable frames in the older SDK's {event, callId, ...} shape (no id or seq)",
    )
    serve.add_argument(
        "--sse-ping",
        type=rate,
        default=25.0,
        help="seconds between `: ping` comments on a quiet call-log or org-feed stream",
    )
    serve.add_argument(
        "--sse-buffer",
        type=int,
        default=256,
        help="entries a call-log stream may fall behind before it gets a log.gap",
    )
    serve.add_argument(
        "--no-records",
        action="store_true",
        help="keep no ledger or delivery records in memory (long benchmarks)",
    )

    hooks = parser.add_argument_group("webhooks")
    hooks.add_argument("--webhook-url", help="register this webhook at start")
    hooks.add_argument("--webhook-secret", help="its signing secret (unsigned without)")
    hooks.add_argument("--webhook-events", type=_events, default=None, help="a,b,c; default all")
    hooks.add_argument(
        "--signature",
        choices=("prefixed", "bare"),
        default="prefixed",
        help="sha256=<hex> or the bare hex",
    )
    hooks.add_argument(
        "--delivery-timeout", type=rate, default=5.0, help="seconds per attempt, as Pinecall's"
    )
    hooks.add_argument(
        "--retry-base", type=not_negative, default=0.0, help="first backoff, seconds (0: at once)"
    )
    hooks.add_argument(
        "--max-attempts",
        type=int,
        default=2,
        help="as Pinecall: a retry only after a transport error or a 5xx; a 4xx is final",
    )
    hooks.add_argument(
        "--delivery-concurrency", type=int, default=64, help="webhook posts in flight at once"
    )

    traffic = parser.add_argument_group("traffic")
    traffic.add_argument("--calls", type=int, default=20, help="0: serve only")
    traffic.add_argument("--concurrency", type=int, default=10, help="calls at once")
    traffic.add_argument(
        "--rate",
        type=not_negative,
        default=0.0,
        help="events per second overall; 0: as fast as possible",
    )
    traffic.add_argument(
        "--channel",
        choices=CHANNELS,
        default="both",
        help="the pushes that carry the calls' log entries (sse: none; all: both); every call's "
        "log is served whatever the channel",
    )
    traffic.add_argument(
        "--alerts",
        type=float,
        default=0.0,
        help="probability a call ends with an alert of its agent (monitor.fired, spend.unusual, "
        "credits.exhausted), posted by webhook as Pinecall posts alerts, whatever the channel",
    )
    traffic.add_argument(
        "--duplicates",
        type=float,
        default=0.0,
        help="probability of an extra copy of an event on a channel",
    )
    traffic.add_argument(
        "--reorder",
        type=float,
        default=0.0,
        help="probability the WebSocket copy waits for the webhook's answer",
    )
    traffic.add_argument("--seed", type=int, help="default: random, printed in the summary")
    traffic.add_argument(
        "--subscribers",
        type=int,
        default=0,
        help="wait for this many subscribed WebSocket clients first",
    )
    traffic.add_argument(
        "--feed-subscribers",
        type=int,
        default=0,
        help="wait for this many org-feed (GET /v1/events) streams first",
    )
    traffic.add_argument("--subscriber-timeout", type=rate, default=60.0, help="seconds")
    traffic.add_argument(
        "--start-delay",
        type=not_negative,
        default=0.0,
        help="seconds to wait before the traffic starts",
    )
    traffic.add_argument(
        "--ledger", type=Path, help="write every generated event here (JSON lines)"
    )
    traffic.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once the traffic is delivered, instead of at Ctrl-C/SIGTERM",
    )

    logs = parser.add_argument_group("logs")
    logs.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the least severe level logged",
    )
    logs.add_argument(
        "--log-format", default="console", choices=("console", "json"), help="how lines look"
    )
    return parser


def settings(args: argparse.Namespace) -> tuple[SimulatorConfig, TrafficSpec]:
    """The simulator's config and the traffic to play, from parsed options; ValueError if bad."""
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        token_ttl=args.token_ttl,
        ws_auth_failure=args.ws_auth_failure,
        ws_heartbeat=args.ws_heartbeat or None,
        ws_close_on_token_expiry=args.ws_close_on_token_expiry,
        ws_garbage=args.ws_garbage,
        ws_documented_ratio=args.ws_documented,
        ws_legacy_ratio=args.ws_legacy,
        signature=args.signature,
        delivery_timeout=args.delivery_timeout,
        retry_base=args.retry_base,
        max_attempts=args.max_attempts,
        delivery_concurrency=args.delivery_concurrency,
        ledger_path=args.ledger,
        keep_records=not args.no_records,
        sse_ping_interval=args.sse_ping,
        sse_reader_buffer=args.sse_buffer,
    )
    spec = TrafficSpec(
        calls=args.calls,
        concurrency=args.concurrency,
        rate=args.rate,
        channel=args.channel,
        duplicates=args.duplicates,
        reorder=args.reorder,
        seed=args.seed,
        subscribers=args.subscribers,
        subscriber_timeout=args.subscriber_timeout,
        feed_subscribers=args.feed_subscribers,
        alerts=args.alerts,
    )
    return config, spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, spec = settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    from bridge import logsetup

    logsetup.configure(args.log_level, args.log_format)
    return asyncio.run(_serve(config, spec, args))


async def _serve(config: SimulatorConfig, spec: TrafficSpec, args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    sim = Simulator(config)
    try:
        await sim.start()
    except OSError as exc:
        print(
            f"pinecall-bridge simulate: cannot listen on {config.host}:{config.port}: {exc};"
            " --port picks another",
            file=sys.stderr,
        )
        return 1
    print(
        f"simulated Pinecall at {sim.url} (feed {sim.ws_url}, API key {config.api_key!r})",
        flush=True,
    )
    if args.webhook_url:
        hook = sim.register_webhook(args.webhook_url, args.webhook_secret, args.webhook_events)
        log.info("webhook registered", extra={"id": hook.id, "url": hook.url})
    traffic = asyncio.create_task(_traffic(sim, spec, args.start_delay)) if spec.calls else None
    code = 0
    report: TrafficReport | None = None
    try:
        waiting: list[asyncio.Future[Any]] = [asyncio.create_task(stopping.wait())]
        if traffic is not None and args.exit_when_done:
            waiting.append(traffic)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        waiting[0].cancel()
        if traffic is not None and traffic.done():
            report = traffic.result()
    except TimeoutError:
        code = 1
    finally:
        if traffic is not None and not traffic.done():
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await traffic
        await sim.stop()
    seed = report.seed if report is not None else spec.seed
    print(render(sim.snapshot(), seed=seed, ledger=config.ledger_path), flush=True)
    return code


async def _traffic(sim: Simulator, spec: TrafficSpec, delay: float) -> TrafficReport:
    await asyncio.sleep(delay)
    try:
        return await sim.play(spec)
    except TimeoutError:
        # Logged now, not at exit: without --exit-when-done the command keeps serving.
        log.error("no WebSocket subscriber came in time: no traffic was played")
        raise
