"""The bridge's connections to Pinecall as clusters constrain them: an egress proxy, IPv6; and a
developer's proxy variables, which never take a loopback destination."""

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
from tests.integration.conftest import Consumed, Topics, consume_until
from tests.integration.egressproxy import egress_proxy
from tests.integration.replicas import FAST_SSE
from tests.polling import until

API_KEY = "sim-api-key"
NAME = "pinecall.test"  # the simulator's, known to the proxy only: no loopback name


async def connected(start_bridge: Callable[..., Any], sim: Simulator, host: str = "") -> None:
    """A bridge reading the simulator's feed and its call logs' org feed (at `host`, if given:
    plain http:// to a name not loopback, allowed as insecure)."""
    api_url, ws_url = sim.url, sim.ws_url
    if host:
        api_url, ws_url = (u.replace("127.0.0.1", host) for u in (api_url, ws_url))
    await start_bridge(
        pinecall={"api_url": api_url, "api_key": API_KEY, "allow_insecure_urls": bool(host)},
        websocket={"enabled": True, "url": ws_url, "backoff_max_seconds": 0.5},
        sse=FAST_SSE,
    )
    async with asyncio.timeout(20):
        await sim.wait_for_subscribers(1)
        await sim.calllogs.wait_for_feed_readers(1)


async def test_every_pinecall_connection_goes_through_the_environments_proxy(
    start_bridge: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Simulator(SimulatorConfig()) as sim, egress_proxy({NAME: "127.0.0.1"}) as proxy:
        # With credentials: websockets and aiohttp each send them, as Proxy-Authorization.
        user = proxy.url.replace("http://", "http://bridge:s3cr3t@")
        proxied_env(monkeypatch, HTTP_PROXY=user)
        await connected(start_bridge, sim, NAME)
        origin = sim.url.replace("127.0.0.1", NAME)
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


async def test_a_loopback_pinecall_is_reached_direct_whatever_the_proxy_variables(
    start_bridge: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    topics: Topics,
) -> None:
    # A developer's laptop: a proxy, which cannot reach this machine's loopback, and no NO_PROXY.
    # Every connection to the local simulator went to it: no token, no feed, no call logs.
    nowhere = "http://127.0.0.1:9"
    proxied_env(monkeypatch, HTTPS_PROXY=nowhere, HTTP_PROXY=nowhere, ALL_PROXY=nowhere)
    async with Simulator(SimulatorConfig()) as sim:
        await connected(start_bridge, sim)
        await sim.run_traffic(calls=1, channel="websocket", seed=31610)
        await sim.run_traffic(calls=1, channel="sse", seed=31611)

        def both(records: list[Consumed]) -> bool:
            return {r.json()["pinecallchannel"] for r in records} >= {"websocket", "sse"}

        await consume_until(kafka_bootstrap, [topics.events], both)


async def test_pinecall_reached_at_an_ipv6_address(
    start_bridge: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxied_env(monkeypatch)
    async with Simulator(SimulatorConfig(host="::1")) as sim:
        assert sim.url.startswith("http://[::1]:")  # plain http: loopback, so allowed
        await connected(start_bridge, sim)
