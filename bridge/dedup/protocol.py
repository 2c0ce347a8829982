"""Building blocks for the flexible Kafka messages aiokafka lacks (committed.py, groupcommit.py)."""

from __future__ import annotations

from typing import Any

from aiokafka.protocol.types import CompactArray, CompactString, TaggedFields


def topics_field(*partition_fields: tuple[str, Any]) -> tuple[str, CompactArray]:
    """A flexible message's `topics`: each topic's name and partitions with these fields."""
    return (
        "topics",
        CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(*partition_fields, ("tags", TaggedFields))),
            ("tags", TaggedFields),
        ),
    )
