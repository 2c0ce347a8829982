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
