"""A 3-node Kafka cluster of a test module's own (tools/kafka/cluster.sh): RF 3, min.insync 2."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.client import AIOKafkaClient, CoordinationType

from tests.integration import netcut
from tests.integration.conftest import REPO, admin_client, port_is_free
from tests.polling import until_kafka

CLUSTER_SH = REPO / "tools" / "kafka" / "cluster.sh"
NODES = 3
PORTS = 2 * NODES  # each node's broker port and its controller's after it
SESSION_TIMEOUT_KEY = "broker.session.timeout.ms"
KAFKA_SESSION_TIMEOUT_MS = 9000  # Kafka's default, where a config does not set it


def property_of(text: str, key: str) -> str | None:
    """`key`'s value in Java properties text: the last occurrence wins, as Kafka reads it."""
    value = None
    for line in text.splitlines():
        name, sep, rest = line.strip().partition("=")
        if sep and not name.startswith(("#", "!")) and name.strip() == key:
            value = rest.strip()
    return value


@dataclass(frozen=True)
class Cluster:
    """Three combined broker+controller nodes; node n (1-3) listens on port + 2(n - 1)."""

    port: int
    data_dir: Path

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    def broker_session_timeout(self) -> float:
        """Seconds without a heartbeat before the controllers fence a broker, as node 1 runs.

        Read from the config kafka.sh rendered for it (so after `up`).
        """
        text = (self.data_dir / "node1" / "server.properties").read_text()
        value = property_of(text, SESSION_TIMEOUT_KEY)
        return int(value if value is not None else KAFKA_SESSION_TIMEOUT_MS) / 1000

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.node_port(n)}" for n in range(1, NODES + 1))

    def sh(self, command: str, node: int | None = None) -> None:
        env = {
            **os.environ,
            "KAFKA_CLUSTER_PORT": str(self.port),
            "KAFKA_CLUSTER_DIR": str(self.data_dir),
        }
        args = [str(CLUSTER_SH), command, *([str(node)] if node is not None else [])]
        subprocess.run(args, check=True, env=env, timeout=180)

    async def up(self) -> None:
        """Start every node (formatted once); returns once each answers."""
        await asyncio.to_thread(self.sh, "up")

    async def down(self) -> None:
        await asyncio.to_thread(self.sh, "down")

    async def stop(self, node: int) -> None:
        """A controlled shutdown (SIGTERM): its leaderships move before it exits."""
        await asyncio.to_thread(self.sh, "down", node)

    async def kill(self, node: int) -> None:
        """A crash (SIGKILL): its partitions' leaders move only once the controller notices."""
        await asyncio.to_thread(self.sh, "kill", node)

    async def start(self, node: int) -> None:
        """Start it again on its kept data; returns once it answers."""
        await asyncio.to_thread(self.sh, "up", node)

    def bootstrap_without(self, node: int) -> str:
        """The other nodes' addresses: a client that must not wait on `node`."""
        return ",".join(f"127.0.0.1:{self.node_port(n)}" for n in range(1, NODES + 1) if n != node)

    def pid(self, node: int) -> int:
        """The running node's JVM (kafka.sh's pid file)."""
        return int((self.data_dir / f"node{node}" / "broker.pid").read_text())

    @contextmanager
    def cut_off(self, node: int) -> Iterator[None]:
        """The node's host vanished within the block: clients', peers' and its own packets
        dropped, its broker and controller ports included (netcut); reconnected on leaving."""
        port = self.node_port(node)
        with netcut.cut_off(self.pid(node), [port, port + 1], f"netcut-{port}"):
            yield

    def active_controller(self) -> int:
        """The KRaft quorum's leader (1-3) as the nodes last recorded it (-1: none known)."""
        states: list[dict[str, Any]] = [
            json.loads(path.read_text())
            for path in self.data_dir.glob("node*/kraft/__cluster_metadata-0/quorum-state")
        ]
        latest: dict[str, Any] = max(
            states, key=lambda state: int(state["leaderEpoch"]), default={}
        )
        return int(latest.get("leaderId", -1))

    async def leaders_and_isrs(self, topics: list[str], via: str) -> list[tuple[int, list[int]]]:
        """Each partition's leader and ISR of `topics`, as the nodes at `via` answer."""
        async with admin_client(via) as admin:
            described = await admin.describe_topics(topics)
        return [(p["leader"], p["isr"]) for t in described for p in t["partitions"]]

    @asynccontextmanager
    async def restoring(self) -> AsyncIterator[None]:
        """Every node stopped or killed within is started again on leaving, a failed test's too:
        the module's next tests share the cluster."""
        try:
            yield
        finally:
            await self.up()

    async def transaction_coordinator(self, transactional_id: str) -> int:
        """The node (1-3) coordinating a transactional id's transactions (FindCoordinator)."""
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap)
        await client.bootstrap()
        try:
            node: int = await client.coordinator_lookup(
                CoordinationType.TRANSACTION, transactional_id
            )
        finally:
            await client.close()
        return node

    async def under_replicated(self) -> list[str]:
        """Partitions (internal ones too) without a leader or with a replica out of the ISR."""
        async with admin_client(self.bootstrap) as admin:
            described = await admin.describe_topics(await admin.list_topics())
        return [
            f"{topic['topic']}-{p['partition']} leader {p['leader']} isr {p['isr']}"
            for topic in described
            for p in topic["partitions"]
            if p["leader"] < 0 or sorted(p["isr"]) != sorted(p["replicas"])
        ]

    async def wait_fully_replicated(self, within: float = 90) -> None:
        lagging: list[str] = []

        async def replicated() -> bool:
            nonlocal lagging
            lagging = await self.under_replicated()
            return not lagging

        # A node going or coming back: its metadata answers for a moment only.
        await until_kafka(replicated, within, 0.5, lambda: f"under-replicated {lagging[:10]}")


def free_port_range(size: int) -> int:
    """The first of `size` consecutive free ports."""
    for _ in range(200):
        port = random.randint(20000, 29000)
        if all(port_is_free(port + i) for i in range(size)):
            return port
    raise RuntimeError(f"no {size} consecutive free ports in 20000-29000")


def cluster_port(base: int | None = None) -> int:
    """The first of a cluster's ports: `base` if its range is free, else a free range's."""
    if base is None:
        return free_port_range(PORTS)
    busy = [port for port in range(base, base + PORTS) if not port_is_free(port)]
    if busy:
        raise RuntimeError(f"cluster ports {base}-{base + PORTS - 1}: {busy} already in use")
    return base


@contextmanager
def own_cluster(data_dir: Path, base_port: int | None = None) -> Iterator[Cluster]:
    """A cluster started on free ports (from `base_port` if given), every node stopped on
    leaving (a failed test too)."""
    cluster = Cluster(cluster_port(base_port), data_dir)
    try:
        cluster.sh("up")
        yield cluster
    finally:
        cluster.sh("down")
