"""README's consumer examples ("Reading the topics"), run as written against records a real
bridge wrote, with an aborted transaction's record and a copy published again after the TTL
(the known limits) in the same partition: read committed, each event once, the copy skipped."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from bridge import jsoncodec
from tests.deploy.tools import find_tool
from tests.integration.conftest import (
    Consumed,
    RunningBridge,
    Topics,
    consume_until,
    entry,
    has_id,
    read_until,
)
from tests.polling import until

README = Path(__file__).resolve().parents[2] / "README.md"
ABORTED = "aborted:1"


def examples(language: str) -> list[str]:
    """The code blocks of `language` in README's "Reading the topics" section."""
    text = README.read_text()
    section = text.split("\n### Reading the topics\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def as_deployed(code: str, topics: Topics, bootstrap: str) -> str:
    """The example with the test's broker, topics and a group of its own."""
    for default in ("kafka:9092", "pinecall.events"):
        assert default in code, f"the README example no longer names {default}"
    for default, ours in (
        ("kafka:9092", bootstrap),
        ("pinecall.events", topics.events),
        ("pinecall.alerts", topics.alerts),
        ("my-team-my-app", f"{topics.group}-consumer"),
    ):
        code = code.replace(default, ours)
    return code


@dataclass(frozen=True)
class Written:
    events: list[Consumed]  # the call's records as the bridge wrote them, in partition order
    alert: Consumed


async def write_by_hand(bootstrap: str, topics: Topics, copy: Consumed, call: str) -> None:
    """An aborted transaction's record (a fenced zombie's), then `copy` again, committed."""
    aborted = jsoncodec.loads(copy.value) | {"id": ABORTED}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topics.group}-x")
    await producer.start()
    try:
        for value, headers, commit in (
            (jsoncodec.dumps(aborted), [("pinecall-id", ABORTED.encode())], False),
            (copy.value, list(copy.headers.items()), True),
        ):
            await producer.begin_transaction()
            await producer.send_and_wait(topics.events, value, key=call.encode(), headers=headers)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()


@pytest.fixture
async def written(
    start_bridge: Callable[..., Any], kafka_bootstrap: str, topics: Topics, unique_call: str
) -> Written:
    """Two events of a call and an alert through the bridge; the aborted record and the late
    copy of the first event; then a third event, so a reader past it has passed both."""
    bridge: RunningBridge = await start_bridge()
    alert = {"type": "monitor.fired", "org": "org_it", "at": 1_790_000_000, "data": {"n": 1}}
    for body in (entry(1, "call.started", call=unique_call), entry(2, call=unique_call), alert):
        assert (await bridge.post(body))[0] == 200
    first = await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:2"))
    await write_by_hand(kafka_bootstrap, topics, first[0], unique_call)
    assert (await bridge.post(entry(3, call=unique_call)))[0] == 200
    events = await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    # The aborted record is in the log: only read_committed keeps it out.
    everything = await read_until(
        kafka_bootstrap, [topics.events], lambda rs: len(rs) >= 5, committed=False
    )
    assert ABORTED.encode() in [dict(r.headers).get("pinecall-id") for r in everything]
    [alert_record] = await consume_until(kafka_bootstrap, [topics.alerts], lambda rs: len(rs) >= 1)
    return Written(events, alert_record)


def ids(records: list[Consumed]) -> list[str]:
    return [r.json()["id"] for r in records]


async def test_the_kcat_example_reads_committed_records(
    written: Written, kafka_bootstrap: str, topics: Topics
) -> None:
    find_tool("kcat")
    [command] = examples("sh")
    assert command.startswith("kcat ")
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        as_deployed(command, topics, kafka_bootstrap),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    # kcat does not skip the late copy (it has the same id): every committed record, in order.
    assert [jsoncodec.loads(line[line.index("{") :])["id"] for line in lines] == ids(written.events)
    call = written.events[0].key
    assert call is not None
    for line, record in zip(lines, written.events, strict=True):
        assert line.startswith(f"{call.decode()} {record.partition}:{record.offset} ")
        assert f"pinecall-id={record.json()['id']}" in line


async def test_the_python_example_reads_each_event_once(
    written: Written, kafka_bootstrap: str, topics: Topics
) -> None:
    [code] = examples("python")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        as_deployed(code, topics, kafka_bootstrap),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stdout = process.stdout
    assert stdout is not None
    printed: list[str] = []
    wanted = {*ids(written.events), written.alert.json()["id"]}

    async def read_them_all() -> bool:
        try:
            line = await asyncio.wait_for(stdout.readline(), 1)
        except TimeoutError:
            return False
        printed.append(line.decode())
        return not line or {p.split()[2] for p in printed if p} >= wanted

    try:
        await until(read_them_all, 60, 0, lambda: f"printed {printed}")
    finally:
        process.terminate()
        await process.wait()
    # Each event once, the late copy skipped, the aborted record never read; the call's in order.
    shown = [p.split()[2] for p in printed]
    assert sorted(shown) == sorted(wanted)
    call_events = [p for p in printed if p.split()[0] != "monitor.fired"]
    assert [p.split()[2] for p in call_events] == list(dict.fromkeys(ids(written.events)))
    alert = written.alert.json()
    assert f"monitor.fired None {alert['id']} {{'n': 1}}\n" in printed
