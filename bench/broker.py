"""The benchmarks' own broker on BENCH_KAFKA_PORT (never 9092: the tests use that one).

Started and stopped with tools/kafka/kafka.sh; a broker that was already running when a
benchmark began is left running, so `bench.run` can call the standalone benchmarks in between.
One that a benchmark starts begins empty and runs with Kafka's own JVM settings (see JVM).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_PORT = 9092
# What Kafka's own start scripts give a broker (kafka-server-start.sh's heap, kafka-run-class.sh's
# KAFKA_JVM_PERFORMANCE_OPTS), not the test broker's small SerialGC heap: its stop-the-world
# collections of 25-100 ms every few seconds stalled every acks=all produce, which measured the
# test broker's GC rather than the systems. KAFKA_HEAP / KAFKA_JVM_OPTS set by the caller win.
JVM = {
    "KAFKA_HEAP": "-Xmx1G -Xms1G",
    "KAFKA_JVM_OPTS": "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20"
    " -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent"
    " -Djava.awt.headless=true",
}


def jvm() -> dict[str, str]:
    """The JVM settings a broker started here gets: the caller's where set, else JVM's."""
    return {name: os.environ.get(name) or value for name, value in JVM.items()}


def default_port() -> int:
    return int(os.environ.get("BENCH_KAFKA_PORT", "19092"))


def kafka(port: int, action: str, *, stop_with: int | None = None) -> None:
    """`tools/kafka/kafka.sh <action>` for the broker on `port`; one `up` starts is stopped once
    process `stop_with` is gone (KAFKA_STOP_WITH)."""
    if port == TEST_PORT:
        raise SystemExit(f"port {TEST_PORT} is the tests' broker; benchmarks use their own")
    env = {**os.environ, **jvm(), "KAFKA_PORT": str(port)}
    # Never inherited: run from a test session or `make chaos` (which set it to their own pid), a
    # broker kept (`--keep-broker`, bench.takeover) died with that process.
    env.pop("KAFKA_STOP_WITH", None)
    if stop_with is not None:
        env["KAFKA_STOP_WITH"] = str(stop_with)
    subprocess.run([str(ROOT / "tools/kafka/kafka.sh"), action], env=env, check=True)


def answering(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def data_dir(port: int) -> Path:
    """Where kafka.sh keeps this port's broker: its logs, metadata and pid file."""
    return Path(os.environ.get("KAFKA_DATA_DIR") or ROOT / ".cache" / "kafka-data" / str(port))


def pid(port: int) -> int:
    """The broker's pid from kafka.sh's pid file, 0 when unknown."""
    try:
        return int((data_dir(port) / "broker.pid").read_text())
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def session(port: int, *, keep: bool = False) -> Iterator[tuple[str, bool]]:
    """The broker's bootstrap address, and whether it was up already (reused, not ours).

    Stopped afterwards only when this call started it. One look decides both: a broker coming
    up between two looks would be counted wrongly.
    """
    started = not answering(port)
    if started and not os.environ.get("KAFKA_DATA_DIR"):
        # Every earlier run's topics (GBs, thousands of partitions) would otherwise be loaded,
        # held in the heap and sent in metadata: each run starts from an empty broker. Only the
        # bench's own per-port directory: one named by KAFKA_DATA_DIR may be another broker's.
        shutil.rmtree(data_dir(port), ignore_errors=True)
    # Not kept: it dies with this process however it ends, else a killed run's broker would be
    # the next run's, reused with every topic of the killed one.
    kafka(port, "up", stop_with=os.getpid() if started and not keep else None)
    try:
        yield f"127.0.0.1:{port}", not started
    finally:
        if started and not keep:
            # Ours alone: stop it so it does not hold memory on a shared box.
            kafka(port, "down")


@contextlib.contextmanager
def running(port: int, *, keep: bool = False) -> Iterator[str]:
    """The broker's bootstrap address; stopped afterwards only when this call started it."""
    with session(port, keep=keep) as (bootstrap, _reused):
        yield bootstrap
