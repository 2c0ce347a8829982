"""The session's broker fixture (kafka_bootstrap): the one tests/deploy shares, on a port of its
own unless KAFKA_BOOTSTRAP names one, and stopped at the session's end when it started it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, broker_answers, free_port_pair, kafka_sh
from tests.polling import until
from tests.sockets import listening

PROBE = Path(__file__).with_name("sessionprobe.py")
INTERRUPTED = 2  # pytest.ExitCode.INTERRUPTED


def probe_session(tmp_path: Path, end: str, named: bool) -> tuple[list[str], dict[str, str], Path]:
    """The command and env of a session of sessionprobe's, and its broker's data dir."""
    basetemp = tmp_path / "inner"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "KAFKA_DATA_DIR")}
    env |= {"SESSION_PROBE_PORT_FILE": str(tmp_path / "port"), "SESSION_PROBE_END": end}
    # Named: a port nothing answers on yet, its data kept out of the repo's .cache.
    data_dir = tmp_path / "kafka-named" if named else basetemp / "kafka-session0"
    if named:
        env |= {"KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port_pair()}", "KAFKA_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={basetemp}"]
    return [*command, str(PROBE)], env, data_dir


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("named", "end"), [(False, "ctrl-c"), (True, "passes")], ids=["unset", "KAFKA_BOOTSTRAP"]
)
def test_a_broker_the_session_started_is_stopped_at_its_end(
    tmp_path: Path, end: str, named: bool
) -> None:
    port_file = tmp_path / "port"
    command, env, data_dir = probe_session(tmp_path, end, named)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    port = int(port_file.read_text()) if port_file.exists() else None
    try:
        assert done.returncode == (INTERRUPTED if end == "ctrl-c" else 0), done.stdout[-3000:]
        assert port is not None, "the session's test never ran"
        assert port != 9092, "the shared broker's port"
        if named:
            assert f"127.0.0.1:{port}" == env["KAFKA_BOOTSTRAP"]
        assert not broker_answers(port), "the session's broker still runs after it ended"
    finally:
        if port is not None and port != 9092:
            kafka_sh("down", port, data_dir)  # a no-op once the session stopped it


@pytest.mark.timeout(300)
@pytest.mark.parametrize("named", [False, True], ids=["unset", "KAFKA_BOOTSTRAP"])
async def test_a_broker_the_session_started_dies_with_a_killed_session(
    tmp_path: Path, named: bool
) -> None:
    # A SIGKILL (a CI job's timeout) runs no teardown: kafka.sh's watcher stops the broker.
    port_file = tmp_path / "port"
    command, env, data_dir = probe_session(tmp_path, "hang", named)
    with (tmp_path / "session.log").open("w") as log:
        session = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    port: int | None = None

    def said() -> str:
        return (tmp_path / "session.log").read_text()[-3000:]

    def started() -> bool:
        nonlocal port
        assert session.returncode is None, f"the session ended by itself: {said()}"
        if port_file.exists() and port_file.read_text():
            port = int(port_file.read_text())
        return port is not None and broker_answers(port)

    async def closed() -> bool:
        assert port is not None
        return not await listening(port)

    try:
        await until(started, within=240, every=0.5, what=said)
        assert port != 9092, "the shared broker's port"
        session.kill()
        await session.wait()
        await until(closed, within=60, every=0.2, what=f"127.0.0.1:{port} still open")
    finally:
        if session.returncode is None:
            session.kill()
            await session.wait()
        if port is not None and port != 9092:
            kafka_sh("down", port, data_dir)  # a no-op once the watcher stopped it


def test_the_deploy_and_integration_tests_share_the_sessions_one_broker() -> None:
    # tests/deploy's conftest imported the fixture from tests/integration's: a fixture defined
    # in two conftests is two session fixtures, and a bare `pytest` started a broker for each.
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    tests = ["tests/deploy/test_young_counters.py", "tests/integration/test_kafka_smoke.py"]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--setup-plan"]
    done = subprocess.run(
        [*command, *tests], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:]
    for test in tests:  # each folder's tests take it
        assert re.search(rf"^ *{re.escape(test)}::.*\bkafka_bootstrap\b", done.stdout, re.M), test
    setups = re.findall(r"^ *SETUP +S kafka_bootstrap\b", done.stdout, re.M)
    assert len(setups) == 1, done.stdout[-3000:]
