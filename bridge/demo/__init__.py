"""The one-command demo: simulated Pinecall, the bridge, local Kafka, and a live view."""
