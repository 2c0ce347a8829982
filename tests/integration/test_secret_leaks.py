"""No secret in anything the bridge says: its log at DEBUG, its answers, its metrics.

A real `pinecall-bridge run` with every secret set to a value of its own, the simulator as
Pinecall, driven through the paths that log the most: bad signatures, feed tokens expiring and
refreshed, the API key revoked (401s from the token endpoint and the call logs), Kafka
unreachable with a SASL password set.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import aiohttp
import pytest

from bridge.simulator import Simulator
from tests.entries import entry
from tests.integration.conftest import Topics, daemon_env
from tests.integration.replicas import Replica, feed_env, post_signed_answer, replica_env
from tests.integration.test_calllog import Calls, play, sim_config, sse_env
from tests.polling import until
from tests.sockets import free_port

pytestmark = pytest.mark.integration

WEBHOOK_SECRETS = ("whsec-LEAKCANARY-first-0123456789", "whsec-LEAKCANARY-second-0123456789")
API_KEY = "apikey-LEAKCANARY-0123456789"
REVOKED_FOR = "apikey-LEAKCANARY-rotated-0123456789"
SASL_PASSWORD = "sasl-LEAKCANARY-0123456789"
CANARY = "LEAKCANARY"


def leaks(text: str, tokens: list[str]) -> list[str]:
    """The secrets (and feed tokens) `text` holds."""
    secrets = [*WEBHOOK_SECRETS, API_KEY, REVOKED_FOR, SASL_PASSWORD, CANARY, *tokens]
    return [secret for secret in secrets if secret in text]


async def answer_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as response:
        return await response.text()


async def test_a_bridge_at_debug_through_its_failures_never_says_a_secret(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # Short-lived tokens: refreshed make-before-break, and expired under the bridge's feet.
    async with Simulator(sim_config(token_ttl=4.0)) as sim:
        sim.rotate_api_key(API_KEY)
        tokens: list[str] = []
        issue = sim.tokens.issue

        def recorded() -> str:
            tokens.append(issue())
            return tokens[-1]

        sim.tokens.issue = recorded  # type: ignore[method-assign]
        port = free_port()
        env = replica_env(
            kafka_bootstrap,
            topics,
            port,
            **{
                **feed_env(sim),
                **sse_env(sim),
                "BRIDGE_PINECALL__API_KEY": API_KEY,
                "BRIDGE_WEBHOOK__SECRETS": ",".join(WEBHOOK_SECRETS),
                "BRIDGE_LOG__LEVEL": "DEBUG",
            },
        )
        replica = Replica("leaky", env, tmp_path / "bridge.log", port)
        answers: list[str] = []
        seqs = itertools.count(1)
        calls = Calls(sim, "leak")
        async with aiohttp.ClientSession() as session:
            await replica.start()
            try:
                for secret in (WEBHOOK_SECRETS[1], "not-the-secret-0123456789"):
                    status, _ = await post_signed_answer(
                        session, replica.url, entry(next(seqs)), secret=secret
                    )
                    assert status in (200, 401)
                for raw in (b"{", b""):  # unsigned, not JSON
                    async with session.post(
                        replica.url + "/webhooks/pinecall", data=raw
                    ) as response:
                        answers.append(f"{response.status} {await response.text()}")
                await until(lambda: len(tokens) >= 1, 30, 0.1, "a feed token fetched")
                await play(calls, calls.open(2), 3, random.Random(7))
                # A refresh before the expiry, then every token expired at once.
                await until(lambda: len(tokens) >= 2, 30, 0.1, "a feed token refreshed")
                await sim.expire_tokens()
                await until(lambda: len(tokens) >= 3, 30, 0.1, "a token fetched after expiry")
                # The key revoked: the token endpoint and the call logs answer 401.
                sim.rotate_api_key(REVOKED_FOR)
                await sim.auth_close()
                later = Calls(sim, "revoked")
                await play(later, later.open(1), 2, random.Random(8))

                def refused() -> bool:
                    said = replica.log.read_text(errors="replace")
                    return "token request refused (401)" in said and "refuses the API key" in said

                await until(refused, 60, 0.2, "the revoked key refused by the API and call logs")
                for path in ("/metrics", "/readyz", "/healthz"):
                    answers.append(await answer_text(session, replica.url + path))
            finally:
                await replica.stop()
        said = replica.log.read_text(errors="replace")
        # What it said is worth checking: the refusals were logged, with their reasons.
        assert "feed closed" in said
        assert '"status":401' in said
        assert leaks(said, tokens) == []
        assert leaks("\n".join(answers), tokens) == []


async def test_a_bridge_at_debug_that_cannot_reach_kafka_never_says_its_sasl_password(
    topics: Topics, tmp_path: Path
) -> None:
    # Nothing listens there: every connection refused, retried, logged, until the stop.
    closed = free_port()
    env = daemon_env(
        f"127.0.0.1:{closed}",
        topics,
        BRIDGE_HTTP__PORT=str(free_port()),
        BRIDGE_WEBHOOK__SECRETS=",".join(WEBHOOK_SECRETS),
        BRIDGE_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        BRIDGE_KAFKA__SASL_USERNAME="bridge",
        BRIDGE_KAFKA__SASL_PASSWORD=SASL_PASSWORD,
        BRIDGE_KAFKA__REQUEST_TIMEOUT_MS="2000",
        BRIDGE_KAFKA__CONNECT_TIMEOUT_MS="1000",
        BRIDGE_PINECALL__API_KEY=API_KEY,
        BRIDGE_LOG__LEVEL="DEBUG",
    )
    replica = Replica("unreachable", env, tmp_path / "bridge.log", int(env["BRIDGE_HTTP__PORT"]))
    await replica.start(ready=False)
    await asyncio.sleep(8)
    await replica.stop()
    said = replica.log.read_text(errors="replace")
    assert str(closed) in said, said  # it did try, and said so
    assert leaks(said, []) == []
