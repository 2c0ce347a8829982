"""The ingest stage's record format: what every replica writes and the dedup stage reads. Pure."""

from bridge.ingest.record import IngestEntry, decode, encode, event_id_of, ingest_key

__all__ = ["IngestEntry", "decode", "encode", "event_id_of", "ingest_key"]
