"""The readable end-of-run summary of the simulator's counters. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def render(
    counters: Mapping[str, int], *, seed: int | None = None, ledger: Path | None = None
) -> str:
    c = counters
    lines = [
        f"events generated   {c['events_generated']} "
        f"({c['events_durable']} durable, {c['events_ephemeral']} ephemeral), "
        f"{c['alerts_generated']} alerts",
        f"webhook deliveries {c['deliveries_ok']} ok, {c['deliveries_failed']} failed, "
        f"{c['deliveries_rejected']} rejected (4xx), {c['deliveries_cancelled']} cancelled; "
        f"{c['deliveries_retried']} retried, {c['delivery_attempts']} attempts, "
        f"{c['duplicate_deliveries']} duplicates",
        f"websocket          {c['connections_total']} connections, {c['frames_sent']} event frames "
        f"({c['duplicate_frames']} duplicates), {c['garbage_frames_sent']} garbage, "
        f"{c['drops']} dropped, {c['auth_closes']} closed 4001",
        f"call logs (sse)    {c['sse_connections_total']} streams, "
        f"{c['sse_entries_streamed']} entries streamed, {c['sse_gaps']} gaps, "
        f"{c['log_pages_served']} pages, {c['feed_entries_sent']} org-feed entries; faults: "
        f"{c['sse_cuts']} cut, {c['sse_silenced']} silenced, {c['sse_errors_injected']} 5xx, "
        f"{c['sse_auth_refused']} 401, {c['log_pages_broken']} broken pages",
        f"auth               {c['token_requests']} token requests, "
        f"{c['unauthorized']} unauthorized",
    ]
    if seed is not None:
        lines.append(f"seed               {seed}")
    if ledger is not None:
        lines.append(f"ledger             {ledger}")
    return "\n".join(lines)
