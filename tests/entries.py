"""Pinecall call-log entries (seq, ts, call, agent, type, ephemeral, data), built in one place."""

from __future__ import annotations

from typing import Any

FIELDS = ("seq", "ts", "call", "agent", "type", "ephemeral", "data")


def entry(
    seq: int,
    kind: str = "turn.user",
    *,
    call: str | None = "CA_1",
    agent: str = "support",
    ts: float | None = None,
    epoch: float | None = None,
    ephemeral: bool | None = None,
    data: Any = None,
    numbered_text: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A log entry: `ts` defaults to `epoch + seq` given `epoch`, else 1.0; `data` to `fields`, else
    {"text": f"{numbered_text} {seq}"}, else {"n": seq}; `ephemeral` to whether `kind` is log.*."""
    clash = fields.keys() & FIELDS
    if clash:
        # A data field named like an envelope key is nearly always a misspelt parameter.
        raise TypeError(f"pass {sorted(clash)} as parameters, not data fields")
    if data is None:
        if fields:
            data = fields
        elif numbered_text is not None:
            data = {"text": f"{numbered_text} {seq}"}
        else:
            data = {"n": seq}
    if ts is None:
        ts = 1.0 if epoch is None else epoch + seq
    return {
        "seq": seq,
        "ts": ts,
        "call": call,
        "agent": agent,
        "type": kind,
        "ephemeral": kind.startswith("log.") if ephemeral is None else ephemeral,
        "data": data,
    }
