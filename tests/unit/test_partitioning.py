"""A record key's partition: the producers' partitioner is aiokafka's default, memoised."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from bridge.partitioning import partition_for


def test_partitioner_matches_aiokafkas_default() -> None:
    partitions = list(range(12))
    for n in range(500):
        key = f"CA_{n:016x}".encode()
        assert partition_for(key, partitions, partitions) == DefaultPartitioner()(
            key, partitions, partitions
        )
    assert partition_for(None, partitions, [3]) == 3
