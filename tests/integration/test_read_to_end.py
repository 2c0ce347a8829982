"""tests.integration.conftest's final read: it ends at the topics' end, or fails; never short."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from tests.integration.conftest import (
    Topics,
    create_topic,
    delete_ingest,
    ingest_records,
    read_to_end,
    write_ingest,
)


async def test_a_fetch_out_of_range_fails_the_read_instead_of_ending_it(
    kafka_bootstrap: str, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's position is out of range where it fetches (records gone from under it): with
    aiokafka's default reset ("latest") the read jumped to the end and returned, none read."""
    await create_topic(kafka_bootstrap, topics.ingest, 1)
    await write_ingest(kafka_bootstrap, ingest_records(topics, "CA_range", range(1, 11)))
    await delete_ingest(kafka_bootstrap, topics, keep=5)

    async def from_zero(consumer: AIOKafkaConsumer, *partitions: TopicPartition) -> None:
        for tp in partitions:
            consumer.seek(tp, 0)  # a position the broker no longer holds

    monkeypatch.setattr(AIOKafkaConsumer, "seek_to_beginning", from_zero)
    with pytest.raises(OffsetOutOfRangeError):
        await read_to_end(kafka_bootstrap, [topics.ingest], committed=False, checked=False)
