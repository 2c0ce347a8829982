"""The benchmark's events: realistic Pinecall log entries with a global index for matching."""

from __future__ import annotations

from typing import Any

import orjson

EVENTS_PER_CALL = 20
# Calls in progress at once, their events interleaved as on a busy platform: consecutive events
# belong to different calls, so records spread over the partitions as real traffic does (events
# in call order would send every burst of 20 to one partition).
CONCURRENT_CALLS = 200
_TYPES = ("call.started", "message.received", "agent.thinking", "message.sent")
_TEXT = "I'd like to move my appointment to Friday morning if that is possible"


def call_and_seq(index: int) -> tuple[int, int]:
    """Event `index` → (call number, seq): blocks of CONCURRENT_CALLS calls, interleaved."""
    block, offset = divmod(index, EVENTS_PER_CALL * CONCURRENT_CALLS)
    return block * CONCURRENT_CALLS + offset % CONCURRENT_CALLS, offset // CONCURRENT_CALLS + 1


def call_id(salt: int, index: int) -> str:
    """`CA_<16 hex>`: the run's salt and the call number, so every run's ids are fresh."""
    number, _ = call_and_seq(index)
    return f"CA_{salt & 0xFFFFFFFF:08x}{number & 0xFFFFFFFF:08x}"


def entry(salt: int, index: int, at: float | None = None) -> dict[str, Any]:
    """Event `index` as the platform's log entry; `data.bench` carries the index through.

    `at` is its time (epoch seconds); a fixed one of 2026 without it.
    """
    _, seq = call_and_seq(index)
    kind = "call.ended" if seq == EVENTS_PER_CALL else _TYPES[(seq - 1) % len(_TYPES)]
    return {
        "seq": seq,
        "ts": 1_790_000_000.0 + index / 1000 if at is None else at,
        "call": call_id(salt, index),
        "agent": "support",
        "type": kind,
        "ephemeral": False,
        "data": {"text": _TEXT, "bench": index},
    }


def body(salt: int, first: int, count: int, at: float) -> bytes:
    """A webhook body: one entry, or a JSON array of `count` entries, of time `at`.

    A current time: the bridge refuses a signed body whose time is minutes off as a replay.
    """
    if count == 1:
        return orjson.dumps(entry(salt, first, at))
    return orjson.dumps([entry(salt, first + k, at) for k in range(count)])


def cloudevent_line(salt: int, index: int) -> bytes:
    """`key<TAB>value` as the bridge would publish it, for kcat's producer baseline."""
    e = entry(salt, index)
    ce = {
        "specversion": "1.0",
        "id": f"{e['call']}:{e['seq']}",
        "source": "https://api.pinecall.io",
        "type": e["type"],
        "time": "2026-09-21T13:46:40.000Z",
        "datacontenttype": "application/json",
        "subject": e["call"],
        "pinecallseq": e["seq"],
        "pinecallagent": e["agent"],
        "pinecallchannel": "webhook",
        "pinecallreceivedat": "2026-09-21T13:46:40.000Z",
        "data": e["data"],
    }
    key: str = e["call"]
    return key.encode() + b"\t" + orjson.dumps(ce) + b"\n"


def bench_index(value: bytes) -> int | None:
    """The event index a consumed record carries (CloudEvent or raw entry), None if foreign."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    index = data.get("bench") if isinstance(data, dict) else None
    return index if isinstance(index, int) else None
