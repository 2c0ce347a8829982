"""`pinecall-bridge demo --headless` (make demo-headless): both stages, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Topics, daemon_env, ingest_ends
from tests.polling import until
from tests.sockets import free_port

pytestmark = pytest.mark.timeout(240)


async def headless_demo(
    options: list[str],
    env: dict[str, str],
    cwd: Path,
    *,
    within: float,
    merged: bool = False,
    interrupt: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, bytes, bytes]:
    """`python -m bridge demo --headless [options]`: its exit code, stdout and stderr (stderr in
    stdout when `merged`), Ctrl-C'd once `interrupt()` returns, killed past `within` s."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bridge", "demo", "--headless", *options),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merged else asyncio.subprocess.PIPE,
    )
    try:
        if interrupt is not None:
            await interrupt()
            proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err or b""


async def test_headless_demo_reports_nothing_lost_or_doubled(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # The test's own topics and group: the demo's defaults are shared with `make run`.
    env = daemon_env(kafka_bootstrap, topics)
    options = ["--calls", "12", "--rate", "200", "--seed", "7"]
    options += ["--http-port", str(free_port()), "--simulator-port", str(free_port())]
    code, out, _ = await headless_demo(options, env, tmp_path, within=200, merged=True)
    text = out.decode(errors="replace")
    assert code == 0, text
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


async def test_a_run_after_an_interrupted_one_gives_up_none_of_its_calls(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # The interrupted run's unfinished calls are in the ingest topic: the next run's bridge
    # resumes them, and its new simulator, which never saw them, answered 404 for each, an
    # ERROR "call log given up" line a newcomer saw in the first command they ran.
    env = daemon_env(kafka_bootstrap, topics)
    ports = ["--http-port", str(free_port()), "--simulator-port", str(free_port())]

    async def mid_call() -> None:
        async def ingested() -> bool:
            async with ingest_ends(kafka_bootstrap, topics) as (_, ends):
                return sum(ends.values()) >= 300  # many calls begun, some in progress

        await until(ingested, 60, 0.5, "the first run's calls in the ingest topic")

    code, out, _ = await headless_demo(
        ["--calls", "1000", *ports], env, tmp_path, within=150, merged=True, interrupt=mid_call
    )
    assert code == 130, out.decode(errors="replace")
    options = ["--calls", "4", "--rate", "200", "--seed", "7", *ports]
    code, out, _ = await headless_demo(options, env, tmp_path, within=200, merged=True)
    text = out.decode(errors="replace")
    assert code == 0, text
    assert "lost 0, doubled 0, unexpected 0" in text, text
    assert "call log given up" not in text, text


@pytest.mark.parametrize(
    ("taken_as", "says"),
    [
        (
            "--simulator-port",
            "for the simulated Pinecall: Address already in use; --simulator-port",
        ),
        ("--http-port", "for the bridge's webhooks: Address already in use; --http-port"),
        ("BRIDGE_HTTP__ADMIN_PORT", "for the bridge's admin port: Address already in use;"),
    ],
)
async def test_a_taken_port_ends_the_demo_with_one_line(
    kafka_bootstrap: str, tmp_path: Path, taken_as: str, says: str
) -> None:
    # It used to end in an OSError's traceback, naming neither whose port nor what moves it.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ports = {"--http-port": free_port(), "--simulator-port": free_port(), taken_as: port}
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env["BRIDGE_KAFKA__BOOTSTRAP_SERVERS"] = kafka_bootstrap
        env["BRIDGE_HTTP__ADMIN_PORT"] = str(ports.pop("BRIDGE_HTTP__ADMIN_PORT", ""))
        options = ["--calls", "1", *(str(part) for option in ports.items() for part in option)]
        code, out, err = await headless_demo(options, env, tmp_path, within=60)
    text = err.decode(errors="replace")
    assert code == 1, (out, text)
    [line] = text.splitlines()  # one line, no traceback
    assert line.startswith(f"pinecall-bridge demo: cannot listen on 127.0.0.1:{port} "), line
    assert says in line, line
