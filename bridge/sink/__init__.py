"""Sinks: where events go (Kafka)."""
