"""The largest record a topic takes, checked before the record reaches a producer."""

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from bridge.sink.limits import PRODUCE_REQUEST_OVERHEAD_BYTES, TopicLimits, record_size
from bridge.sink.record import Record


def test_the_size_check_is_kafkas_own_estimate() -> None:
    record = Record("t", b"key", b"v" * 100, (("h", b"x"),))
    limits = TopicLimits(1_048_576)
    limits.learn("t", record_size(record))
    limits.check(record)  # exactly at the limit: taken
    limits.learn("t", record_size(record) - 1)
    with pytest.raises(MessageSizeTooLargeError):
        limits.check(record)
    assert limits.limit("other") == 1_048_576


def test_the_batch_size_is_the_configured_one_made_no_larger_than_its_topics_take() -> None:
    # A batch larger than a topic's max.message.bytes is refused whole, small records and all.
    limits = TopicLimits(1_048_576, 262_144)
    assert limits.batch_bytes(["events"]) == 262_144
    limits.learn("events", 1_048_576)
    assert limits.batch_bytes(["events"]) == 262_144
    limits.learn("calls", 100_000)
    assert limits.batch_bytes(["events", "calls"]) == 100_000
    limits.learn("calls", 500_000)  # read again after an admin raised it
    assert limits.batch_bytes(["events", "calls"]) == 262_144


def test_a_topic_the_producer_does_not_write_leaves_its_batches_alone() -> None:
    # The dedup stage never writes the ingest topic: its limit must not shrink the stage's batches.
    limits = TopicLimits(1_048_576, 262_144)
    limits.learn("ingest", 100_000)
    limits.learn("events", 200_000)
    assert limits.batch_bytes(["events", "alerts"]) == 200_000
    assert limits.batch_bytes(["ingest"]) == 100_000


def test_an_unlearned_topic_takes_the_producers_limit() -> None:
    assert TopicLimits(500_000, 1_000_000).batch_bytes(["unread"]) == 500_000


def test_without_a_configured_batch_size_it_is_aiokafkas_default() -> None:
    assert TopicLimits(1_048_576).batch_bytes([]) == 16_384


@pytest.mark.parametrize(
    ("policy", "keyless"), [("compact", False), ("compact,delete", False), ("delete", True)]
)
def test_a_topic_that_compacts_takes_no_keyless_record(policy: str, keyless: bool) -> None:
    limits = TopicLimits(1_000_000)
    assert limits.takes_keyless("dlq")  # not learned yet: as Kafka's default, delete
    limits.learn_cleanup("dlq", policy)
    assert limits.takes_keyless("dlq") is keyless
    # An admin's change back, read by a later check.
    limits.learn_cleanup("dlq", "delete")
    assert limits.takes_keyless("dlq")


def test_the_brokers_request_limit_caps_every_topics_and_the_batches() -> None:
    # A larger request is closed unanswered by the broker: each record's must fit in it.
    limits = TopicLimits(1_048_576, 262_144)
    limits.learn("events", 1_048_576)
    limits.learn("calls", 100_000)
    assert limits.learn_request_limit(300_000)
    cap = 300_000 - PRODUCE_REQUEST_OVERHEAD_BYTES
    assert (limits.default, limits.limit("events"), limits.limit("unread")) == (cap, cap, cap)
    assert limits.limit("calls") == 100_000
    # Kept whole for the producers' requests of many batches (bridge/sink/drain.py).
    assert (TopicLimits(1_048_576).request_bytes, limits.request_bytes) == (None, 300_000)
    assert TopicLimits(1_048_576, 500_000).batch_bytes([]) == 500_000
    lowered = TopicLimits(1_048_576, 500_000)
    lowered.learn_request_limit(300_000)
    assert lowered.batch_bytes([]) == cap
    # Kafka's default (100 MiB) is above any configured limit: nothing changes.
    assert not limits.learn_request_limit(104_857_600)
    assert (limits.default, limits.limit("events")) == (1_048_576, 1_048_576)
