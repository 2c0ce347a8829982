"""The bridge's connections to Pinecall as clusters constrain them: an egress proxy, IPv6."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.simulator import Simulator
from bridge.simulator.config import SimulatorConfig
from tests.environ import proxied_env
from tests.integration.egressproxy import egress_proxy
from tests.integration.replicas import FAST_SSE
from tests.polling import until

API_KEY = "sim-api-key"


async def connected(start_bridge: Callable[..., Any], sim: Simulator) -> None:
    """A bridge reading the simulator's feed and its call logs' org feed."""
    await start_bridge(
        pinecall={"api_url": sim.url, "api_key": API_KEY},
        websocket={"enabled": True, "url": sim.ws_url, "backoff_max_seconds": 0.5},
        sse=FAST_SSE,
    )
    async with asyncio.timeout(20):
        await sim.wait_for_subscribers(1)
        await sim.calllogs.wait_for_feed_readers(1)


async def test_every_pinecall_connection_goes_through_the_environments_proxy(
    start_bridge: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Simulator(SimulatorConfig()) as sim, egress_proxy() as proxy:
        # With credentials: websockets and aiohttp each send them, as Proxy-Authorization.
        user = proxy.url.replace("http://", "http://bridge:s3cr3t@")
        proxied_env(monkeypatch, HTTP_PROXY=user)
        await connected(start_bridge, sim)
        origin = sim.url
        authority = urlsplit(origin).netloc

        def through(line: str) -> bool:
            return any(seen.startswith(line) for seen in proxy.seen)

        # The feed's WebSocket (websockets' own proxy support), its token, the call logs.
        wanted = [
            f"CONNECT {authority} ",
            f"POST {origin}/v1/auth/websocket-token ",
            f"GET {origin}/v1/events",
        ]
        await until(lambda: all(map(through, wanted)), 10, 0.05, lambda: f"proxied {proxy.seen}")
        # Kafka never: only the simulator was asked for.
        assert all(authority in seen for seen in proxy.seen), proxy.seen
        basic = "Basic " + base64.b64encode(b"bridge:s3cr3t").decode()
        assert set(proxy.credentials) == {basic}


async def test_no_proxy_keeps_pinecall_connections_direct(
    start_bridge: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Simulator(SimulatorConfig()) as sim, egress_proxy() as proxy:
        proxied_env(monkeypatch, HTTPS_PROXY=proxy.url, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        await connected(start_bridge, sim)
        assert proxy.seen == []


async def test_pinecall_reached_at_an_ipv6_address(
    start_bridge: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxied_env(monkeypatch)
    async with Simulator(SimulatorConfig(host="::1")) as sim:
        assert sim.url.startswith("http://[::1]:")  # plain http: loopback, so allowed
        await connected(start_bridge, sim)
