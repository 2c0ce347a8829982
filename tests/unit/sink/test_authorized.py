"""A topic's authorized operations (Metadata v8) read as whether this user may write it."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.sink import authorized
from bridge.sink.authorized import (
    NOT_ASKED,
    WRITE,
    _MetadataResponseV8,
    may_not_write,
    write_refused,
)

READ, DESCRIBE = 3, 8


def test_operations_without_write_are_refused_and_unknown_ones_are_not() -> None:
    assert may_not_write((1 << READ) | (1 << DESCRIBE))
    assert not may_not_write((1 << WRITE) | (1 << DESCRIBE))
    assert not may_not_write(NOT_ASKED), "a broker that did not say refuses nothing here"


class _Broker:
    """An AIOKafkaClient whose one broker answers Metadata up to `max_version` (class-wide)."""

    max_version = 12
    answer: object = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    async def bootstrap(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def get_random_node(self) -> int:
        return 0

    async def send(self, node_id: int, request: Any) -> object:
        request.prepare({3: (0, self.max_version)})  # aiokafka's choice of a version, as sent
        return self.answer


def answered(operations: int) -> _MetadataResponseV8:
    """A Metadata v8 answer describing topic `t` with `operations` authorized."""
    partition: tuple[object, ...] = (0, 0, 1, 0, [1], [1], [])
    return _MetadataResponseV8(
        0, [(1, "b", 9092, None)], "c", 1, [(0, "t", False, [partition], operations)], NOT_ASKED
    )


async def test_a_topic_described_but_not_writable_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(authorized, "AIOKafkaClient", _Broker)
    monkeypatch.setattr(_Broker, "answer", answered((1 << READ) | (1 << DESCRIBE)))
    assert await write_refused({}, "t")
    monkeypatch.setattr(_Broker, "answer", answered((1 << WRITE) | (1 << DESCRIBE)))
    assert not await write_refused({}, "t")


async def test_a_broker_without_metadata_v8_is_not_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Kafka before 2.3: aiokafka finds no version of the request the broker takes. The command
    # goes on (its deliveries say a refusal), not crash on the check meant to help it.
    monkeypatch.setattr(authorized, "AIOKafkaClient", _Broker)
    monkeypatch.setattr(_Broker, "max_version", 7)
    assert not await write_refused({}, "t")
