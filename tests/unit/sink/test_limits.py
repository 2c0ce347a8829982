"""The largest record a topic takes, checked before the record reaches a producer."""

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from bridge.sink.limits import TopicLimits, record_size
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


def test_the_batch_size_is_the_configured_one_made_no_larger_than_any_learned_topic_takes() -> None:
    # A batch larger than a topic's max.message.bytes is refused whole, small records and all.
    limits = TopicLimits(1_048_576, 262_144)
    assert limits.batch_bytes() == 262_144
    limits.learn("events", 1_048_576)
    assert limits.batch_bytes() == 262_144
    limits.learn("calls", 100_000)
    assert limits.batch_bytes() == 100_000
    limits.learn("calls", 500_000)  # read again after an admin raised it
    assert limits.batch_bytes() == 262_144


def test_without_a_configured_batch_size_it_is_aiokafkas_default() -> None:
    assert TopicLimits(1_048_576).batch_bytes() == 16_384
