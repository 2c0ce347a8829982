"""The webhook secret rotated in a mounted Secret (the kubelet's `..data` swap), no restart."""

from __future__ import annotations

import itertools
from pathlib import Path

import aiohttp
import pytest

from tests.entries import entry
from tests.integration.conftest import Topics, free_port
from tests.integration.replicas import Replica, post_signed, replica_env, total
from tests.polling import until
from tests.secretvolume import kubelet_write

pytestmark = pytest.mark.integration

OLD = "old-webhook-secret-0123456789"
NEW = "new-webhook-secret-0123456789"
FILE = "BRIDGE_WEBHOOK__SECRETS"


async def test_a_rotated_secret_file_is_taken_without_a_restart(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    kubelet_write(secrets, {FILE: OLD + "\n"})
    port = free_port()
    env = replica_env(
        kafka_bootstrap,
        topics,
        port,
        BRIDGE_SECRETS_DIR=str(secrets),
        BRIDGE_WEBHOOK__SECRETS_CHECK_SECONDS="0.2",
    )
    del env["BRIDGE_WEBHOOK__SECRETS"]  # from the file only: both would be refused
    replica = Replica("rotating", env, tmp_path / "bridge.log", port)
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
