"""`pinecall-bridge demo --headless` (make demo-headless): both stages, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Topics, daemon_env
from tests.sockets import free_port

pytestmark = pytest.mark.timeout(240)


async def test_headless_demo_reports_nothing_lost_or_doubled(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # The test's own topics and group: the demo's defaults are shared with `make run`.
    env = daemon_env(kafka_bootstrap, topics)
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
    assert "lost 0, doubled 0, unexpected 0" in text, text
    # The test's own topics hold no earlier run's backlog: every event is one of this run's calls.
    assert "events of other calls" not in text, text
    # Webhooks, the WebSocket feed and the call logs over SSE all carried events.
    assert "copies over 3 channels" in " ".join(text.split()), text
    summary = re.search(
        r"([\d,]+) durable events \(([\d,]+) of them alerts\) .* ingested ([\d,]+);"
        r" the dedup stage removed ([\d,]+) duplicates and published ([\d,]+)\.",
        " ".join(text.split()),
    )
    assert summary is not None, text
    durable, alerts, ingested, removed, published = (
        int(g.replace(",", "")) for g in summary.groups()
    )
    assert durable > 0
    # Some calls ended with an alert, posted by webhook alone: published too, none lost.
    assert alerts > 0
    # Copies come over both channels and the simulator repeats some deliveries: the ingest
    # topic takes them all, the dedup stage removes them.
    assert ingested > published >= durable
    assert removed > 0
