"""Dedup: which event ids Kafka already holds."""

from bridge.dedup.store import DedupStore, MemoryDedupStore
from bridge.dedup.window import DedupWindow

__all__ = ["DedupStore", "DedupWindow", "MemoryDedupStore"]
