"""bridge.groups on a real coordinator: which rejoin of a static group after a growth rebalances.

A static leader restarted within its session is answered as a follower (JoinGroup v5), so
no member watches the topic's partition count (GrowthWatch). The coordinator rebalances a
Stable group for a JoinGroup from its leader, which a restarted static leader still is to it,
or from a follower whose metadata changed; a follower joining with the metadata it joined
with is only handed the current assignment. The stage's claim changes at every assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.admin import NewPartitions

from bridge.groups import Claim, StickyAssignor, rejoin
from tests.integration.conftest import Topics, admin_client, create_topic
from tests.polling import until

pytestmark = pytest.mark.timeout(90)

PARTITIONS, GROWN = 2, 4


class Member(ConsumerRebalanceListener):  # type: ignore[misc]
    """A static member of a sticky group, claiming what `claim` says; counts its assignments."""

    def __init__(self, bootstrap: str, names: Topics, instance: str) -> None:
        self.claim = Claim()
        self.assignments = 0
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=names.group,
            group_instance_id=instance,
            partition_assignment_strategy=(StickyAssignor(lambda: self.claim, names.group),),
            # Outlasts the restart: the restarted member takes its old one's place.
            session_timeout_ms=30_000,
            heartbeat_interval_ms=1_000,
            metadata_max_age_ms=1_000,
        )
        self._topic = names.ingest
        self._polling: asyncio.Task[None] | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.assignments += 1

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe([self._topic], listener=self)
        self._polling = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await self.consumer.getmany(timeout_ms=200)

    async def crash(self) -> None:
        """Gone without LeaveGroup (aiokafka sends none for a static member), as a SIGKILL."""
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
        await self.consumer.stop()

    @property
    def generation(self) -> int:
        return int(self.consumer._coordinator.generation)

    def owned(self) -> list[int]:
        return sorted(tp.partition for tp in self.consumer.assignment())

    def sees(self) -> int:
        return len(self.consumer.partitions_for_topic(self._topic) or ())


@contextlib.asynccontextmanager
async def restarted_leader_and_grown(
    bootstrap: str, names: Topics
) -> AsyncIterator[tuple[Member, Member]]:
    """Leader `a` and follower `b`; `a` crash-restarted within its session (answered as a
    follower), then the topic grown: both see it, no rebalance took it on."""
    await create_topic(bootstrap, names.ingest, PARTITIONS)
    a, b = Member(bootstrap, names, "a"), Member(bootstrap, names, "b")
    members = [a, b]
    try:
        await a.start()
        await until(lambda: a.owned(), 30, 0.1, "the leader assigned")
        await b.start()
        await until(lambda: a.owned() and b.owned(), 30, 0.1, "each member assigned")
        generation = b.generation
        await a.crash()
        members[0] = a = Member(bootstrap, names, "a")
        await a.start()
        await until(lambda: a.owned(), 30, 0.1, "the restarted member's partitions back")
        assert (a.generation, b.generation) == (generation, generation), "a restart rebalanced"
        async with admin_client(bootstrap) as admin:
            await admin.create_partitions({names.ingest: NewPartitions(GROWN)})
        await until(lambda: a.sees() == b.sees() == GROWN, 30, 0.1, "the growth in the metadata")
        await asyncio.sleep(3)  # three metadata refreshes: a watching leader would have rejoined
        assert a.generation == generation
        assert sorted(a.owned() + b.owned()) == list(range(PARTITIONS))
        yield a, b
    finally:
        for member in members:
            await member.crash()


@pytest.mark.parametrize(
    ("who", "changed", "rebalances"),
    [
        ("follower", True, True),  # the stage's case: its claim changed since its join
        ("follower", False, False),  # why it must: the coordinator answers the same generation
        ("restarted leader", False, True),  # the coordinator's leader still, whatever it claims
    ],
)
async def test_a_rejoin_after_growth_rebalances_from_the_leader_or_a_changed_claim(
    kafka_bootstrap: str, topics: Topics, who: str, changed: bool, rebalances: bool
) -> None:
    async with restarted_leader_and_grown(kafka_bootstrap, topics) as (a, b):
        member = a if who == "restarted leader" else b
        generation, assignments = member.generation, member.assignments
        if changed:
            member.claim = Claim(tuple(member.owned()), int(time.time() * 1000), generation)
        rejoin(member.consumer)
        await until(lambda: member.assignments > assignments, 30, 0.1, "the rejoin answered")
        if rebalances:
            await until(
                lambda: sorted(a.owned() + b.owned()) == list(range(GROWN)),
                30,
                0.1,
                lambda: f"{GROWN} partitions owned: {a.owned()} {b.owned()}",
            )
            assert member.generation > generation
        else:
            assert member.generation == generation
            assert sorted(a.owned() + b.owned()) == list(range(PARTITIONS))


async def test_two_deployments_in_one_group_each_own_their_topic_and_it_is_said(
    kafka_bootstrap: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    # Staging and production on one cluster with one BRIDGE_DEDUP__GROUP, their ingest topics
    # apart: the leader assigned nobody anything (a stalled group) when its assignor refused
    # two topics.
    other = dataclasses.replace(Topics.fresh(), group=topics.group)
    for names in (topics, other):
        await create_topic(kafka_bootstrap, names.ingest, PARTITIONS)
    a, b = Member(kafka_bootstrap, topics, "a"), Member(kafka_bootstrap, other, "b")
    try:
        await a.start()
        await until(lambda: a.owned(), 30, 0.1, "the first deployment assigned")
        await b.start()
        await until(
            lambda: a.owned() == b.owned() == list(range(PARTITIONS)),
            30,
            0.1,
            lambda: f"each deployment owns its own topic: {a.owned()} {b.owned()}",
        )
        assert {tp.topic for tp in a.consumer.assignment()} == {topics.ingest}
        assert {tp.topic for tp in b.consumer.assignment()} == {other.ingest}
    finally:
        for member in (a, b):
            await member.crash()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(topics.group in m and other.ingest in m and topics.ingest in m for m in said), said
