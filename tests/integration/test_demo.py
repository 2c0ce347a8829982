"""`pinecall-bridge demo --headless` (make demo-headless): both stages, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Topics

pytestmark = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_headless_demo_reports_nothing_lost_or_doubled(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            # The test's own topics and group: the demo's defaults are shared with `make run`.
            "BRIDGE_TOPICS__EVENTS": topics.events,
            "BRIDGE_TOPICS__ALERTS": topics.alerts,
            "BRIDGE_TOPICS__DLQ": topics.dlq,
            "BRIDGE_TOPICS__INGEST": topics.ingest,
            "BRIDGE_TOPICS__INGEST_PARTITIONS": "3",
            "BRIDGE_TOPICS__FEED_LEASE": topics.feed_lease,
            "BRIDGE_DEDUP__GROUP": topics.group,
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        "--headless",
        "--calls",
        "12",
        "--rate",
        "200",
        "--seed",
        "7",
        "--http-port",
        str(free_port()),
        "--simulator-port",
        str(free_port()),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 200)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "lost 0, doubled 0" in text, text
    summary = re.search(
        r"([\d,]+) durable events .* ingested ([\d,]+); the dedup stage removed ([\d,]+)"
        r" duplicates and published ([\d,]+)\.",
        " ".join(text.split()),
    )
    assert summary is not None, text
    durable, ingested, removed, published = (int(g.replace(",", "")) for g in summary.groups())
    assert durable > 0
    # Copies come over both channels and the simulator repeats some deliveries: the ingest
    # topic takes them all, the dedup stage removes them.
    assert ingested > published >= durable
    assert removed > 0
