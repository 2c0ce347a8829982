"""The live view: one rich renderable from two snapshots and the last events. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import ConsoleRenderable, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bridge.demo.stats import Snapshot, quantile, rate


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _state(up: bool) -> Text:
    return Text("connected", style="bold green") if up else Text("down", style="bold red")


def render(
    now: Snapshot,
    before: Snapshot,
    recent: Sequence[Text],
    simulator: str,
    hint: str = "",
) -> Group:
    """Throughput by channel and topic, dedup and rejections, latency, connections, last events."""
    seconds = now.at - before.at
    received_rate = rate(now.received, before.received, seconds)
    published_rate = rate(now.published, before.published, seconds)

    flow = Table(title="events", expand=True)
    flow.add_column("")
    flow.add_column("total", justify="right")
    flow.add_column("per second", justify="right")
    for channel in sorted(now.received):
        flow.add_row(
            f"received via {channel}",
            f"{now.received[channel]:,.0f}",
            f"{received_rate[channel]:,.1f}",
        )
    ingested = sum(now.ingested.values())
    ingested_rate = sum(rate(now.ingested, before.ingested, seconds).values())
    flow.add_row("written to the ingest topic", f"{ingested:,.0f}", f"{ingested_rate:,.1f}")
    for topic in sorted(now.published):
        flow.add_row(
            f"published to {topic}", f"{now.published[topic]:,.0f}", f"{published_rate[topic]:,.1f}"
        )
    flow.add_row("duplicates removed (dedup stage)", f"{now.duplicates:,.0f}", "")
    flow.add_row("dropped (ephemeral, markers)", f"{now.dropped:,.0f}", "")
    flow.add_row("rejected", f"{now.rejected:,.0f}", "")
    flow.add_row("dead-lettered", f"{now.dead_lettered:,.0f}", "")

    health = Table(title="health", expand=True)
    health.add_column("")
    health.add_column("")
    health.add_row("Kafka", _state(now.kafka_connected))
    health.add_row("WebSocket feed", _state(now.websocket_connected))
    health.add_row("feed reconnects", f"{now.websocket_reconnects:,.0f}")
    window = (now.latency_buckets, before.latency_buckets)
    health.add_row("publish p50 (last 1 s)", _ms(quantile(0.5, *window)))
    health.add_row("publish p99 (last 1 s)", _ms(quantile(0.99, *window)))
    health.add_row("publish p99 (all)", _ms(quantile(0.99, now.latency_buckets)))
    e2e = (now.end_to_end_buckets, before.end_to_end_buckets)
    health.add_row("end-to-end p99 (last 1 s)", _ms(quantile(0.99, *e2e)))

    tables = Table.grid(expand=True)
    tables.add_column(ratio=3)
    tables.add_column(ratio=2)
    tables.add_row(flow, health)
    last = Text("\n").join(recent[-8:]) or Text("waiting for events...", style="dim")
    parts: list[ConsoleRenderable] = [
        tables,
        Panel(last, title="last events on Kafka", border_style="dim"),
        Text.from_markup(simulator),
    ]
    if hint:
        parts.append(Text.from_markup(hint))
    return Group(*parts)
