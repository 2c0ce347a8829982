"""A rolling update and a rollback: the previous release's replica beside this one, then stopped.

The previous release is extracted from this repository's own history (`git archive`), and run
with this repository's venv, its tree put first on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import bridge
from bridge.simulator import Simulator, SimulatorConfig
from tests.integration.conftest import Topics, entry, lease_members, read_decided
from tests.integration.feedtakeover import (
    feed_readers,
    new_readers_events_land_once,
    until_mid_stream,
    until_new_reader,
)
from tests.integration.replicas import Replica, feed_env, post_signed, total
from tests.polling import until
from tests.previous_release import PREVIOUS_RELEASE, extract

# The release running beside this code: at each release, move it to the last commit deployed
# (the one a rollout upgrades from, and a rollback returns to), and check README's "Upgrading".
NEW_TREE = str(Path(bridge.__file__).parent.parent)
CALLS = 12
# Every module of the package on PYTHONPATH imported: what the venv lacks is said before any
# replica waits for readiness, and the package's path proves which tree a replica runs.
IMPORT_ALL = """
import importlib, pkgutil, bridge
for module in pkgutil.walk_packages(bridge.__path__, "bridge."):
    if not module.name.endswith(".__main__"):
        importlib.import_module(module.name)
print(bridge.__file__)
"""

pytestmark = pytest.mark.timeout(400)


def unmet(pyproject: Path) -> list[str]:
    """The previous release's runtime requirements this venv does not satisfy."""
    project = tomllib.loads(pyproject.read_text())["project"]
    python = ".".join(map(str, sys.version_info[:3]))
    problems = []
    if python not in SpecifierSet(project.get("requires-python", "")):
        problems.append(f"python {project['requires-python']} (this venv's is {python})")
    for line in project.get("dependencies", []):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line} (installed: {installed})")
    return problems


@pytest.fixture(scope="session")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The previous release's package, extracted from this repository's history."""
    tree = extract(
        tmp_path_factory.mktemp(f"release-{PREVIOUS_RELEASE[:7]}"), "bridge", "pyproject.toml"
    )
    problems = unmet(tree / "pyproject.toml")
    if problems:
        # Not the machine's: today's venv (today's pyproject) cannot run the previous release.
        pytest.fail(
            f"the previous release ({PREVIOUS_RELEASE}) needs what this venv lacks: "
            + "; ".join(problems)
            + ": install it beside today's dependencies, or move PREVIOUS_RELEASE"
        )
    imported = subprocess.run(
        # -P: not the working directory first on sys.path (this repository's tree, in a test run).
        [sys.executable, "-P", "-c", IMPORT_ALL],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        check=False,
    )
    errors = imported.stderr.decode(errors="replace")[-2000:]
    assert imported.returncode == 0, f"the previous release does not import in this venv:\n{errors}"
    assert Path(imported.stdout.decode().strip()).is_relative_to(tree), imported.stdout
    return str(tree)


def documented(n: int, run: str) -> dict[str, Any]:
    """A documented-shape webhook without an id: its dedup id is its content's hash."""
    return {"type": "call.started", "data": {"call_id": f"CA_{run}_d{n}"}, "timestamp": 1.79e9 + n}


class BothWays:
    """Every event POSTed once to each live replica; answered once one copy got a 2xx."""

    def __init__(self, session: aiohttp.ClientSession, replicas: list[Replica], run: str) -> None:
        self._session = session
        self._replicas = replicas
        self._run = run
        self.answered: list[dict[str, Any]] = []
        self.stopping = asyncio.Event()

    async def _deliver(self, body: dict[str, Any]) -> None:
        async def answered() -> bool:
            live = [r for r in self._replicas if r.alive]
            statuses = await asyncio.gather(
                *(post_signed(self._session, r.url, body) for r in live)
            )
            return any(200 <= status < 300 for status in statuses)

        await until(answered, 90, 0.2, f"a replica answers 2xx for {body}")
        self.answered.append(body)

    async def _call(self, n: int) -> None:
        call = f"CA_{self._run}_{n}"
        for seq in itertools.count(1):
            if self.stopping.is_set():
                return
            body = entry(seq, call=call) if seq % 5 else documented(n * 10_000 + seq, self._run)
            await self._deliver(body)
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        await asyncio.gather(*(self._call(n) for n in range(CALLS)))


async def _roll(
    make: Callable[..., Replica],
    bootstrap: str,
    topics: Topics,
    first: str,
    second: str,
    *,
    back: bool = False,
) -> dict[str, float]:
    """`first` runs, `second` joins, both take every event, `first` stops: each id output once.

    `back`: `second` stops and starts again first, so partitions go back to `first`, which kept
    their windows while the other release decided them. Returns the counters of `second`'s
    dedup stage that say what it made of `first`'s offsets.
    """
    a, b = make("first", PYTHONPATH=first), make("second", PYTHONPATH=second)
    await a.start()
    run = os.urandom(4).hex()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        traffic = BothWays(session, [a, b], run)
        sending = asyncio.create_task(traffic.run())
        await until(lambda: len(traffic.answered) >= 50, 120, 0.25, "50 events before the join")
        await b.start()
        await until(lambda: len(traffic.answered) >= 250, 180, 0.25, "250 events with both")
        if back:
            assert await b.stop() == 0
            count = len(traffic.answered)
            await until(lambda: len(traffic.answered) >= count + 100, 120, 0.25, "100 back")
            await b.start()
            await until(lambda: len(traffic.answered) >= count + 250, 180, 0.25, "both again")
        assert await a.stop() == 0
        count = len(traffic.answered)
        await until(lambda: len(traffic.answered) >= count + 100, 120, 0.25, "100 after the stop")
        traffic.stopping.set()
        await sending
        samples = await b.metrics(session)
    records = await read_decided(bootstrap, topics, [topics.events, topics.alerts], within=120)
    copies = Counter(r.json()["id"] for r in records)
    doubled = {event: n for event, n in copies.items() if n > 1}
    assert not doubled, f"doubled: {doubled}"
    # An entry's id is its call and seq; a documented body's, its content hash: found by its call.
    answered_ids = {
        f"{b['call']}:{b['seq']}" if "seq" in b else b["data"]["call_id"] for b in traffic.answered
    }
    found = {r.json()["id"] for r in records} | {r.json()["data"].get("call_id") for r in records}
    missing = answered_ids - found
    assert not missing, f"{len(missing)} answered, not output: {sorted(missing)[:20]}"
    assert len(records) == len(traffic.answered), (len(records), len(traffic.answered))
    print(f"{len(records)} events output once")
    return {
        kind: total(samples, "pinecall_bridge_dedup_offset_resets_total", kind=kind)
        for kind in ("moved", "unmarked", "missing")
    }


async def test_an_upgrade_old_then_new_outputs_each_event_once(
    old_tree: str, replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    resets = await _roll(replicas, kafka_bootstrap, topics, old_tree, NEW_TREE)
    print(f"new replica's offset resets after the old one's commits: {resets}")


async def test_a_rollback_new_then_old_outputs_each_event_once(
    old_tree: str, replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    await _roll(replicas, kafka_bootstrap, topics, NEW_TREE, old_tree)


@pytest.mark.parametrize("upgrade", [True, False], ids=["upgrade", "rollback"])
async def test_partitions_back_to_a_release_that_kept_their_windows_output_each_event_once(
    upgrade: bool,
    old_tree: str,
    replicas: Callable[..., Replica],
    kafka_bootstrap: str,
    topics: Topics,
) -> None:
    """A rollout that backs off and goes on: the other release's decisions meet a kept window."""
    first, second = (old_tree, NEW_TREE) if upgrade else (NEW_TREE, old_tree)
    await _roll(replicas, kafka_bootstrap, topics, first, second, back=True)


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token_ttl=300.0)) as sim:
        yield sim


@pytest.mark.parametrize("upgrade", [True, False], ids=["upgrade", "rollback"])
async def test_the_feed_lease_passes_between_releases(
    upgrade: bool,
    old_tree: str,
    replicas: Callable[..., Replica],
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
) -> None:
    """The holder of one release stopped mid-stream: the other's replica takes the feed over."""
    first, second = (old_tree, NEW_TREE) if upgrade else (NEW_TREE, old_tree)
    holder = replicas("first", PYTHONPATH=first, **feed_env(simulator))
    other = replicas("second", PYTHONPATH=second, **feed_env(simulator))
    await holder.start()
    async with asyncio.timeout(60):
        await simulator.wait_for_subscribers(1)
    await other.start()
    await until(
        lambda: lease_members(kafka_bootstrap, f"{topics.group}-feed-lease", 2),
        60,
        0.25,
        "both replicas in the feed lease's group",
    )
    assert len(simulator.feed.subscribed()) == 1, "a second reader of the feed"
    before = feed_readers(simulator)
    async with aiohttp.ClientSession() as session:
        traffic = asyncio.create_task(
            simulator.run_traffic(
                calls=30, concurrency=10, rate=60, channel="websocket", duplicates=0.2, seed=4
            )
        )
        await until_mid_stream(holder, session, traffic, "stopped")
        assert await holder.stop() == 0
        await until_new_reader(simulator, before, "the other release's replica takes the feed")
        await traffic
        held = total(await other.metrics(session), "pinecall_bridge_feed_lease_held")
    assert held == 1
    assert len(simulator.feed.subscribed()) == 1
    ids = await new_readers_events_land_once(simulator, before, kafka_bootstrap, topics)
    assert set(ids) <= simulator.ledger.expected_ids(), "published something never sent durably"
