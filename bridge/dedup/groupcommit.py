"""Transactional offset commits that carry the consumer group's generation (KIP-447).

aiokafka sends TxnOffsetCommit v0, which names the group but no member: the group coordinator
accepts it from any producer, so each partition needs a producer (a transactional id) of its
own to fence the zombie that still works on it. TxnOffsetCommit v3 (Kafka 2.5+) carries the
member id and generation, and the coordinator refuses a commit from a stale generation
(ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID): one producer per process suffices.

v3 is defined here with aiokafka's protocol types and sent by aiokafka's own sender, in the
place of its v0 request. That takes aiokafka privates, all of them in this module, checked
against aiokafka 0.14.0:

- ``AIOKafkaProducer._sender``: ``Sender._do_txn_offset_commit(offsets, group_id)``, replaced on
  the one producer instance, and ``Sender._find_coordinator``, ``._coordinator_dead``,
  ``._txn_manager``, ``.client``, ``._retry_backoff``;
- ``aiokafka.producer.sender.TxnOffsetCommitHandler``, subclassed for its ``do()`` (send, retry
  on connection errors);
- ``TransactionManager.error_transaction``, ``.offset_committed``, ``._txn_partitions`` and
  ``._txn_consumer_group``.

A refused commit makes the transaction abortable, as in Kafka's Java producer. aiokafka's
``error_transaction`` forgets which partitions the broker's transaction holds, and its abort
then sends no EndTxn: the records stayed in an open transaction, to be committed by the next
one. The handler keeps that list, so that ``abort_transaction()`` ends the transaction.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalOperation,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.producer.sender import TxnOffsetCommitHandler
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from bridge.dedup.protocol import topics_field
from bridge.groups import GroupMetadata

log = logging.getLogger(__name__)

API_KEY = 28
NONE = 0
ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID = 22, 25, 82
# The coordinator refused this member: its generation is over (the Java producer's
# CommitFailedException, or FencedInstanceIdException for a static member).
FENCED_MEMBER = frozenset({ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID})
RELOOKUP = frozenset({7, 15, 16})  # REQUEST_TIMED_OUT, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR
RETRY = frozenset({14})  # COORDINATOR_LOAD_IN_PROGRESS
# The group coordinator's metadata does not hold the partition: it lags (partitions just added,
# a topic re-created), or the topic is deleted. Java's producer retries it until the transaction
# ends. Left out of a commit whose records are kept, a live partition's next owner restores up to
# the older offset and outputs again what this transaction did: retried while Kafka's metadata
# holds the partition, for at most UNKNOWN_PARTITION_RETRY_SECONDS, then the transaction aborts.
# A deleted topic's offset is left out, the rest committed: retried until a topic of that name
# exists again, it would land on the new one (Kafka checks the name only), marked as the
# bridge's own, and the next owner would skip the new records below it.
UNKNOWN_TOPIC_OR_PARTITION = 3
# Below the stage's end_transaction_timeout_seconds (5 s by default), which bounds the commit.
UNKNOWN_PARTITION_RETRY_SECONDS = 2.0
PRODUCER_FENCED = frozenset({47, 90})  # INVALID_PRODUCER_EPOCH, PRODUCER_FENCED
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
GROUP_AUTHORIZATION_FAILED = 30
NO_LEADER_EPOCH = -1
_CODE_NAMES = {
    ILLEGAL_GENERATION: "ILLEGAL_GENERATION",
    UNKNOWN_MEMBER_ID: "UNKNOWN_MEMBER_ID",
    FENCED_INSTANCE_ID: "FENCED_INSTANCE_ID",
}
_warned: set[str] = set()


class GroupCommitFailedError(KafkaError):  # type: ignore[misc]
    """The group coordinator refused the offsets: this member's generation is stale (fenced)."""

    def __init__(self, code: int, metadata: GroupMetadata) -> None:
        name = _CODE_NAMES.get(code, str(code))
        super().__init__(
            f"{name}: group {metadata.group_id!r} refused the offsets of member "
            f"{metadata.member_id!r} (generation {metadata.generation_id})"
        )
        self.code = code
        self.metadata = metadata


class CommitCutError(KafkaError):  # type: ignore[misc]
    """The commit's caller was cut (its step's deadline, the stop's grace period) before the
    sender sent its offsets: they are not sent, and the transaction is aborted."""

    def __init__(self, group_id: str) -> None:
        super().__init__(
            f"the commit of group {group_id!r} was cut before its offsets were sent;"
            " its transaction is aborted"
        )


class TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        topics_field(("partition_index", Int32), ("error_code", Int16)),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = API_KEY
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        # Nullable: aiokafka's CompactString encodes None as the null string (length 0).
        ("group_instance_id", CompactString("utf-8")),
        topics_field(
            ("partition_index", Int32),
            ("committed_offset", Int64),
            ("committed_leader_epoch", Int32),
            ("committed_metadata", CompactString("utf-8")),
        ),
        ("tags", TaggedFields),
    )


Partitions = list[tuple[int, int, int, str | None, dict[int, bytes]]]


class GroupTxnOffsetCommit(Request[TxnOffsetCommitRequestV3]):  # type: ignore[misc]
    """TxnOffsetCommit v3 only: older versions cannot name the member, so are never sent."""

    API_KEY = API_KEY

    def __init__(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        metadata: GroupMetadata,
        offsets: dict[TopicPartition, tuple[int, str | None]],
    ) -> None:
        self._head = (transactional_id, metadata.group_id, producer_id, producer_epoch)
        self._member = (metadata.generation_id, metadata.member_id, metadata.group_instance_id)
        self._offsets = offsets

    def build(self, request_struct_class: type[TxnOffsetCommitRequestV3]) -> Any:
        by_topic: dict[str, Partitions] = collections.defaultdict(list)
        for tp, (offset, text) in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, offset, NO_LEADER_EPOCH, text, {}))
        topics: list[tuple[str, Partitions, dict[int, bytes]]] = [
            (name, partitions, {}) for name, partitions in by_topic.items()
        ]
        return request_struct_class(*self._head, *self._member, topics, {})


def partition_errors(response: Any) -> list[tuple[TopicPartition, int]]:
    """Each partition of a TxnOffsetCommit v3 response with its error code, in response order."""
    return [
        (TopicPartition(name, partition), code)
        for name, partitions, _tags in response.topics
        for partition, code, _ptags in partitions
    ]


UnknownAction = Literal["retry", "leave_out", "abort"]


def unknown_partition_action(waited: float, present: bool | None) -> UnknownAction:
    """What to do with a partition the group coordinator answered UNKNOWN_TOPIC_OR_PARTITION for,
    `waited` s after its first such answer; `present`: Kafka's metadata holds it (None: unread).

    Pure. Only a partition Kafka's metadata lacks (a deleted topic) is left out: a live one
    left out has its records output again by its next owner.
    """
    if present is False:
        return "leave_out"
    if waited < UNKNOWN_PARTITION_RETRY_SECONDS:
        return "retry"
    return "abort"


@dataclass
class UnknownPartitions:
    """One commit's partitions answered UNKNOWN_TOPIC_OR_PARTITION, across its retries."""

    since: dict[TopicPartition, float] = field(default_factory=dict)  # first answer, monotonic
    present: dict[TopicPartition, bool] = field(default_factory=dict)  # per Kafka's metadata
    left_out: set[TopicPartition] = field(default_factory=set)

    def action(self, tp: TopicPartition, now: float) -> UnknownAction:
        """Note an UNKNOWN_TOPIC_OR_PARTITION answer for `tp` at `now`, and decide."""
        since = self.since.setdefault(tp, now)
        return unknown_partition_action(now - since, self.present.get(tp))

    def unread(self) -> list[TopicPartition]:
        """Answered unknown, still pending, and not yet looked up in Kafka's metadata."""
        return [tp for tp in self.since if tp not in self.present and tp not in self.left_out]

    def read(self, tp: TopicPartition, partitions: set[int] | None) -> None:
        """Kafka's metadata of `tp`'s topic: its partitions, None when it has no such topic."""
        self.present[tp] = partitions is not None and tp.partition in partitions


class GroupCommitHandler(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's TxnOffsetCommit handler, sending v3 with the member's generation."""

    def __init__(
        self,
        sender: Any,
        offsets: dict[TopicPartition, Any],
        meta: GroupMetadata,
        unknown: UnknownPartitions | None = None,
    ) -> None:
        super().__init__(sender, offsets, meta.group_id)
        self._meta = meta
        self._unknown = unknown if unknown is not None else UnknownPartitions()

    def create_request(self) -> GroupTxnOffsetCommit:
        txn = self._sender._txn_manager
        offsets = {tp: (o.offset, o.metadata) for tp, o in self._offsets.items()}
        return GroupTxnOffsetCommit(
            txn.transactional_id, txn.producer_id, txn.producer_epoch, self._meta, offsets
        )

    def handle_response(self, resp: Any) -> float | None:
        """None when done (committed, or the transaction made abortable), else a retry backoff.

        Mirrors Kafka's Java TransactionManager.TxnOffsetCommitHandler. Raising here ends
        aiokafka's sender task, the producer's fatal error: for a fenced producer, and for any
        code Java's handler names not (it ends its producer too; the stage replaces ours).
        """
        txn = self._sender._txn_manager
        retry: float | None = None
        for tp, code in partition_errors(resp):
            if code == NONE:
                txn.offset_committed(tp, self._offsets[tp].offset, self._group_id)
            elif code in FENCED_MEMBER:
                abort_transaction_with(txn, GroupCommitFailedError(code, self._meta))
                return None
            elif code == GROUP_AUTHORIZATION_FAILED:
                abort_transaction_with(txn, GroupAuthorizationFailedError(self._group_id))
                return None
            elif code == UNKNOWN_TOPIC_OR_PARTITION:
                offset = self._offsets[tp].offset
                action = self._unknown.action(tp, time.monotonic())
                extra = {"topic": tp.topic, "partition": tp.partition, "offset": offset}
                if action == "retry":
                    # After the other partitions' answers: those committed are not sent again.
                    retry = float(self._default_backoff)
                elif action == "abort":
                    log.warning(
                        "the group coordinator still knows no partition Kafka's metadata holds;"
                        " the transaction is aborted, its partitions restart",
                        extra=extra,
                    )
                    abort_transaction_with(txn, UnknownTopicOrPartitionError())
                    return None
                else:
                    # Not committed; the rest of the transaction is. Taken off the offsets
                    # waiting to be committed, as a committed one is, so that the commit goes on.
                    txn.offset_committed(tp, offset, self._group_id)
                    self._unknown.left_out.add(tp)
                    log.warning(
                        "an offset was left out of the transaction: Kafka knows no such"
                        " partition (its topic deleted?)",
                        extra=extra,
                    )
            elif code in RELOOKUP:
                self._sender._coordinator_dead(CoordinationType.GROUP)
                return float(self._default_backoff)
            elif code in RETRY:
                return float(self._default_backoff)
            elif code in PRODUCER_FENCED:
                raise ProducerFenced()
            elif code == TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                raise TransactionalIdAuthorizationFailed(txn.transactional_id)
            else:
                log.error("transactional offset commit failed", extra={"error_code": code})
                raise for_code(code)()
        return retry


def abort_transaction_with(txn: Any, error: Exception) -> None:
    """Make the transaction abortable with `error`, keeping what the broker's transaction holds.

    aiokafka's error_transaction clears the added partitions and group, and its abort, seeing an
    empty transaction, would then end nothing (no EndTxn): put them back.
    """
    partitions = set(getattr(txn, "_txn_partitions", ()))
    group = getattr(txn, "_txn_consumer_group", None)
    txn.error_transaction(error)
    if hasattr(txn, "_txn_partitions"):
        txn._txn_partitions.update(partitions)
        txn._txn_consumer_group = group
    else:
        _warn_once("transaction", "aiokafka's TransactionManager has no _txn_partitions")


class GroupCommitProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A transactional producer whose consumed offsets carry the group's generation (KIP-447)."""

    def __init__(self, **configs: Any) -> None:
        super().__init__(**configs)
        self._group: GroupMetadata | None = None
        self._unknown = UnknownPartitions()
        # One commit queued at a time, so the sender reads the metadata it was queued with.
        self._group_lock = asyncio.Lock()
        sender = self._sender
        if not hasattr(sender, "_do_txn_offset_commit"):
            raise TypeError("this aiokafka has no Sender._do_txn_offset_commit to replace")
        sender._do_txn_offset_commit = self._txn_offset_commit

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        """Refused: offsets without the member's generation would defeat the fencing."""
        raise IllegalOperation("GroupCommitProducer sends offsets with send_offsets_with_group")

    async def send_offsets_with_group(
        self, offsets: Mapping[TopicPartition, int | tuple[int, str]], metadata: GroupMetadata
    ) -> frozenset[TopicPartition]:
        """Like send_offsets_to_transaction (offsets, or offsets with their metadata strings), but
        sent as TxnOffsetCommit v3 with the group's `metadata`.

        Returns the partitions left out, unknown to Kafka (their topic deleted).
        """
        async with self._group_lock:
            self._group = metadata
            self._unknown = UnknownPartitions()
            try:
                await super().send_offsets_to_transaction(offsets, metadata.group_id)
                return frozenset(self._unknown.left_out)
            except asyncio.CancelledError:
                self._outcomes_unawaited()
                raise
            finally:
                self._group = None

    def _outcomes_unawaited(self) -> None:
        """Cut: read the queued offsets' and the transaction's outcomes when they come.

        Nobody awaits them now (aiokafka's shield, cancelled, stops reading the queued ones), and
        asyncio logged their failure at ERROR ("Future exception was never retrieved") when the
        producer was collected. The cut is the caller's to tell, and cut_short's.
        """
        txn = self._txn_manager
        for _, _, queued in getattr(txn, "_pending_txn_offsets", ()):
            queued.add_done_callback(_read_failure)
        txn.wait_for_transaction_end().add_done_callback(_read_failure)

    async def _txn_offset_commit(self, offsets: dict[TopicPartition, Any], group_id: str) -> None:
        """The sender's step for queued offsets (in its task): aiokafka's, with our handler."""
        if not offsets:
            return
        sender, meta = self._sender, self._group
        if meta is None or meta.group_id != group_id:
            # The caller of send_offsets_with_group was cut (its step's deadline, the end of the
            # stop's grace period) while the offsets were still queued: an AddOffsetsToTxn or a
            # retried TxnOffsetCommit came after. Nobody will commit this transaction.
            cut_short(sender._txn_manager, group_id)
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as exc:
            abort_transaction_with(sender._txn_manager, exc)
            return
        unknown = self._unknown
        await GroupCommitHandler(sender, offsets, meta, unknown).do(node_id)
        if unknown.unread():
            await _read_presence(sender.client, unknown)


async def _read_presence(client: Any, unknown: UnknownPartitions) -> None:
    """Look the partitions answered unknown up in Kafka's metadata (all topics: a request naming
    a deleted topic could create it again where brokers auto-create topics)."""
    try:
        cluster = await client.fetch_all_metadata()
    except KafkaError as exc:  # unread: retried within the bound, then aborted
        log.warning("Kafka's metadata could not be read", extra={"error": repr(exc)})
        return
    for tp in unknown.unread():
        unknown.read(tp, cluster.partitions_for_topic(tp.topic))


def cut_short(txn: Any, group_id: str) -> None:
    """Abort the transaction of a commit whose caller is gone (its outcomes read by
    _outcomes_unawaited), and say so."""
    log.warning(
        "a dedup commit was cut before its offsets were sent (its step's deadline, or the stop's"
        " grace period, ran out); its transaction is aborted, its records left to the"
        " partitions' next owner",
        extra={"group": group_id},
    )
    abort_transaction_with(txn, CommitCutError(group_id))


def _read_failure(outcome: asyncio.Future[Any]) -> None:
    if not outcome.cancelled():
        outcome.exception()


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(message, extra={"aiokafka_private": what})
