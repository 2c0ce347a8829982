"""How large a record each topic takes. Pure.

A record is checked before it reaches a producer, against the smallest of the producers'
max_request_size, the topic's max.message.bytes and what the brokers' socket.request.max.bytes
leaves of a produce request. A record the broker refuses for its size
would not only fail: it leaves the idempotent producer's sequence with a gap, and every later
record of that partition then fails with OutOfOrderSequenceNumber. So it must never be sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bridge.sink.record import Record

# Kafka's own default for max_request_size and, all but its batch header, message.max.bytes.
KAFKA_DEFAULT_MAX_REQUEST_BYTES = 1_048_576
AIOKAFKA_DEFAULT_MAX_BATCH_BYTES = 16_384
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
CLEANUP_POLICY = "cleanup.policy"
SOCKET_REQUEST_MAX_BYTES = "socket.request.max.bytes"
# A produce request around its one batch, at most: the headers, a client and transactional id,
# a topic name (249 characters at most). A broker closes the connection on a larger request,
# unanswered: the client retries it for ever, and the records behind it wait.
PRODUCE_REQUEST_OVERHEAD_BYTES = 1024


def compacts(cleanup_policy: str) -> bool:
    """A topic of this cleanup.policy (`compact`, `compact,delete`) compacts."""
    return "compact" in cleanup_policy


def record_size(record: Record) -> int:
    """The record's size as Kafka counts it against the limits: alone in a batch (v2 format)."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, list(record.headers)
    )
    return size


def too_large(exc: BaseException) -> bool:
    """Kafka refused the record for its size: it will be refused again, whatever the retry."""
    return isinstance(exc, _TOO_LARGE)


class TopicLimits:
    """The largest record per topic; topics not learned yet take the producers' limit."""

    def __init__(
        self, max_request_bytes: int, max_batch_bytes: int = AIOKAFKA_DEFAULT_MAX_BATCH_BYTES
    ) -> None:
        self._configured = self.default = max_request_bytes
        self._batch = max_batch_bytes
        self._topics: dict[str, int] = {}
        self._stale: set[str] = set()
        # The least of the brokers' socket.request.max.bytes, once read: the producers' requests
        # are kept within it (bridge/sink/drain.py), as each record's is by `default`.
        self.request_bytes: int | None = None
        # Topics that compact: the broker refuses every record without a key to them (aiokafka
        # reads its INVALID_RECORD as UnknownError), in a transaction at every retry.
        self._compacting: set[str] = set()

    def learn(self, topic: str, max_message_bytes: int) -> None:
        """The topic's max.message.bytes, as the cluster reports it."""
        self._topics[topic] = max_message_bytes

    def learn_request_limit(self, socket_request_max_bytes: int) -> bool:
        """The least of the brokers' socket.request.max.bytes: the producers' limit is made to
        fit one record's request in it. True when that lowers the configured limit."""
        self.request_bytes = socket_request_max_bytes
        fits = max(socket_request_max_bytes - PRODUCE_REQUEST_OVERHEAD_BYTES, 1)
        self.default = min(self._configured, fits)
        return self.default < self._configured

    def learn_cleanup(self, topic: str, cleanup_policy: str) -> None:
        """The topic's cleanup.policy, as the cluster reports it."""
        if compacts(cleanup_policy):
            self._compacting.add(topic)
        else:
            self._compacting.discard(topic)

    def takes_keyless(self, topic: str) -> bool:
        """Whether the topic takes a record without a key: not once it compacts."""
        return topic not in self._compacting

    def mark_stale(self, topic: str) -> None:
        """The broker refused a record of the topic for its size: its limit must be read again.

        Not guessed from the record: a whole batch is refused with it, small records included.
        """
        self._stale.add(topic)

    def take_stale(self) -> list[str]:
        stale, self._stale = sorted(self._stale), set()
        return stale

    def limit(self, topic: str) -> int:
        return min(self._topics.get(topic, self.default), self.default)

    def batch_bytes(self, topics: Iterable[str]) -> int:
        """The batch size for a producer of `topics`: the configured one, made no larger than any
        of them takes (the broker refuses a larger batch whole, small records and all)."""
        return min(self._batch, self.default, *(self.limit(topic) for topic in topics))

    def check(self, record: Record) -> None:
        """Raise MessageSizeTooLargeError (as aiokafka would) when the record cannot be taken."""
        size, limit = record_size(record), self.limit(record.topic)
        if size > limit:
            raise MessageSizeTooLargeError(
                f"a record of {size} bytes for {record.topic}, whose limit is {limit} bytes"
            )
