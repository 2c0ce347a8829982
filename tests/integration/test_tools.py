"""The operator's tools against real parts: registration with the simulator, tail on Kafka."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console

from bridge import jsoncodec
from bridge.cli import main
from bridge.service import Bridge
from bridge.simulator import Simulator, SimulatorConfig
from bridge.tail import TailFilter, tail
from tests.integration.conftest import (
    SECRET,
    RunningBridge,
    Topics,
    bridge_settings,
    daemon_env,
    entry,
    free_port,
)
from tests.integration.replicas import Replica


async def test_start_up_registration_is_idempotent(kafka_bootstrap: str, topics: Topics) -> None:
    async with Simulator() as simulator:
        settings = bridge_settings(
            kafka_bootstrap,
            topics,
            pinecall={
                "api_url": simulator.url,
                "api_key": "sim-api-key",
                "register_webhook": True,
                "public_url": "https://bridge.example.com",
            },
        )
        for _ in range(2):  # a restart must not register a second webhook
            bridge = Bridge(settings)
            await bridge.start()
            # Until its registration is done: stopped before, the second start registered
            # nothing, and the test could not fail.
            await asyncio.wait_for(bridge.registered.wait(), 30)
            await bridge.stop()
        hooks = simulator.hooks.all()
    assert [hook.url for hook in hooks] == ["https://bridge.example.com/webhooks/pinecall"]


async def test_replicas_started_together_register_one_webhook(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Three `pinecall-bridge run` processes at once: each lists, finds nothing and creates;
    each then lists again and deletes all but the same winner: one hook, not three."""
    # A distant API's latency makes the list-then-create window as wide as in production.
    async with Simulator(SimulatorConfig(api_latency=0.5)) as simulator:
        env = {
            "BRIDGE_PINECALL__API_URL": simulator.url,
            "BRIDGE_PINECALL__API_KEY": "sim-api-key",
            "BRIDGE_PINECALL__REGISTER_WEBHOOK": "true",
            "BRIDGE_PINECALL__PUBLIC_URL": "https://bridge.example.com",
        }
        replicas = [
            Replica(f"r{n}", daemon_env(kafka_bootstrap, topics, **env), tmp_path / f"r{n}.log", 0)
            for n in range(3)
        ]
        for replica in replicas:
            replica.port = int(replica.env["BRIDGE_HTTP__PORT"])
        try:
            await asyncio.gather(*(replica.start(ready=False) for replica in replicas))
            for _ in range(300):
                if all(registered(replica.log) for replica in replicas):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("not every replica finished registering within 60 s")
            hooks = simulator.hooks.all()
        finally:
            await asyncio.gather(*(replica.stop() for replica in replicas))
    assert [hook.url for hook in hooks] == ["https://bridge.example.com/webhooks/pinecall"]


async def test_registration_retries_until_pinecall_answers(
    kafka_bootstrap: str, topics: Topics
) -> None:
    # It used to try once at start-up and give up: no webhook until the next restart.
    port = free_port()
    settings = bridge_settings(
        kafka_bootstrap,
        topics,
        pinecall={
            "api_url": f"http://127.0.0.1:{port}",
            "api_key": "sim-api-key",
            "register_webhook": True,
            "public_url": "https://bridge.example.com",
        },
    )
    bridge = Bridge(settings)
    await bridge.start()
    try:
        await asyncio.sleep(2)  # a few refused attempts
        assert not bridge.registered.is_set()
        async with Simulator(SimulatorConfig(port=port)) as simulator:
            await asyncio.wait_for(bridge.registered.wait(), 30)
            assert [hook.url for hook in simulator.hooks.all()] == [
                "https://bridge.example.com/webhooks/pinecall"
            ]
    finally:
        await bridge.stop()


def registered(log: Path) -> bool:
    text = log.read_text() if log.exists() else ""
    return '"webhook registered"' in text or '"webhook already registered"' in text


def test_webhooks_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # The CLI runs its own event loop, so the simulator gets a thread and loop of its own.
    ready, done = threading.Event(), threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        async def run() -> None:
            async with Simulator() as simulator:
                holder["sim"] = simulator
                ready.set()
                await asyncio.to_thread(done.wait)

        asyncio.run(run())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    simulator: Simulator = holder["sim"]
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", SECRET)
    monkeypatch.setenv("BRIDGE_PINECALL__API_URL", simulator.url)
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "sim-api-key")
    try:
        url = "https://bridge.example.com/webhooks/pinecall"
        assert main(["webhooks", "register", "--url", url]) == 0
        assert '"created":true' in capsys.readouterr().out
        assert main(["webhooks", "register", "--url", url]) == 0
        assert '"created":false' in capsys.readouterr().out
        assert main(["webhooks", "list"]) == 0
        listed = capsys.readouterr().out
        assert listed.count(url) == 1
        assert SECRET not in listed
        hook_id = simulator.hooks.all()[0].id
        assert main(["webhooks", "delete", hook_id]) == 0
        assert simulator.hooks.all() == []
        monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "wrong")
        assert main(["webhooks", "list"]) == 1
        assert "401" in capsys.readouterr().err
    finally:
        done.set()
        thread.join(10)


async def test_tail_shows_what_downstream_sees(
    start_bridge: Callable[..., Any], topics: Topics, unique_call: str
) -> None:
    bridge: RunningBridge = await start_bridge()
    assert (await bridge.post(entry(1, unique_call, type="call.started")))[0] == 200
    assert (await bridge.post(entry(2, unique_call)))[0] == 200
    console = Console(record=True, width=400)
    shown = await tail(
        bridge.bridge.settings,
        [topics.events],
        TailFilter(type_glob="call.*", call=unique_call),
        from_beginning=True,
        limit=1,
        console=console,
    )
    text = console.export_text()
    assert shown == 1
    assert f"call.started {unique_call} {unique_call}:1 via webhook" in text
    assert "turn.user" not in text


async def test_tail_skips_records_of_aborted_transactions(
    kafka_bootstrap: str, topics: Topics
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics.events, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{topics.group}-tail"
    )
    await producer.start()
    try:
        for event_id, commit in (("aborted:1", False), ("committed:1", True)):
            await producer.begin_transaction()
            value = jsoncodec.dumps({"id": event_id, "type": "turn.user", "subject": "CA_t"})
            await producer.send_and_wait(topics.events, value, key=b"CA_t")
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    console = Console(record=True, width=400)
    shown = await tail(
        bridge_settings(kafka_bootstrap, topics),
        [topics.events],
        TailFilter(),
        from_beginning=True,
        limit=1,
        console=console,
    )
    text = console.export_text()
    assert shown == 1
    assert "committed:1" in text
    assert "aborted:1" not in text
