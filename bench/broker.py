"""The benchmarks' own broker on BENCH_KAFKA_PORT (never 9092: the tests use that one).

Started and stopped with tools/kafka/kafka.sh; a broker that was already running when a
benchmark began is left running, so `bench.run` can call the standalone benchmarks in between.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_PORT = 9092


def default_port() -> int:
    return int(os.environ.get("BENCH_KAFKA_PORT", "19092"))


def kafka(port: int, action: str) -> None:
    """`tools/kafka/kafka.sh <action>` for the broker on `port`."""
    if port == TEST_PORT:
        raise SystemExit(f"port {TEST_PORT} is the tests' broker; benchmarks use their own")
    env = {**os.environ, "KAFKA_PORT": str(port)}
    subprocess.run([str(ROOT / "tools/kafka/kafka.sh"), action], env=env, check=True)


def answering(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def pid(port: int) -> int:
    """The broker's pid from kafka.sh's pid file, 0 when unknown."""
    try:
        return int((ROOT / ".cache" / "kafka-data" / str(port) / "broker.pid").read_text())
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def running(port: int, *, keep: bool = False) -> Iterator[str]:
    """The broker's bootstrap address; stopped afterwards only when this call started it."""
    started = not answering(port)
    kafka(port, "up")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if started and not keep:
            # Ours alone: stop it so it does not hold memory on a shared box.
            kafka(port, "down")
