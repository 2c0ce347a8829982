"""Dedup: the Kafka-transactional stage that writes each event id once per TTL."""

from bridge.dedup.window import SeenWindow, digest

__all__ = ["SeenWindow", "digest"]
