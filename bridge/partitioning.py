"""A record key's partition, as aiokafka's (and Java's) default partitioner picks it. Pure.

Only an unkeyed record's partition is a random choice.
"""

from __future__ import annotations

import functools
import random

from aiokafka.partitioner import murmur2


def key_hash(key: bytes) -> int:
    """The positive murmur2 of a record key: its partition is this modulo the partition count."""
    return int(murmur2(key)) & 0x7FFFFFFF


_key_hash = functools.lru_cache(maxsize=65_536)(key_hash)


def partition_for(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's (and Java's) default partitioner, with each key's murmur2 computed once.

    A call's events all share its key, and aiokafka's murmur2 is pure Python.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[_key_hash(key) % len(all_partitions)]


__all__ = ["key_hash", "partition_for"]
