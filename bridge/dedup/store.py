"""The dedup interface the pipeline uses, and its in-process implementation.

The interface is async so a store shared across replicas (a later issue) can do I/O behind it.
"""

from __future__ import annotations

from typing import Protocol

from bridge.dedup.window import DedupWindow


class DedupStore(Protocol):
    """Ids whose events Kafka has acknowledged."""

    async def seen(self, event_id: str) -> bool: ...

    async def remember(self, event_id: str) -> None: ...

    def size(self) -> int: ...


class MemoryDedupStore:
    """This process's window: exact within ttl and max_entries, forgotten on restart."""

    def __init__(self, window: DedupWindow) -> None:
        self._window = window

    async def seen(self, event_id: str) -> bool:
        return event_id in self._window

    async def remember(self, event_id: str) -> None:
        self._window.add(event_id)

    def size(self) -> int:
        return len(self._window)
