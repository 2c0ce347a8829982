"""How far each call's log got into an ingest partition, read from record headers only. Pure.

The dedup stage's restore replays a partition's last TTL; observing the same records here gives
the call-log source, on taking the partition over, each call's highest seq and whether its last
entry (`call.score`) is in. Only records read from the call's own log count (channel `sse`, which a
backfill uses too): the feed and webhooks may carry a later seq while missing one before it, and
resuming after their seq would never read that one. It may fall short (records appended after the
restore's end, entries older than the TTL): the follower then re-reads a little, and the dedup
stage drops the copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.ingest.record import CHANNEL
from bridge.normalise.binding import CE_PREFIX, TYPE_HEADER

TERMINAL_TYPE = "call.score"
_CE_TYPE = CE_PREFIX + "type"
_TERMINAL = TERMINAL_TYPE.encode()
_CALL_LOG = b"sse"


@dataclass(slots=True)
class CallProgress:
    """A call's highest seq seen in the partition, and whether its terminal entry was."""

    seq: int
    ended: bool = False


def call_and_seq(event_id: str) -> tuple[str, int] | None:
    """`<call>:<seq>` → (call, seq); None for agent logs (`@agent:seq`) and content ids."""
    call, sep, seq = event_id.rpartition(":")
    if not sep or not call or call[0] == "@" or not seq.isdigit() or not seq.isascii():
        return None
    if call in ("sha256", "dlq"):
        return None
    return call, int(seq)


def is_terminal(headers: Sequence[tuple[str, bytes]]) -> bool:
    """The record carries the log's last entry: `pinecall-type` (or binary mode's `ce_type`)."""
    for name, raw in headers:
        if name in (TYPE_HEADER, _CE_TYPE):
            return raw == _TERMINAL
    return False


def from_call_log(headers: Sequence[tuple[str, bytes]]) -> bool:
    """The record was read from the call's own log (`pinecall-ingest-channel: sse`)."""
    for name, raw in headers:
        if name == CHANNEL:
            return raw == _CALL_LOG
    return False


class PartitionProgress:
    """Per call, from the records observed in append order; bounded by the calls in the TTL."""

    def __init__(self) -> None:
        self.calls: dict[str, CallProgress] = {}

    def observe(self, event_id: str, headers: Sequence[tuple[str, bytes]]) -> None:
        parsed = call_and_seq(event_id)
        if parsed is None or not from_call_log(headers):
            return
        call, seq = parsed
        known = self.calls.get(call)
        if known is None:
            self.calls[call] = CallProgress(seq, is_terminal(headers))
            return
        if seq > known.seq:
            known.seq = seq
        if not known.ended and is_terminal(headers):
            known.ended = True

    def live(self) -> dict[str, int]:
        """Calls whose end is not in the partition, with the seq to resume after."""
        return {call: p.seq for call, p in self.calls.items() if not p.ended}

    def ended(self) -> set[str]:
        return {call for call, p in self.calls.items() if p.ended}
