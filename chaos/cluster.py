"""A local three-node KRaft cluster (each node broker + controller) for the replication scenario.

tools/kafka/kafka.sh runs one standalone node; a cluster needs one cluster id and a static
three-voter quorum, which it does not do. This reuses its jar cache (`kafka.sh fetch`, the
directory named after jars.lock's pins) and its log4j2 settings, and starts the JVMs itself.
Replication factor 3 and min.insync.replicas 2 for every topic, internal ones included.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import REPO, broker_answers, free_port

KAFKA_DIR = REPO / "tools" / "kafka"
NODES = 3

PROPERTIES = """\
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}/kraft
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
num.network.threads=1
num.io.threads=2
num.recovery.threads.per.data.dir=1
"""


def jar_dir() -> Path:
    """kafka.sh's jar cache for the pinned versions, fetched first if missing."""
    subprocess.run([str(KAFKA_DIR / "kafka.sh"), "fetch"], check=True, timeout=600)
    pins = (KAFKA_DIR / "jars.lock").read_text().splitlines(True)
    digest = hashlib.sha256("".join(p for p in pins if not p.startswith("#")).encode())
    home = Path(os.environ.get("KAFKA_HOME_DIR", REPO / ".cache" / "kafka"))
    lib = home / digest.hexdigest()[:16] / "lib"
    if not lib.is_dir():
        raise RuntimeError(f"no jar cache at {lib}: has kafka.sh's layout changed?")
    return lib


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found:
        raise RuntimeError("no java on PATH (kafka.sh can fetch one; run `make kafka-up` once)")
    return found


@dataclass
class Node:
    node: int
    port: int
    controller: int
    data: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    workdir: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node == node_id)

    async def up(self) -> None:
        """Format (once) and start every node; returns when each answers a Metadata request."""
        lib, binary = await asyncio.to_thread(jar_dir), java()
        if not self.nodes:
            self.nodes = [
                Node(n, free_port(), free_port(), self.workdir / f"node{n}")
                for n in range(1, NODES + 1)
            ]
            voters = ",".join(f"{n.node}@127.0.0.1:{n.controller}" for n in self.nodes)
            cluster_id = _cluster_id()
            for n in self.nodes:
                await asyncio.to_thread(_format, n, voters, cluster_id, lib, binary)
        for n in self.nodes:
            self.start(n, lib, binary)
        await asyncio.gather(*(self.until_answering(n) for n in self.nodes))

    def start(self, n: Node, lib: Path | None = None, binary: str | None = None) -> None:
        if n.alive:
            return
        lib, binary = lib or jar_dir(), binary or java()
        with (n.data / "broker.log").open("ab") as log:
            n.process = subprocess.Popen(
                [
                    *(binary, "-Xmx384m", "-Xms128m", "-XX:+UseSerialGC", *_log4j()),
                    *("-cp", f"{lib}/*", "kafka.Kafka", str(n.data / "server.properties")),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def until_answering(self, n: Node, within: float = 180) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not await asyncio.to_thread(broker_answers, n.port):
            if not n.alive:
                raise RuntimeError(f"kafka node {n.node} exited; see {n.data / 'broker.log'}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"kafka node {n.node} not answering after {within}s")
            await asyncio.sleep(1)

    def kill(self, n: Node) -> None:
        """SIGKILL: a node lost, not shut down."""
        if n.process is not None and n.alive:
            n.process.send_signal(signal.SIGKILL)
            n.process.wait(30)

    async def down(self) -> None:
        for n in self.nodes:
            if n.process is not None and n.alive:
                n.process.terminate()
        for n in self.nodes:
            if n.process is not None:
                try:
                    await asyncio.to_thread(n.process.wait, 60)
                except subprocess.TimeoutExpired:
                    n.process.kill()
                    n.process.wait(10)


def _format(n: Node, voters: str, cluster_id: str, lib: Path, binary: str) -> None:
    """Write the node's properties and format its log dir with the cluster's id."""
    n.data.mkdir(parents=True, exist_ok=True)
    props = n.data / "server.properties"
    fields = {"node": n.node, "voters": voters, "port": n.port, "controller": n.controller}
    props.write_text(PROPERTIES.format(**fields, data=n.data))
    subprocess.run(
        [
            *(binary, "-cp", f"{lib}/*", *_log4j(), "kafka.tools.StorageTool", "format"),
            *("-t", cluster_id, "-c", str(props)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _log4j() -> list[str]:
    return [f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}"]


def _cluster_id() -> str:
    """What `StorageTool random-uuid` prints: 16 random bytes, URL-safe base64, unpadded."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
