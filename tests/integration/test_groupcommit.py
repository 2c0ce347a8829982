"""TxnOffsetCommit v3 on the real broker: the group coordinator fences a stale member's commit.

One group member (a real AIOKafkaConsumer, joined) and a GroupCommitProducer; the ingest topic
stands for the input, the events topic for the output.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import JoinGroupRequest

from bridge.dedup import groupcommit
from bridge.dedup.committed import StableOffsets
from bridge.dedup.groupcommit import (
    ILLEGAL_GENERATION,
    UNKNOWN_MEMBER_ID,
    GroupCommitFailedError,
    GroupCommitProducer,
)
from bridge.dedup.offsetmark import mark
from bridge.groups import GroupMetadata, group_metadata
from tests.integration.conftest import (
    Topics,
    admin_client,
    create_topic,
    ingest_one_partition,
    lagging_coordinator,
    open_output,
    read_to_end,
)
from tests.loopreports import loop_reports
from tests.polling import Deadline, until, until_kafka

pytestmark = pytest.mark.timeout(30)

MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS = 79, 27


@dataclasses.dataclass
class Setup:
    """A joined member of the group, its metadata, and a GroupCommitProducer."""

    names: Topics
    bootstrap: str
    member: AIOKafkaConsumer
    meta: GroupMetadata
    producer: GroupCommitProducer

    @property
    def input(self) -> TopicPartition:
        return TopicPartition(self.names.ingest, 0)

    async def transaction(self, value: bytes, offset: int, meta: GroupMetadata) -> None:
        """One transaction: `value` out, `offset` for the input partition, committed."""
        await self.producer.begin_transaction()
        await self.producer.send_and_wait(self.names.events, value)
        await self.producer.send_offsets_with_group({self.input: offset}, meta)
        await self.producer.commit_transaction()

    async def refused(self, value: bytes, offset: int, meta: GroupMetadata) -> int:
        """A transaction whose offsets the coordinator refuses: the refusal's error code."""
        await self.producer.begin_transaction()
        await self.producer.send_and_wait(self.names.events, value)  # in the log, uncommitted
        with pytest.raises(GroupCommitFailedError) as sent:
            await self.producer.send_offsets_with_group({self.input: offset}, meta)
        with pytest.raises(GroupCommitFailedError) as committed:
            await self.producer.commit_transaction()
        assert committed.value.code == sent.value.code
        # Abortable, not fatal: aiokafka's sender task lives on.
        assert not self.producer._sender.sender_task.done()
        return sent.value.code

    async def committed_offset(self) -> int | None:
        """The group's offset for the input, once no transactional commit for it is pending."""
        return await committed_offset(self.bootstrap, self.names.group, self.input)

    async def output(self, *, committed: bool = True) -> list[bytes]:
        """The output's records; committed ones once its transactions have settled."""
        if committed:
            assert await self.settles(within=10), "a transaction holds the output open"
        records = await read_to_end(self.bootstrap, [self.names.events], committed=committed)
        return [r.value for r in records]

    async def settles(self, within: float) -> bool:
        """Whether the output's last stable offset reaches its end within `within` s: no
        transaction is left open (EndTxn's markers are written just after it returns)."""

        async def settled() -> bool:
            return not await open_output(self.bootstrap, self.names)

        try:
            await until(settled, within, 0.1)
        except AssertionError:
            return False
        return True


async def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """`group`'s offset for `tp`, once no transactional commit for it is pending."""
    stable = StableOffsets({"bootstrap_servers": bootstrap}, group)
    await stable.start()
    try:
        return await stable.committed(tp)
    finally:
        await stable.stop()


def txn_producer(bootstrap: str, names: Topics) -> GroupCommitProducer:
    return GroupCommitProducer(bootstrap_servers=bootstrap, transactional_id=f"{names.group}-txn")


@pytest.fixture
async def setup(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[Setup]:
    await ingest_one_partition(
        kafka_bootstrap, topics, []
    )  # one-partition ingest and events topics
    member = AIOKafkaConsumer(
        topics.ingest,
        bootstrap_servers=kafka_bootstrap,
        group_id=topics.group,
        enable_auto_commit=False,
    )
    await member.start()
    try:
        meta = await _joined(member, topics.group)
        producer = txn_producer(kafka_bootstrap, topics)
        await producer.start()
        it = Setup(topics, kafka_bootstrap, member, meta, producer)
        try:
            yield it
        finally:
            await it.producer.stop()  # a test may have replaced it
    finally:
        await member.stop()


async def _joined(member: AIOKafkaConsumer, group: str) -> GroupMetadata:
    """The member's metadata once it has joined the group and holds its partition."""
    await until(lambda: member.assignment() and group_metadata(member, group), 20, 0.05, "joined")
    meta = group_metadata(member, group)
    assert meta is not None
    assert meta.generation_id >= 1
    return meta


async def test_offsets_with_the_members_generation_commit(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions: list[int] = []
    build = groupcommit.GroupTxnOffsetCommit.build

    def spy(request: Any, struct_class: Any) -> Any:
        versions.append(struct_class.API_VERSION)
        return build(request, struct_class)

    monkeypatch.setattr(groupcommit.GroupTxnOffsetCommit, "build", spy)
    await setup.transaction(b"one", 5, setup.meta)
    assert versions == [3]  # negotiated with the broker's ApiVersions
    assert await setup.committed_offset() == 5
    assert await setup.output() == [b"one"]


@pytest.mark.parametrize(
    ("stale", "code"),
    [
        (lambda m: dataclasses.replace(m, generation_id=m.generation_id + 1), ILLEGAL_GENERATION),
        (lambda m: dataclasses.replace(m, member_id=m.member_id + "-zombie"), UNKNOWN_MEMBER_ID),
    ],
    ids=["next-generation", "made-up-member"],
)
async def test_a_stale_member_is_refused_and_its_transaction_aborted(
    setup: Setup, stale: Any, code: int
) -> None:
    await setup.transaction(b"one", 5, setup.meta)
    assert await setup.refused(b"zombie", 9, stale(setup.meta)) == code
    await setup.producer.abort_transaction()
    assert await setup.committed_offset() == 5
    assert await setup.settles(within=10)  # EndTxn(ABORT) went out
    assert await setup.output() == [b"one"]
    assert await setup.output(committed=False) == [b"one", b"zombie"]
    # The same producer goes on, and the aborted record stays out of its next commit.
    await setup.transaction(b"two", 7, setup.meta)
    assert await setup.committed_offset() == 7
    assert await setup.output() == [b"one", b"two"]


async def test_a_refused_transaction_left_open_is_aborted_by_the_next_producer(
    setup: Setup,
) -> None:
    """A process that dies between the refusal and the abort: its successor's InitProducerId
    (the same transactional id) aborts what the dead one left open."""
    stale = dataclasses.replace(setup.meta, generation_id=setup.meta.generation_id + 1)
    await setup.refused(b"zombie", 9, stale)
    await setup.producer.stop()  # no abort
    assert not await setup.settles(within=2)
    setup.producer = txn_producer(setup.bootstrap, setup.names)
    await setup.producer.start()
    assert await setup.settles(within=10)
    await setup.transaction(b"one", 5, setup.meta)
    assert await setup.output() == [b"one"]
    assert await setup.committed_offset() == 5


async def test_without_the_kept_partitions_aiokafka_would_commit_the_aborted_record(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the handler keeps the transaction's partitions: aiokafka's own error_transaction
    forgets them, its abort sends no EndTxn, and the next commit takes the record along."""
    monkeypatch.setattr(
        groupcommit, "abort_transaction_with", lambda txn, error: txn.error_transaction(error)
    )
    stale = dataclasses.replace(setup.meta, generation_id=setup.meta.generation_id + 1)
    await setup.refused(b"zombie", 9, stale)
    await setup.producer.abort_transaction()
    assert not await setup.settles(within=2)
    await setup.transaction(b"one", 5, setup.meta)
    assert await setup.output() == [b"zombie", b"one"]


async def test_the_generation_before_a_rebalance_is_refused(setup: Setup) -> None:
    """The zombie case itself: a member's metadata from before the group rebalanced."""
    before = setup.meta
    other = AIOKafkaConsumer(
        setup.names.ingest,
        bootstrap_servers=setup.bootstrap,
        group_id=setup.names.group,
        enable_auto_commit=False,
    )
    await other.start()
    try:

        def rebalanced() -> bool:
            now = group_metadata(other, setup.names.group)
            return now is not None and now.generation_id > before.generation_id

        await until(rebalanced, 20, 0.05, "the group rebalanced")
        assert await setup.refused(b"zombie", 9, before) == ILLEGAL_GENERATION
        await setup.producer.abort_transaction()
    finally:
        await other.stop()
    assert await setup.committed_offset() is None
    assert await setup.output() == []


# The fixture's join takes up to 20 s of the 60: the test's own waits share what is left, so a
# slow box fails at the wait that overran, with what it last saw, not at pytest's timeout.
DELETED_TOPIC_WAITS_SECONDS = 30.0


@pytest.mark.timeout(60)
async def test_a_deleted_topics_offset_is_left_out_not_committed_to_its_namesake(
    setup: Setup,
) -> None:
    """Kafka drops a group's offsets with their topic, and answers a commit for it
    UNKNOWN_TOPIC_OR_PARTITION; it checks the name only, so a retried commit would land on a
    topic of that name made since, and its next owner would skip the new records below it."""
    deadline = Deadline(DELETED_TOPIC_WAITS_SECONDS)
    await deadline.of(setup.transaction(b"one", 5, setup.meta), "the first transaction")
    assert await deadline.of(setup.committed_offset(), "the first commit read back") == 5
    async with admin_client(setup.bootstrap) as admin:
        await deadline.of(admin.delete_topics([setup.names.ingest]), "the topic's deletion")

    offsets: list[Any] = []

    async def offsets_gone() -> bool:
        async with admin_client(setup.bootstrap) as admin:
            offsets[:] = [await admin.list_consumer_group_offsets(setup.names.group)]
        return not offsets[0]

    await deadline.until(
        offsets_gone, lambda: f"the group's offsets went with the topic; last seen {offsets}"
    )

    # The member's generation after the rebalance the deletion starts: still valid.
    def rejoined() -> GroupMetadata | None:
        now = group_metadata(setup.member, setup.names.group)
        return now if now is not None and now.generation_id > setup.meta.generation_id else None

    await deadline.until(
        rejoined,
        lambda: (
            f"the member rejoined after {setup.meta};"
            f" last seen {group_metadata(setup.member, setup.names.group)}"
        ),
    )
    meta = rejoined()
    assert meta is not None
    await deadline.of(setup.producer.begin_transaction(), "the second transaction's start")
    await deadline.of(setup.producer.send_and_wait(setup.names.events, b"two"), "b'two' sent")
    sent = asyncio.create_task(
        setup.producer.send_offsets_with_group({setup.input: (70, mark(70))}, meta)
    )
    # Answered unknown, looked up, left out: milliseconds, more on a loaded box. A commit retried
    # instead would still be pending here, and land on the topic made next.
    await asyncio.wait([sent], timeout=min(10, deadline.left()))
    pending_at_creation = not sent.done()
    await deadline.of(create_topic(setup.bootstrap, setup.names.ingest, 1), "the topic made again")
    left_out = await deadline.of(
        sent,
        lambda: (
            "the offset commit for the deleted topic never returned"
            f" (still pending when the topic was made again: {pending_at_creation})"
        ),
    )
    await deadline.of(setup.producer.commit_transaction(), "the second transaction's commit")
    assert await deadline.of(setup.output(), "the output read back") == [b"one", b"two"]
    # The new topic is read from its start.
    assert await deadline.of(setup.committed_offset(), "the offsets read back") is None
    assert left_out == {setup.input}, f"pending when the topic was made: {pending_at_creation}"


async def test_an_offset_a_lagging_coordinator_knows_no_partition_for_is_retried(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left out, the output committed without its offset: the partition's next owner restores
    up to the older offset and outputs the transaction's records a second time."""
    answered = lagging_coordinator(monkeypatch, answers=3)
    await setup.producer.begin_transaction()
    await setup.producer.send_and_wait(setup.names.events, b"one")
    left_out = await setup.producer.send_offsets_with_group({setup.input: 5}, setup.meta)
    await setup.producer.commit_transaction()
    assert await setup.output() == [b"one"]
    assert await setup.committed_offset() == 5
    assert left_out == frozenset()
    assert len(answered) == 3


async def test_a_live_partition_unknown_to_the_coordinator_for_too_long_aborts(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka's metadata holds the partition, the coordinator never does: no output without
    its offset; the transaction aborts (its partitions restart)."""
    lagging_coordinator(monkeypatch, answers=None)
    await setup.producer.begin_transaction()
    await setup.producer.send_and_wait(setup.names.events, b"one")
    with pytest.raises(UnknownTopicOrPartitionError):
        await setup.producer.send_offsets_with_group({setup.input: 5}, setup.meta)
    await setup.producer.abort_transaction()
    assert await setup.committed_offset() is None
    assert await setup.output() == []


async def test_a_commit_cut_while_its_offsets_are_retried_aborts_as_cut_with_nothing_unread(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop's grace period ran out during a commit the coordinator kept answering with a
    retry: the sender's next attempt came after the cut. It aborts the transaction as cut, and
    no outcome is left for asyncio to log at ERROR as never retrieved."""
    answered = lagging_coordinator(monkeypatch, answers=None)
    with loop_reports() as unread:
        await setup.producer.begin_transaction()
        await setup.producer.send_and_wait(setup.names.events, b"one")
        sending = asyncio.create_task(
            setup.producer.send_offsets_with_group({setup.input: 5}, setup.meta)
        )
        await until(lambda: answered, 10, 0.01, "a TxnOffsetCommit answered with a retry")
        sending.cancel()
        await asyncio.wait([sending])
        ended = setup.producer._txn_manager.wait_for_transaction_end()
        await until(ended.done, 10, 0.01, "the cut commit's transaction aborted")
        assert isinstance(ended.exception(), groupcommit.CommitCutError)
        await setup.producer.abort_transaction()
        await setup.producer.stop()
        setup.producer = txn_producer(setup.bootstrap, setup.names)  # stopped by the fixture
        del sending, ended
    assert unread == []
    assert await setup.committed_offset() is None
    assert await setup.output() == []


async def _joined_unsynced(client: Any, node: int, names: Topics) -> GroupMetadata:
    """A member that joins the group alone, its leader, and never sends its SyncGroup: the group
    stays in CompletingRebalance (until the session timeout, far past the test)."""
    subscription = ConsumerProtocolMemberMetadata(0, [names.ingest], b"").encode()
    member_id = JoinGroupRequest.UNKNOWN_MEMBER_ID
    for _ in range(2):  # the first answer gives the member id (MEMBER_ID_REQUIRED, KIP-394)
        join = JoinGroupRequest(
            names.group, 30_000, 30_000, member_id, None, "consumer", [("range", subscription)]
        )
        answer = await client.send(node, join)
        member_id = answer.member_id
        if answer.error_code == MEMBER_ID_REQUIRED:
            continue
        assert answer.error_code == 0
        assert answer.leader_id == member_id
        return GroupMetadata(names.group, answer.generation_id, member_id)
    raise AssertionError("JoinGroup asked for a member id twice")


async def test_a_commit_while_the_group_completes_a_rebalance_is_not_refused(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """REBALANCE_IN_PROGRESS answers a plain OffsetCommit while the group waits for its leader's
    SyncGroup, never a TxnOffsetCommit: Kafka enforces no group state on a transactional commit,
    only the member and its generation. So a rebalance never takes the handler's fatal path."""
    await ingest_one_partition(kafka_bootstrap, topics, [])
    tp = TopicPartition(topics.ingest, 0)
    producer = txn_producer(kafka_bootstrap, topics)
    await producer.start()
    try:
        client = producer.client
        found: list[int] = []

        async def coordinator() -> bool:
            found[:] = [await client.coordinator_lookup(CoordinationType.GROUP, topics.group)]
            return True

        # A fresh broker answers COORDINATOR_NOT_AVAILABLE until __consumer_offsets is made.
        await until_kafka(coordinator, 20, 0.1, lambda: "the group's coordinator")
        node = found[0]
        meta = await _joined_unsynced(client, node, topics)
        plain = OffsetCommitRequest(
            topics.group, meta.generation_id, meta.member_id, -1, [(tp.topic, [(0, 3, "")])]
        )
        answer = await client.send(node, plain)
        assert [code for _, parts in answer.topics for _, code in parts] == [REBALANCE_IN_PROGRESS]
        await producer.begin_transaction()
        await producer.send_and_wait(topics.events, b"one")
        await producer.send_offsets_with_group({tp: 5}, meta)
        await producer.commit_transaction()
        assert not producer._sender.sender_task.done()
    finally:
        await producer.stop()
    assert await committed_offset(kafka_bootstrap, topics.group, tp) == 5
