"""A Kafka record as the bridge writes it. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
