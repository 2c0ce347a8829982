"""The operator's tools against real parts: registration with the simulator, tail on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewPartitions, RecordsToDelete
from pydantic import SecretStr
from rich.console import Console

from bridge import jsoncodec
from bridge import tail as tail_module
from bridge.cli import main
from bridge.config import PinecallSettings
from bridge.service import Bridge
from bridge.simulator import Simulator, SimulatorConfig
from bridge.sink.record import Record
from bridge.sources.registration import WebhookRegistry
from bridge.tail import ReadStalledError, TailFilter, tail
from tests.environ import without_bridge_variables
from tests.integration.conftest import (
    SECRET,
    Consumed,
    RunningBridge,
    Topics,
    admin_client,
    bridge_settings,
    call_on,
    consume_until,
    create_topic,
    daemon_env,
    describe,
    entry,
    own_broker,
    until_decided,
    write_ingest,
)
from tests.integration.replicas import Replica
from tests.polling import until
from tests.sockets import free_port


def pinecall(simulator_url: str, **over: Any) -> dict[str, Any]:
    """The `pinecall` settings section that registers https://bridge.example.com at start-up."""
    return {
        "api_url": simulator_url,
        "api_key": "sim-api-key",
        "register_webhook": True,
        "public_url": "https://bridge.example.com",
        **over,
    }


OUR_HOOK = "https://bridge.example.com/webhooks/pinecall"


async def test_start_up_registration_is_idempotent(kafka_bootstrap: str, topics: Topics) -> None:
    async with Simulator() as simulator:
        settings = bridge_settings(kafka_bootstrap, topics, pinecall=pinecall(simulator.url))
        for _ in range(2):  # a restart must not register a second webhook
            bridge = Bridge(settings)
            await bridge.start()
            # Until its registration is done: stopped before, the second start registered
            # nothing, and the test could not fail.
            await asyncio.wait_for(registration(bridge).wait(), 30)
            await bridge.stop()
        hooks = simulator.hooks.all()
    assert [(hook.url, hook.secret) for hook in hooks] == [(OUR_HOOK, SECRET)]


async def test_replicas_started_together_register_one_webhook(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Three `pinecall-bridge run` processes at once: each reads the webhook and puts its URL;
    none refuses the URL a sibling put first, and one webhook remains."""
    # A distant API's latency makes the read-then-put window as wide as in production.
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
            await until(
                lambda: all(registered(replica.log) for replica in replicas),
                60,
                0.2,
                "every replica finished registering",
            )
            hooks = simulator.hooks.all()
        finally:
            await asyncio.gather(*(replica.stop() for replica in replicas))
    assert [hook.url for hook in hooks] == [OUR_HOOK]
    assert not any("registration failed" in replica.log.read_text() for replica in replicas)


async def test_a_webhook_pointing_elsewhere_is_taken_over_only_when_allowed(
    kafka_bootstrap: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    # A PUT replaces the organisation's one webhook: another system's alerts would silently
    # stop reaching it.
    theirs = "https://crm.example.com/pinecall"
    async with Simulator() as simulator:
        simulator.hooks.put_org(theirs, "their-secret")
        refused = Bridge(bridge_settings(kafka_bootstrap, topics, pinecall=pinecall(simulator.url)))
        await refused.start()
        try:
            await until(lambda: len(failed_attempts(caplog)) >= 3, within=30)
            assert not registration(refused).is_set()
        finally:
            await refused.stop()
        org = simulator.hooks.org()
        assert org is not None
        assert (org.url, org.secret) == (theirs, "their-secret")
        failures = [r for r in caplog.records if r.getMessage().startswith("webhook registration")]
        assert failures
        assert theirs in str(failures[0].__dict__["error"])
        caplog.clear()
        allowed = pinecall(simulator.url, replace_webhook=True)
        taking = Bridge(bridge_settings(kafka_bootstrap, topics, pinecall=allowed))
        await taking.start()
        try:
            await asyncio.wait_for(registration(taking).wait(), 30)
        finally:
            await taking.stop()
        org = simulator.hooks.org()
        assert org is not None
        assert (org.url, org.secret) == (OUR_HOOK, SECRET)
    [warning] = [r for r in caplog.records if "replacing" in r.getMessage()]
    assert warning.__dict__["previous_url"] == theirs


async def test_registration_retries_until_pinecall_answers(
    kafka_bootstrap: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    # It used to try once at start-up and give up: no webhook until the next restart.
    port = free_port()
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall=pinecall(f"http://127.0.0.1:{port}")
    )
    bridge = Bridge(settings)
    await bridge.start()
    try:
        await until(lambda: len(failed_attempts(caplog)) >= 3, within=30)
        assert not registration(bridge).is_set()
        async with Simulator(SimulatorConfig(port=port)) as simulator:
            await asyncio.wait_for(registration(bridge).wait(), 30)
            assert [hook.url for hook in simulator.hooks.all()] == [OUR_HOOK]
    finally:
        await bridge.stop()


def registration(bridge: Bridge) -> asyncio.Event:
    """Set once the bridge's registrar saw Pinecall take its URL."""
    assert bridge.registrar is not None
    return bridge.registrar.registered


def failed_attempts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The registrar's refused attempts so far, one log record each."""
    return [r for r in caplog.records if r.getMessage().startswith("webhook registration failed")]


def registered(log: Path) -> bool:
    text = log.read_text() if log.exists() else ""
    return '"webhook registered"' in text or '"webhook already registered"' in text


@pytest.mark.usefixtures("keep_logging")  # the command configures the root logger
def test_webhooks_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    without_bridge_variables(monkeypatch, tmp_path)
    # The CLI runs its own event loop, so the simulator gets a thread and loop of its own.
    ready, done = threading.Event(), threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        async def run() -> None:
            async with Simulator(SimulatorConfig(retry_base=0.01)) as simulator:
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

    def run(*args: str) -> tuple[int, Any, str]:
        code = main(["webhooks", *args])
        out, err = capsys.readouterr()
        return code, jsoncodec.loads(out) if out else None, err

    try:
        nobody = f"http://127.0.0.1:{free_port()}/webhooks/pinecall"  # refuses connections
        assert run("show") == (0, None, "")
        assert run("register", "--url", nobody)[:2] == (
            0,
            {"url": nobody, "previous": None, "took_over": False},
        )
        code, again, _ = run("register", "--url", nobody)
        assert (code, again["previous"]) == (0, {"url": nobody, "signed": True})
        assert run("show")[1] == {"url": nobody, "signed": True}
        code, tested, _ = run("test")
        assert (code, tested["sent"]) == (0, False)
        assert "Connect" in tested["error"]
        other = "https://other.example.com/hook"
        code, _, err = run("register", "--url", other)
        assert code == 1
        assert nobody in err  # the URL found, and how to take it over
        assert "REPLACE_WEBHOOK" in err
        assert "--replace" in err
        code, took, _ = run("register", "--url", other, "--replace")
        assert (code, took["took_over"], took["previous"]["url"]) == (0, True, nobody)
        org = simulator.hooks.org()
        assert org is not None
        assert (org.url, org.secret) == (other, SECRET)
        assert SECRET not in str(run("show"))
        assert run("delete")[:2] == (0, {"deleted": True})
        assert simulator.hooks.all() == []
        assert run("delete")[:2] == (0, {"deleted": False})
        monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "wrong")
        code, _, err = run("show")
        assert code == 1
        assert "401" in err
    finally:
        done.set()
        thread.join(10)


async def test_pinecalls_test_post_reaches_kafka_through_the_bridge(
    bridge: RunningBridge, kafka_bootstrap: str, topics: Topics
) -> None:
    """`webhooks test`, for real: the platform's signed `webhook.test` alert, answered 2xx by
    the bridge only once Kafka has it, and on the alerts topic."""
    async with Simulator() as simulator:
        api = PinecallSettings(api_url=simulator.url, api_key=SecretStr("sim-api-key"))
        async with aiohttp.ClientSession() as session:
            registry = WebhookRegistry(session, api)
            await registry.ensure(bridge.url + "/webhooks/pinecall", SECRET)
            assert await registry.test() == {"sent": True, "error": None}

    def a_test_alert(records: list[Consumed]) -> bool:
        return any(record.json()["type"] == "webhook.test" for record in records)

    records = await consume_until(kafka_bootstrap, [topics.alerts], a_test_alert)
    [test] = [record for record in records if record.json()["type"] == "webhook.test"]
    alert = test.json()
    # No id and no agent on the wire: the id hashes the body, the key is the organisation.
    assert alert["id"].startswith("sha256:")
    assert (test.key, alert["pinecallorg"], alert["pinecallchannel"]) == (
        b"org_sim",
        "org_sim",
        "webhook",
    )
    assert alert["data"]["said"].startswith("Pinecall reaches this URL")


async def test_tail_shows_what_downstream_sees(
    start_bridge: Callable[..., Any], topics: Topics, unique_call: str
) -> None:
    bridge: RunningBridge = await start_bridge()
    assert (await bridge.post(entry(1, "call.started", call=unique_call)))[0] == 200
    assert (await bridge.post(entry(2, call=unique_call)))[0] == 200
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


async def test_tail_everywhere_shows_where_a_calls_event_went(
    start_bridge: Callable[..., Any], topics: Topics, unique_call: str, kafka_bootstrap: str
) -> None:
    """Each ingest copy (bound for, decided), the one published, a dead letter naming the call."""
    bridge: RunningBridge = await start_bridge()
    ended = entry(2, "call.ended", call=unique_call)
    # The same call.ended twice (a retry), another call's event, and a dead letter (no type).
    bodies = (ended, ended, entry(3, call="CA_other"), {"data": {"call_id": unique_call}})
    assert [(await bridge.post(body))[0] for body in bodies] == [200, 200, 200, 202]
    await until_decided(kafka_bootstrap, topics)
    console = Console(record=True, width=600)
    shown = await tail(
        bridge.bridge.settings,
        [topics.ingest, topics.events, topics.dlq],
        TailFilter(call=unique_call),
        from_beginning=True,
        limit=5,
        console=console,
    )
    lines = console.export_text().splitlines()
    assert shown == 5
    copy = (
        rf"{re.escape(topics.ingest)}\[\d+\]@\d+ -> {re.escape(topics.events)} received \S+Z,"
        rf" decided call\.ended {unique_call} {unique_call}:2 via webhook"
    )
    assert sum(bool(re.search(copy, line)) for line in lines) == 2
    published = rf"{re.escape(topics.events)}\[\d+\]@\d+ call\.ended {unique_call} "
    assert sum(bool(re.search(published, line)) for line in lines) == 1
    dead = "dead letter missing_type via webhook: " + '{"data":{"call_id":"' + unique_call
    assert sum(f"-> {topics.dlq} received " in line and dead in line for line in lines) == 1
    assert sum(line.startswith(f"{topics.dlq}[") and dead in line for line in lines) == 1


async def test_tail_everywhere_finds_a_dead_letter_by_the_id_and_type_its_event_would_have(
    start_bridge: Callable[..., Any], topics: Topics, unique_call: str, kafka_bootstrap: str
) -> None:
    """README's `--id CA_123:57`: the call log entry's dead letter, though no string of it is
    its id (the seq is a number); `--type` keeps it, or leaves it out."""
    bridge: RunningBridge = await start_bridge()
    refused = entry(57, "call.ended", call=unique_call, data="not an object")
    bodies = (entry(56, call=unique_call), refused)
    assert [(await bridge.post(body))[0] for body in bodies] == [200, 202]
    await until_decided(kafka_bootstrap, topics)

    async def everywhere(wanted: TailFilter) -> tuple[int, list[str]]:
        console = Console(record=True, width=600)
        shown = await tail(
            bridge.bridge.settings,
            [topics.ingest, topics.events, topics.dlq],
            wanted,
            from_beginning=True,
            to_end=True,
            limit=None,
            console=console,
        )
        return shown, console.export_text().splitlines()

    dead = "dead letter invalid_data via webhook: " + '{"seq":57,'
    for wanted in (
        TailFilter(event_id=f"{unique_call}:57"),
        TailFilter(type_glob="call.ended", call=unique_call),
    ):
        shown, lines = await everywhere(wanted)
        assert shown == 2, lines  # its ingest copy and the dead letter
        assert sum(f"-> {topics.dlq} received " in line and dead in line for line in lines) == 1
        assert sum(line.startswith(f"{topics.dlq}[") and dead in line for line in lines) == 1
    shown, lines = await everywhere(TailFilter(type_glob="call.ended", call="CA_other"))
    assert shown == 0, lines
    shown, lines = await everywhere(TailFilter(type_glob="turn.*", call=unique_call))
    assert shown == 2, lines  # entry 56, its ingest copy and its output
    assert not any(dead in line for line in lines)


async def test_tail_everywhere_shows_an_event_a_routing_rule_sent_to_its_own_topic(
    start_bridge: Callable[..., Any],
    topics: Topics,
    unique_call: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    """The command as the deployment runs it: the rule's topic is read with the others, so the
    ingest copy bound there has its output line beside it, never "decided, none published"."""
    routed = f"{topics.events}-metrics"
    rules = [{"match": "metrics.*", "topic": routed}]
    bridge: RunningBridge = await start_bridge(routing={"rules": rules})
    assert (await bridge.post(entry(4, "metrics.tick", call=unique_call)))[0] == 200
    await until_decided(kafka_bootstrap, topics)
    env = daemon_env(kafka_bootstrap, topics, BRIDGE_ROUTING__RULES=jsoncodec.dumps(rules).decode())
    command = ["tail", "--everywhere", "--from-beginning", "--to-end", "--call", unique_call]
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bridge", *command),
        env={**env, "COLUMNS": "600"},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, err.decode()
    bound = f"-> {routed} received "
    assert sum(f" {topics.ingest}[" in line and bound in line for line in lines) == 1, lines
    published = rf" {re.escape(routed)}\[\d+\]@\d+ metrics\.tick {unique_call} {unique_call}:4 via "
    assert sum(bool(re.search(published, line)) for line in lines) == 1, lines


async def test_tail_skips_records_of_aborted_transactions(
    kafka_bootstrap: str, topics: Topics
) -> None:
    await create_topic(kafka_bootstrap, topics.events, 1)
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


STRUCTURED = [("content-type", b"application/cloudevents+json")]


def cloudevent(event_id: str) -> bytes:
    """A structured CloudEvent of call CA_t, as the dedup stage writes one."""
    return jsoncodec.dumps(
        {"specversion": "1.0", "id": event_id, "type": "turn.user", "subject": "CA_t"}
    )


async def send_committed(
    bootstrap: str, topic: str, events: list[tuple[str, int]], *, transactional_id: str
) -> None:
    """Each (id, create time in ms) as a committed CloudEvent in partition 0, one transaction."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    try:
        async with producer.transaction():
            for event_id, at in events:
                await producer.send_and_wait(
                    topic, cloudevent(event_id), partition=0, timestamp_ms=at, headers=STRUCTURED
                )
    finally:
        await producer.stop()


async def tail_to_end(
    bootstrap: str, topics: Topics, *, since: float | None = None
) -> tuple[int, str]:
    """`tail --to-end` of the events topic (from the beginning, or `since`): (shown, text)."""
    console = Console(record=True, width=400)
    async with asyncio.timeout(30):
        shown = await tail(
            bridge_settings(bootstrap, topics),
            [topics.events],
            TailFilter(),
            from_beginning=since is None,
            since=since,
            to_end=True,
            limit=None,
            console=console,
        )
    return shown, console.export_text()


async def test_tail_to_end_stops_at_the_last_stable_offsets_of_every_partition(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Partitions 1 and 2 empty, partition 0 ending in a commit marker then an open transaction:
    tail --to-end shows the committed records and exits, waiting for none of them."""
    await create_topic(kafka_bootstrap, topics.events, 3)
    now = int(time.time() * 1000)
    await send_committed(
        kafka_bootstrap,
        topics.events,
        [("committed:1", now), ("committed:2", now)],
        transactional_id=f"{topics.group}-done",
    )
    still_open = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{topics.group}-open"
    )
    await still_open.start()
    try:
        await still_open.begin_transaction()
        await still_open.send_and_wait(
            topics.events, cloudevent("open:1"), partition=0, headers=STRUCTURED
        )
        shown, text = await tail_to_end(kafka_bootstrap, topics)
        await still_open.abort_transaction()
    finally:
        await still_open.stop()
    assert shown == 2
    assert "committed:1" in text
    assert "committed:2" in text
    assert "open:1" not in text


async def test_tail_to_end_fails_once_kafka_stops_answering_mid_read(
    topics: Topics, tmp_path: Path
) -> None:
    """aiokafka retries a broker that stopped answering for ever, each fetch answering empty:
    `--to-end` waited for ever. It fails once nothing was read for twice the request timeout."""
    big = {"text": "x" * 400_000}  # a fetch (1 MiB a partition) takes two or three of them
    with own_broker(tmp_path) as broker:
        await create_topic(broker.bootstrap, topics.events, 1)
        values = [
            jsoncodec.dumps({"id": f"big:{n}", "type": "turn.user", "subject": "CA_t", "data": big})
            for n in range(20)
        ]
        await write_ingest(
            broker.bootstrap, [Record(topics.events, b"CA_t", v, tuple(STRUCTURED)) for v in values]
        )
        settings = bridge_settings(broker.bootstrap, topics, kafka={"request_timeout_ms": 1000})
        with contextlib.ExitStack() as stack:

            class StopsKafkaAtTheFirstLine(Console):
                stopped = False

                def print(self, *objects: Any, **options: Any) -> None:
                    if not self.stopped:
                        self.stopped = True
                        stack.enter_context(broker.unresponsive())
                    super().print(*objects, **options)

            console = StopsKafkaAtTheFirstLine(record=True, width=400)
            started = time.monotonic()
            with pytest.raises(ReadStalledError, match=r"no record read for 2 s with \d+ left"):
                async with asyncio.timeout(30):
                    await tail(
                        settings,
                        [topics.events],
                        TailFilter(),
                        from_beginning=True,
                        to_end=True,
                        limit=None,
                        console=console,
                    )
            assert time.monotonic() - started < 15
    assert "big:0" in console.export_text()


async def test_tail_since_starts_each_partition_at_that_time(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Records of two hours ago are left out, those of a minute ago shown; a partition with only
    old records starts at its end (no record that recent) and is finished at once."""
    await create_topic(kafka_bootstrap, topics.events, 2)
    now = int(time.time() * 1000)
    hours_ago, minute_ago = now - 7_200_000, now - 60_000
    await send_committed(
        kafka_bootstrap,
        topics.events,
        [("old:1", hours_ago), ("old:2", hours_ago), ("new:1", minute_ago), ("new:2", now)],
        transactional_id=f"{topics.group}-p0",
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.events, cloudevent("old:3"), partition=1, timestamp_ms=hours_ago
        )
    finally:
        await producer.stop()
    shown, text = await tail_to_end(kafka_bootstrap, topics, since=time.time() - 15 * 60)
    lines = text.splitlines()
    assert shown == 2
    assert [line.split()[4] for line in lines] == ["new:1", "new:2"]


async def test_tail_since_goes_on_from_what_retention_left_never_from_the_end(
    kafka_bootstrap: str, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention moving a partition's log start past the record `--since` found (a `--since`
    near the topic's retention) put the read out of range, and it went on from the end: every
    record left skipped, `--to-end` exiting 0 as though there were none."""
    await create_topic(kafka_bootstrap, topics.events, 1)
    at = int(time.time() * 1000) - 60_000
    await send_committed(
        kafka_bootstrap,
        topics.events,
        [(f"kept:{n}", at + n) for n in range(6)],
        transactional_id=f"{topics.group}-retention",
    )

    async with admin_client(kafka_bootstrap) as admin:
        await admin.delete_records({TopicPartition(topics.events, 0): RecordsToDelete(3)})

    def found_before_retention(found: Any, ends: dict[TopicPartition, int]) -> dict[Any, int]:
        """The look-up's answer from before retention moved the log start past it."""
        return dict.fromkeys(ends, 0)

    monkeypatch.setattr(tail_module, "since_offsets", found_before_retention)
    shown, text = await tail_to_end(kafka_bootstrap, topics, since=at / 1000)
    assert shown == 3, text
    assert [f"kept:{n}" in text for n in range(6)] == [False] * 3 + [True] * 3


async def second_partition(bootstrap: str, topic: str) -> None:
    """Raise the topic to two partitions, and wait until the broker's metadata shows both."""
    async with admin_client(bootstrap) as admin:
        await admin.create_partitions({topic: NewPartitions(2)})

    async def grown() -> bool:
        return (await describe(bootstrap, [topic])).get(topic) == 2

    await until(grown, within=10)


@contextlib.asynccontextmanager
async def following_tail(
    bootstrap: str,
    topics: Topics,
    *,
    partitions: int | None = 1,
    since: float | None = None,
    limit: int | None,
) -> AsyncIterator[tuple[Console, asyncio.Task[int]]]:
    """A tail following the events topic, created first with `partitions` (None: not created),
    and its recording console; cancelled on leaving unless it has ended."""
    if partitions is not None:
        await create_topic(bootstrap, topics.events, partitions)
    console = Console(record=True, width=400)
    following = asyncio.create_task(
        tail(
            bridge_settings(bootstrap, topics),
            [topics.events],
            TailFilter(),
            since=since,
            limit=limit,
            console=console,
        )
    )
    try:
        yield console, following
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


async def test_tail_since_follows_a_partition_added_while_it_runs(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """An operator raises the topic's partition count while tail --since follows it: the new
    partition is said and its record shown, and partition 0's records still once each."""
    async with following_tail(kafka_bootstrap, topics, since=time.time() - 60, limit=3) as (
        console,
        following,
    ):
        now = int(time.time() * 1000)
        await send_committed(
            kafka_bootstrap,
            topics.events,
            [("before:1", now)],
            transactional_id=f"{topics.group}-1",
        )
        await until(lambda: "before:1" in console.export_text(clear=False), within=30)
        # The broker's metadata, which the producer reads next, shows the new partition.
        await second_partition(kafka_bootstrap, topics.events)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            call = call_on(1, 2, "CA_grown")
            sent = await producer.send_and_wait(
                topics.events, cloudevent("added:1"), key=call.encode(), headers=STRUCTURED
            )
        finally:
            await producer.stop()
        assert sent.partition == 1
        then = f"{topics.group}-then"
        await send_committed(
            kafka_bootstrap, topics.events, [("after:1", now)], transactional_id=then
        )
        async with asyncio.timeout(30):
            shown = await following
    text = console.export_text()
    assert shown == 3
    assert f"topic {topics.events} has a new partition 1: reading it too" in text
    ids = [line.split()[4] for line in text.splitlines() if " via " in line]
    assert ids[0] == "before:1"
    assert sorted(ids[1:]) == ["added:1", "after:1"]


async def test_tail_reads_a_partition_added_while_it_runs_from_its_beginning(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Plain tail (new records only) while the topic's partition count is raised: the record
    written to the new partition before tail could know of it is shown, not skipped as older
    than "latest", and partition 0's records still once each."""
    async with following_tail(kafka_bootstrap, topics, limit=None) as (console, _):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            sent = 0

            async def started() -> bool:
                # Tail starts at partition 0's end at a moment it does not say: a record each
                # try, until one is shown.
                nonlocal sent
                sent += 1
                await producer.send_and_wait(
                    topics.events, cloudevent(f"before:{sent}"), partition=0, headers=STRUCTURED
                )
                return "before:" in console.export_text(clear=False)

            await until(started, within=30, every=0.5)
            await second_partition(kafka_bootstrap, topics.events)
            # A new producer: the broker's metadata it reads first shows the new partition.
            grown_producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await grown_producer.start()
            try:
                await grown_producer.send_and_wait(
                    topics.events, cloudevent("added:1"), partition=1, headers=STRUCTURED
                )
                await grown_producer.send_and_wait(
                    topics.events, cloudevent("after:1"), partition=0, headers=STRUCTURED
                )
            finally:
                await grown_producer.stop()

            def both() -> bool:
                text = console.export_text(clear=False)
                return "added:1" in text and "after:1" in text

            await until(both, within=30, what=lambda: console.export_text(clear=False))
        finally:
            await producer.stop()
    text = console.export_text()
    assert f"topic {topics.events} has a new partition 1: reading it too" in text
    shown = [line.split() for line in text.splitlines() if " via " in line]
    first = [ids for place, ids in ((words[1], words[4]) for words in shown) if "[0]@" in place]
    assert [ids for place, ids in ((words[1], words[4]) for words in shown) if "[1]@" in place] == [
        "added:1"
    ]
    # Partition 0 from where tail started: the records sent since, in order, each once.
    begun = int(first[0].removeprefix("before:"))
    assert first == [f"before:{n}" for n in range(begun, sent + 1)] + ["after:1"]


@pytest.mark.parametrize("since", [False, True], ids=["new-records", "since"])
async def test_tail_waits_for_a_topic_created_while_it_runs(
    kafka_bootstrap: str, topics: Topics, since: bool
) -> None:
    """A topic that does not exist yet is said and waited for, then read from its beginning:
    its record, written at once after its creation, is shown (with or without --since)."""
    async with following_tail(
        kafka_bootstrap,
        topics,
        partitions=None,
        since=time.time() - 60 if since else None,
        limit=1,
    ) as (console, following):
        await until(
            lambda: "does not exist" in console.export_text(clear=False),
            within=30,
            what=lambda: console.export_text(clear=False),
        )
        await create_topic(kafka_bootstrap, topics.events, 2)
        await send_committed(
            kafka_bootstrap,
            topics.events,
            [("created:1", int(time.time() * 1000))],
            transactional_id=f"{topics.group}-created",
        )
        async with asyncio.timeout(30):
            shown = await following
    text = console.export_text()
    assert shown == 1
    assert f"topic {topics.events} does not exist (yet): waiting for it" in text
    assert f"topic {topics.events} now exists: reading it from its beginning" in text
    assert "turn.user CA_t created:1 via ?" in text


# Before 1970 is every record (a negative time would be refused by Kafka's lookup).
@pytest.mark.parametrize("since", ["1h", "1960-01-01"])
def test_tail_runs_with_only_the_kafka_settings(
    since: str,
    kafka_bootstrap: str,
    topics: Topics,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An SRE's laptop: Kafka and the topic, no webhook secret; --to-end exits 0 by itself."""
    asyncio.run(create_topic(kafka_bootstrap, topics.events, 1))
    asyncio.run(
        send_committed(
            kafka_bootstrap,
            topics.events,
            [("laptop:1", int(time.time() * 1000))],
            transactional_id=f"{topics.group}-laptop",
        )
    )
    without_bridge_variables(monkeypatch, tmp_path)
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("BRIDGE_TOPICS__EVENTS", topics.events)
    assert main(["tail", "--topic", topics.events, "--since", since, "--to-end"]) == 0
    assert "turn.user CA_t laptop:1 via ?" in capsys.readouterr().out


def test_tail_everywhere_on_a_fresh_cluster_waits_for_the_group_coordinator(
    topics: Topics, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cluster no group has used answers COORDINATOR_NOT_AVAILABLE while it creates
    __consumer_offsets: the read of the dedup group's offsets waits it out, not exit 1."""
    (tmp_path / "kafka").mkdir()
    with own_broker(tmp_path / "kafka") as fresh:
        without_bridge_variables(monkeypatch, tmp_path)
        for name, value in daemon_env(fresh.bootstrap, topics).items():
            if name.startswith("BRIDGE_"):
                monkeypatch.setenv(name, value)
        assert main(["tail", "--everywhere", "--from-beginning", "--to-end"]) == 0
