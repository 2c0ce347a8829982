"""bench.baselines.naive_eos on the real broker: every webhook once in the output, in call order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench import events
from tests.integration.conftest import (
    REPO,
    SECRET,
    Topics,
    create_topic,
    read_to_end,
    until_decided,
    wait_ready,
)
from tests.sockets import free_port
from tests.webhooks import signed

SALT = 0x5EED
# Four calls of five events each, in the bench's interleaving (index i and i + 200 share a call).
INDICES = [k + events.CONCURRENT_CALLS * j for j in range(5) for k in range(4)]


async def test_every_webhook_is_output_once_under_its_call_in_order(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    await create_topic(kafka_bootstrap, topics.events, 3)
    port = free_port()
    command = [
        "-m", "bench.baselines.naive_eos", "--port", str(port), "--brokers", kafka_bootstrap,
        "--ingest", topics.ingest, "--output", topics.events, "--group", topics.group,
        "--partitions", "3",
    ]  # fmt: skip
    log = tmp_path / "naive-eos.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        async with aiohttp.ClientSession() as session:
            for index in INDICES:  # one at a time: each call's order is the order sent
                raw, headers = signed(events.body(SALT, index, 1, time.time()), SECRET)
                async with session.post(
                    url + "/webhooks/pinecall", data=raw, headers=headers
                ) as response:
                    assert response.status == 200
        # Every ingest offset committed by the group, no output transaction left open.
        await until_decided(kafka_bootstrap, topics)
        output = await read_to_end(kafka_bootstrap, [topics.events], checked=False)
        everything = await read_to_end(
            kafka_bootstrap, [topics.events], committed=False, checked=False
        )
    finally:
        process.terminate()
        returncode = await asyncio.wait_for(process.wait(), 30)
    assert returncode == 0, log.read_text()  # it stopped cleanly, its last commit made
    got = [events.bench_index(r.value) for r in output]
    assert sorted(i for i in got if i is not None) == sorted(INDICES)  # each once, none foreign
    assert len(everything) == len(output)  # and nothing written outside a committed transaction
    for record, read in zip(output, got, strict=True):
        assert read is not None
        assert record.key == events.call_id(SALT, read).encode()
    for call in {events.call_id(SALT, i) for i in INDICES}:
        seqs = [
            events.call_and_seq(i)[1]
            for i in got
            if i is not None and events.call_id(SALT, i) == call
        ]
        assert seqs == sorted(seqs), call
