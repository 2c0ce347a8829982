"""pinecall-bridge: Pinecall webhooks and WebSocket events → CloudEvents → Kafka, deduplicated."""

__version__ = "0.1.0"
