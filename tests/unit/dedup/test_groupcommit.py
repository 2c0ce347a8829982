"""TxnOffsetCommit v3 with the group's generation: wire format, response handling, metadata."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    ConcurrentTransactions,
    GroupAuthorizationFailedError,
    IllegalOperation,
    InvalidRequestError,
    KafkaError,
    ProducerFenced,
    RebalanceInProgressError,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
)
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.structs import OffsetAndMetadata

from bridge.dedup import groupcommit
from bridge.dedup.groupcommit import (
    FENCED_MEMBER,
    UNKNOWN_PARTITION_RETRY_SECONDS,
    CommitCutError,
    GroupCommitFailedError,
    GroupCommitHandler,
    GroupCommitProducer,
    GroupTxnOffsetCommit,
    TxnOffsetCommitRequestV3,
    TxnOffsetCommitResponseV3,
    UnknownPartitions,
    partition_errors,
    unknown_partition_action,
)
from bridge.groups import GroupMetadata
from tests.loopreports import loop_reports
from tests.sockets import refusing_address

GROUP = "dedup"
META = GroupMetadata(GROUP, 7, "member-1")
IN, OUT = TopicPartition("ingest", 0), TopicPartition("events", 2)
IN1 = TopicPartition("ingest", 1)
BROKER_4_4 = {28: (0, 6)}  # TxnOffsetCommit versions a Kafka 4.4 broker answers ApiVersions with


def request(meta: GroupMetadata = META) -> Any:
    offsets = {
        IN: (12, ""),
        TopicPartition("ingest", 1): (3, None),
        TopicPartition("b", 0): (1, ""),
    }
    return GroupTxnOffsetCommit("txn-1", 4000, 3, meta, offsets).prepare(BROKER_4_4)


def test_the_request_goes_out_as_v3_with_the_member() -> None:
    sent = request()
    assert type(sent) is TxnOffsetCommitRequestV3
    assert (sent.API_KEY, sent.API_VERSION, sent.FLEXIBLE_VERSION) == (28, 3, True)
    decoded = TxnOffsetCommitRequestV3.decode(sent.encode())
    assert decoded.to_object() == {
        "transactional_id": "txn-1",
        "group_id": GROUP,
        "producer_id": 4000,
        "producer_epoch": 3,
        "generation_id": 7,
        "member_id": "member-1",
        "group_instance_id": None,
        "topics": [
            {
                "name": "b",
                "partitions": [
                    {
                        "partition_index": 0,
                        "committed_offset": 1,
                        "committed_leader_epoch": -1,
                        "committed_metadata": "",
                        "tags": {},
                    }
                ],
                "tags": {},
            },
            {
                "name": "ingest",
                "partitions": [
                    {
                        "partition_index": p,
                        "committed_offset": offset,
                        "committed_leader_epoch": -1,
                        "committed_metadata": text,
                        "tags": {},
                    }
                    for p, offset, text in ((0, 12, ""), (1, 3, None))
                ],
                "tags": {},
            },
        ],
        "tags": {},
    }


def test_a_dynamic_member_sends_a_null_instance_id_and_a_static_one_its_own() -> None:
    dynamic = request().encode()
    # After the member id's compact string: the null compact string, a single 0 byte.
    member = b"\x09member-1"
    assert dynamic[dynamic.index(member) + len(member)] == 0
    static = request(GroupMetadata(GROUP, 7, "member-1", "pod-3"))
    assert TxnOffsetCommitRequestV3.decode(static.encode()).group_instance_id == "pod-3"


@pytest.mark.parametrize("versions", [(0, 3), (3, 5), (2, 6)])
def test_v3_is_picked_from_any_broker_range_holding_it(versions: tuple[int, int]) -> None:
    sent = GroupTxnOffsetCommit("t", 1, 0, META, {IN: (1, "")}).prepare({28: versions})
    assert sent.API_VERSION == 3


def test_a_broker_without_v3_gets_no_commit_without_the_member() -> None:
    with pytest.raises(NotImplementedError):
        GroupTxnOffsetCommit("t", 1, 0, META, {IN: (1, "")}).prepare({28: (0, 2)})


def response(*codes: tuple[TopicPartition, int]) -> Any:
    """A v3 response as the broker sends it: bytes, decoded with our schema."""
    by_topic: dict[str, list[tuple[int, int, dict[int, bytes]]]] = {}
    for tp, code in codes:
        by_topic.setdefault(tp.topic, []).append((tp.partition, code, {}))
    topics: list[tuple[str, Any, dict[int, bytes]]] = [
        (name, partitions, {}) for name, partitions in by_topic.items()
    ]
    raw = TxnOffsetCommitResponseV3(0, topics, {}).encode()
    return TxnOffsetCommitResponseV3.decode(raw)


def test_the_response_round_trips_to_partition_errors() -> None:
    b0 = TopicPartition("b", 0)
    assert partition_errors(response((IN, 0), (b0, 22))) == [(IN, 0), (b0, 22)]


@dataclass
class FakeSender:
    """What the handler uses of aiokafka's Sender."""

    _txn_manager: TransactionManager
    _retry_backoff: float = 0.1
    dead: list[Any] = field(default_factory=list)

    def _coordinator_dead(self, coordinator_type: Any) -> None:
        self.dead.append(coordinator_type)


@dataclass
class Pending:
    sender: FakeSender
    offsets: dict[TopicPartition, OffsetAndMetadata]
    committed: asyncio.Future[None]

    @property
    def txn(self) -> TransactionManager:
        return self.sender._txn_manager

    def answer(self, code: int) -> float | None:
        handler = GroupCommitHandler(self.sender, self.offsets, META)
        backoff: float | None = handler.handle_response(response((IN, code)))
        return backoff


@pytest.fixture
async def pending() -> Pending:
    """A transaction with a record partition added and offsets queued for the group, as the
    sender holds it when the TxnOffsetCommit answer arrives."""
    txn = TransactionManager("txn-1", 60_000)
    txn.set_pid_and_epoch(4000, 3)
    txn.begin_transaction()
    txn.maybe_add_partition_to_txn(OUT)
    txn.partition_added(OUT)
    committed = txn.add_offsets_to_txn({IN: OffsetAndMetadata(12, "")}, GROUP)
    txn.consumer_group_added(GROUP)
    offsets, _ = txn.offsets_to_commit()
    return Pending(FakeSender(txn), offsets, committed)


async def test_a_committed_offset_resolves_the_send(pending: Pending) -> None:
    assert pending.answer(0) is None
    assert pending.committed.done()
    assert pending.committed.exception() is None
    assert pending.txn.state == TransactionState.IN_TRANSACTION


@pytest.mark.parametrize("code", sorted(FENCED_MEMBER))
async def test_a_stale_member_makes_the_transaction_abortable(pending: Pending, code: int) -> None:
    assert pending.answer(code) is None  # no raise: that would end the sender task
    error = pending.committed.exception()
    assert isinstance(error, GroupCommitFailedError)
    assert (error.code, error.metadata) == (code, META)
    assert pending.txn.state == TransactionState.ABORTABLE_ERROR
    with pytest.raises(GroupCommitFailedError):
        pending.txn.committing_transaction()
    # What the broker's transaction holds stays known, so the abort sends EndTxn.
    assert pending.txn.txn_partitions == {OUT}
    assert not pending.txn.is_empty_transaction()


async def test_a_refused_group_makes_the_transaction_abortable(pending: Pending) -> None:
    assert pending.answer(30) is None
    assert isinstance(pending.committed.exception(), GroupAuthorizationFailedError)
    assert pending.txn.txn_partitions == {OUT}
    pending.txn.wait_for_transaction_end().exception()


@pytest.mark.parametrize(("code", "relookup"), [(16, True), (15, True), (7, True), (14, False)])
async def test_a_moved_or_loading_coordinator_is_retried(
    pending: Pending, code: int, relookup: bool
) -> None:
    assert pending.answer(code) == 0.1
    assert bool(pending.sender.dead) == relookup
    assert not pending.committed.done()
    assert pending.txn.state == TransactionState.IN_TRANSACTION


def two_pending() -> tuple[TransactionManager, asyncio.Future[None]]:
    """A transaction with the offsets of ingest partitions 0 and 1 queued for the group."""
    txn = TransactionManager("txn-1", 60_000)
    txn.set_pid_and_epoch(4000, 3)
    txn.begin_transaction()
    committed = txn.add_offsets_to_txn(
        {IN: OffsetAndMetadata(12, ""), IN1: OffsetAndMetadata(3, "")}, GROUP
    )
    txn.consumer_group_added(GROUP)
    return txn, committed


async def test_a_partition_still_loading_is_sent_again_alone_and_then_resolves_the_send() -> None:
    """One answer commits one partition and asks to retry another: the retry, built from what
    aiokafka still holds pending, carries only the second (as Kafka's Java producer does)."""
    txn, committed = two_pending()
    sender = FakeSender(txn)
    offsets, _ = txn.offsets_to_commit()
    first = GroupCommitHandler(sender, offsets, META)
    assert first.handle_response(response((IN, 0), (IN1, 14))) == 0.1
    assert not committed.done()
    offsets, _ = txn.offsets_to_commit()
    retry = GroupCommitHandler(sender, offsets, META)
    assert list(retry.create_request()._offsets) == [IN1]
    assert retry.handle_response(response((IN1, 0))) is None
    assert committed.done()
    assert committed.exception() is None
    assert txn.offsets_to_commit() is None


@pytest.mark.parametrize(
    ("code", "fatal"),
    [(47, ProducerFenced), (90, ProducerFenced), (53, TransactionalIdAuthorizationFailed)],
)
async def test_a_fenced_producer_is_fatal(pending: Pending, code: int, fatal: type) -> None:
    with pytest.raises(fatal):
        pending.answer(code)


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        (42, InvalidRequestError),
        # Never a TxnOffsetCommit's answer: Kafka enforces no group state on a transactional
        # commit (a plain commit's REBALANCE_IN_PROGRESS; tests/integration/test_groupcommit.py).
        (27, RebalanceInProgressError),
        # Never either: the brokers turn a verification's CONCURRENT_TRANSACTIONS into
        # COORDINATOR_NOT_AVAILABLE for TxnOffsetCommit before v5 (this is v3), retried above.
        (51, ConcurrentTransactions),
    ],
)
async def test_an_unexpected_error_is_fatal_as_in_kafkas_java_producer(
    pending: Pending, code: int, fatal: type
) -> None:
    """Java's TxnOffsetCommitHandler ends the producer on any code it does not name."""
    with pytest.raises(fatal):
        pending.answer(code)


async def test_a_fatal_answer_ends_the_sender_and_fails_the_queued_offsets_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In aiokafka's own sender task: the step waiting on the offsets fails now (the stage
    loses the transaction's partitions as `error` and replaces the producer), not at its
    deadline (`timeout`), and nothing is left pending."""
    producer = GroupCommitProducer(bootstrap_servers=refusing_address(), transactional_id="t")
    sender = producer._sender

    async def coordinator(*_: Any) -> int:
        return 0

    async def answer(*_: Any, **__: Any) -> Any:
        return response((IN, 27))

    monkeypatch.setattr(sender, "_find_coordinator", coordinator)
    monkeypatch.setattr(sender.client, "send", answer)
    txn = producer._txn_manager
    txn.set_pid_and_epoch(4000, 3)
    txn.begin_transaction()
    try:
        sending = asyncio.create_task(producer.send_offsets_with_group({IN: 12}, META))
        await asyncio.sleep(0)
        txn.consumer_group_added(GROUP)  # AddOffsetsToTxn answered
        await sender.start()  # the sender task (a PID is held: it sends nothing else)
        with pytest.raises(KafkaError) as failed:
            await asyncio.wait_for(sending, 2)
        assert isinstance(failed.value.__cause__, RebalanceInProgressError)
        assert sender.sender_task.done()
        assert txn.state == TransactionState.FATAL_ERROR
        # The transaction's end has the same failure: read by the stage (transaction._fatal_cause).
        assert txn.wait_for_transaction_end().exception() is failed.value
        assert txn.offsets_to_commit() is None
    finally:
        await producer.stop()


async def test_plain_offsets_are_refused_and_only_this_producer_is_changed() -> None:
    producer = GroupCommitProducer(bootstrap_servers=refusing_address(), transactional_id="t")
    plain = AIOKafkaProducer(bootstrap_servers=refusing_address(), transactional_id="t")
    try:
        with pytest.raises(IllegalOperation):
            await producer.send_offsets_to_transaction({IN: 1}, GROUP)
        assert producer._sender._do_txn_offset_commit == producer._txn_offset_commit
        assert plain._sender._do_txn_offset_commit.__func__.__module__ == "aiokafka.producer.sender"
    finally:
        await producer.stop()
        await plain.stop()


async def cut_commit(producer: GroupCommitProducer) -> asyncio.Future[None]:
    """A transaction whose send_offsets_with_group is cancelled with its offsets still queued
    (the stop's grace period ran out); then the sender reaches them, as its next turn does."""
    txn = producer._txn_manager
    txn.set_pid_and_epoch(4000, 3)
    txn.begin_transaction()
    sending = asyncio.create_task(producer.send_offsets_with_group({IN: 12}, META))
    await asyncio.sleep(0)  # queued: the producer's sender (not started) has not taken them
    sending.cancel()
    await asyncio.wait([sending])
    assert sending.cancelled()
    txn.consumer_group_added(GROUP)  # AddOffsetsToTxn answered after the cut
    offsets, group_id = txn.offsets_to_commit()
    queued: asyncio.Future[None] = txn._pending_txn_offsets[0][2]
    await producer._sender._do_txn_offset_commit(offsets, group_id)
    return queued


async def test_offsets_whose_commit_was_cut_abort_the_transaction_and_say_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = GroupCommitProducer(bootstrap_servers=refusing_address(), transactional_id="t")
    try:
        queued = await cut_commit(producer)
        assert isinstance(queued.exception(), CommitCutError)
        assert producer._txn_manager.state == TransactionState.ABORTABLE_ERROR
        with pytest.raises(CommitCutError):
            producer._txn_manager.committing_transaction()
    finally:
        await producer.stop()
    cut = [r for r in caplog.records if "cut before its offsets were sent" in r.getMessage()]
    assert [r.levelno for r in cut] == [logging.WARNING]


async def test_a_cut_commits_aborted_transaction_leaves_no_unread_future() -> None:
    """Nobody awaits the end of a transaction whose commit was cut: asyncio logged its failure
    at ERROR ("Future exception was never retrieved") when the producer was collected."""
    with loop_reports() as unread:
        producer = GroupCommitProducer(bootstrap_servers=refusing_address(), transactional_id="t")
        try:
            await cut_commit(producer)
        finally:
            await producer.stop()
        del producer
    assert unread == []


@pytest.mark.parametrize(
    ("waited", "present", "action"),
    [
        (0.0, None, "retry"),
        (0.0, True, "retry"),
        (UNKNOWN_PARTITION_RETRY_SECONDS - 0.1, True, "retry"),
        (UNKNOWN_PARTITION_RETRY_SECONDS, True, "abort"),
        (UNKNOWN_PARTITION_RETRY_SECONDS, None, "abort"),
        (0.0, False, "leave_out"),
        (UNKNOWN_PARTITION_RETRY_SECONDS, False, "leave_out"),
    ],
)
def test_only_a_partition_missing_from_kafkas_metadata_is_left_out(
    waited: float, present: bool | None, action: str
) -> None:
    assert unknown_partition_action(waited, present) == action


async def test_an_unknown_partition_is_retried_and_the_others_commit_meanwhile() -> None:
    """The coordinator's metadata lags (partitions just added): retried as Java's producer does;
    left out, the records this transaction output would be output again by the next owner."""
    txn, committed = two_pending()
    sender = FakeSender(txn)
    unknown = UnknownPartitions()
    offsets, _ = txn.offsets_to_commit()
    first = GroupCommitHandler(sender, offsets, META, unknown)
    assert first.handle_response(response((IN, 3), (IN1, 0))) == 0.1
    assert not committed.done()
    assert unknown.unread() == [IN]
    unknown.read(IN, {0, 1})
    offsets, _ = txn.offsets_to_commit()
    assert list(offsets) == [IN]  # the committed one is not sent again
    retry = GroupCommitHandler(sender, offsets, META, unknown)
    assert retry.handle_response(response((IN, 0))) is None
    assert committed.done()
    assert committed.exception() is None
    assert unknown.left_out == set()
    assert txn.state == TransactionState.IN_TRANSACTION


async def test_a_partition_unknown_past_the_bound_but_in_kafkas_metadata_aborts() -> None:
    txn, committed = two_pending()
    unknown = UnknownPartitions(since={IN: time.monotonic() - UNKNOWN_PARTITION_RETRY_SECONDS})
    unknown.read(IN, {0, 1})
    offsets, _ = txn.offsets_to_commit()
    handler = GroupCommitHandler(FakeSender(txn), offsets, META, unknown)
    assert handler.handle_response(response((IN, 3), (IN1, 0))) is None
    assert isinstance(committed.exception(), UnknownTopicOrPartitionError)
    assert txn.state == TransactionState.ABORTABLE_ERROR
    assert unknown.left_out == set()


async def test_an_unknown_partition_is_left_out_and_the_rest_commits() -> None:
    """Kafka's metadata has no such partition (its topic deleted): not retried, which would
    commit the offset to a topic of the same name made since; the other partition's commits."""
    txn, committed = two_pending()
    unknown = UnknownPartitions()
    unknown.read(IN, None)
    offsets, _ = txn.offsets_to_commit()
    handler = GroupCommitHandler(FakeSender(txn), offsets, META, unknown)
    assert handler.handle_response(response((IN, 3), (IN1, 0))) is None
    assert unknown.left_out == {IN}
    assert committed.done()
    assert committed.exception() is None
    assert txn.offsets_to_commit() is None
    assert txn.state == TransactionState.IN_TRANSACTION


class MetadataClient:
    """What _read_presence uses of aiokafka's client: a metadata read of every topic."""

    def __init__(self, topics: dict[str, set[int]] | None) -> None:
        self.topics = topics

    async def fetch_all_metadata(self) -> Any:
        if self.topics is None:
            raise KafkaError("Unable to get cluster metadata over all known brokers")
        return SimpleNamespace(partitions_for_topic=self.topics.get)


@pytest.mark.parametrize(
    ("topics", "present"),
    [({"ingest": {0, 1}}, True), ({"ingest": {1}}, False), ({}, False), (None, None)],
)
async def test_an_unknown_partition_is_looked_up_in_kafkas_metadata(
    topics: dict[str, set[int]] | None, present: bool | None
) -> None:
    unknown = UnknownPartitions()
    unknown.action(IN, 0.0)
    await groupcommit._read_presence(MetadataClient(topics), unknown)
    assert unknown.present.get(IN) is present
