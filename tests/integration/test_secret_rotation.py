"""Secrets rotated in a mounted Secret (the kubelet's `..data` swap), taken with no restart:
the webhook secret, and the Pinecall API key of the call logs and the feed."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import aiohttp
import pytest

from bridge.simulator import Simulator
from tests.entries import entry
from tests.integration.conftest import Topics, consume_until, read_decided
from tests.integration.replicas import (
    Replica,
    feed_env,
    post_signed,
    replica_env,
    total,
)
from tests.integration.test_calllog import (
    Calls,
    assert_exactly_once_in_order,
    followed_once,
    has,
    play,
    sim_config,
    sse_env,
)
from tests.polling import until
from tests.secretvolume import kubelet_write
from tests.sockets import free_port

pytestmark = pytest.mark.integration

OLD = "old-webhook-secret-0123456789"
NEW = "new-webhook-secret-0123456789"
FILE = "BRIDGE_WEBHOOK__SECRETS"


def rotating_replica(
    name: str,
    kafka_bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    secret: tuple[str, str],
    **extra: str,
) -> tuple[Replica, Path]:
    """A replica taking the secret `secret` names only from its file, first holding its value, in
    a mounted secrets dir it checks every 0.2 s; and that dir, for the test to rotate it in."""
    file, value = secret
    secrets = tmp_path / "secrets"
    kubelet_write(secrets, {file: value + "\n"})
    port = free_port()
    env = replica_env(
        kafka_bootstrap,
        topics,
        port,
        **extra,
        BRIDGE_SECRETS_DIR=str(secrets),
        BRIDGE_WEBHOOK__SECRETS_CHECK_SECONDS="0.2",
    )
    del env[file]  # from the file only: both would be refused
    return Replica(name, env, tmp_path / "bridge.log", port), secrets


async def test_a_rotated_secret_file_is_taken_without_a_restart(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    replica, secrets = rotating_replica("rotating", kafka_bootstrap, topics, tmp_path, (FILE, OLD))
    seqs = itertools.count(1)
    async with aiohttp.ClientSession() as session:

        async def status(secret: str) -> int:
            return await post_signed(session, replica.url, entry(next(seqs)), secret=secret)

        async def answers(secret: str, code: int) -> bool:
            return await status(secret) == code

        await replica.start()
        try:
            assert await status(OLD) == 200
            assert await status(NEW) == 401

            # Step 1: the new secret added; the sender still signs with the old one.
            kubelet_write(secrets, {FILE: f"{OLD},{NEW}\n"})
            await until(lambda: answers(NEW, 200), 30, 0.2, "the new secret accepted")
            assert await status(OLD) == 200

            # Step 3: the old one removed, once the sender switched.
            kubelet_write(secrets, {FILE: NEW + "\n"})
            await until(lambda: answers(OLD, 401), 30, 0.2, "the old secret refused")
            assert await status(NEW) == 200

            # A bad value (an emptied file) is refused, the secrets in use kept.
            kubelet_write(secrets, {FILE: "\n"})
            samples: dict[str, float] = {}

            async def counted() -> bool:
                samples.update(await replica.metrics(session))
                name = "pinecall_bridge_secret_reloads_total"
                return total(samples, name, result="invalid") == 1

            await until(counted, 30, 0.2, lambda: f"an invalid reload counted: {samples}")
            assert await status(NEW) == 200
            reloaded = total(samples, "pinecall_bridge_secret_reloads_total", result="reloaded")
            assert reloaded == 2
        finally:
            assert await replica.stop() == 0
    lines = [entry.get("msg", "") for entry in replica.log_entries()]
    assert "webhook secrets reloaded (2 secrets)" in lines
    assert "webhook secrets reloaded (1 secrets)" in lines
    assert any("BRIDGE_WEBHOOK__SECRETS is not set" in line for line in lines)
    text = replica.log.read_text()
    assert OLD not in text
    assert NEW not in text


OLD_KEY = "pk-old-0123456789"
NEW_KEY = "pk-new-0123456789"
KEY_FILE = "BRIDGE_PINECALL__API_KEY"


async def test_a_rotated_api_key_file_is_taken_by_the_call_logs_and_the_feed_losing_nothing(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    rng = random.Random(23)
    async with Simulator(sim_config()) as sim, aiohttp.ClientSession() as session:
        sim.rotate_api_key(OLD_KEY)  # the key Pinecall takes at first
        replica, secrets = rotating_replica(
            "rotating-key",
            kafka_bootstrap,
            topics,
            tmp_path,
            (KEY_FILE, OLD_KEY),
            **{**sse_env(sim), **feed_env(sim)},
        )
        samples: dict[str, float] = {}

        async def counted(name: str, at_least: float = 1, **labels: str) -> bool:
            samples.update(await replica.metrics(session))
            return total(samples, name, **labels) >= at_least

        calls = Calls(sim, "CA_rotate")
        await replica.start()
        try:
            async with asyncio.timeout(30):
                await sim.calllogs.wait_for_feed_readers(1)
                await sim.wait_for_subscribers(1)
            names = calls.open(10)
            await play(calls, names, 3, rng)
            await until(lambda: followed_once(sim, names), 30, 0.05, "every call followed")

            # The old key revoked before the Secret has the new one: every request is refused.
            sim.rotate_api_key(NEW_KEY)
            assert sim.sse_cut() > 0  # the org feed and the call streams ask again
            assert await sim.drop_connections() == 1  # the feed asks for a new token
            await play(calls, names, 3, rng)  # written while the bridge is refused
            for name in ("sse_reconnects_total", "websocket_reconnects_total"):
                await until(
                    lambda: counted(f"pinecall_bridge_{name}", reason="auth"),  # noqa: B023
                    30,
                    0.2,
                    lambda: f"the old key refused: {samples}",
                )
            assert not followed_once(sim, names)

            kubelet_write(secrets, {KEY_FILE: NEW_KEY + "\n"})
            await play(calls, names, 3, rng)
            async with asyncio.timeout(30):  # the feed, with a token the new key got
                await sim.wait_for_subscribers(1)
            await until(lambda: followed_once(sim, names), 30, 0.05, "every call followed again")
            for call in names:
                calls.end(call)
            await consume_until(kafka_bootstrap, [topics.events], has(calls.expected), within=90)
            records = await read_decided(kafka_bootstrap, topics, [topics.events])
            assert_exactly_once_in_order(calls, records)  # the entries written while refused too
            samples.update(await replica.metrics(session))
            reloads = "pinecall_bridge_secret_reloads_total"
            assert total(samples, reloads, secret="pinecall_api_key", result="reloaded") == 1
            assert total(samples, "pinecall_bridge_sse_calls_given_up_total") == 0
        finally:
            assert await replica.stop() == 0
    lines = [record.get("msg", "") for record in replica.log_entries()]
    assert any(line.startswith("Pinecall API key reloaded") for line in lines)
    text = replica.log.read_text()
    assert OLD_KEY not in text
    assert NEW_KEY not in text
