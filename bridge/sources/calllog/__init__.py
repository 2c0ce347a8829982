"""The call-log source: Pinecall's per-call event logs over Server-Sent Events, with backfill."""
