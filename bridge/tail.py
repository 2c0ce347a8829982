"""`pinecall-bridge tail`: what a downstream team sees on the bridge's topics, pretty-printed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from aiokafka import AIOKafkaConsumer
from rich.console import Console

from bridge import jsoncodec
from bridge.config import Settings
from bridge.normalise.binding import decode
from bridge.sink.kafka import client_options


@dataclass(frozen=True, slots=True)
class TailFilter:
    type_glob: str = "*"
    call: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if not fnmatchcase(str(event.get("type", "")), self.type_glob):
            return False
        return self.call is None or event.get("subject") == self.call


def render(topic: str, key: bytes | None, event: Any) -> str:
    """One line per record: time, topic, type, call, id, then the data.

    `event` is the record's CloudEvent in either mode (`binding.decode`), else its raw value.
    """
    if not isinstance(event, dict):
        return f"[red]{topic}[/] [dim]not a CloudEvent:[/] {str(event)[:200]}"
    data = jsoncodec.dumps(event.get("data")).decode()
    if len(data) > 160:
        data = data[:157] + "..."
    subject = event.get("subject") or (key.decode(errors="replace") if key else "-")
    channel = event.get("pinecallchannel", "?")
    return (
        f"[dim]{event.get('time', '?')}[/] [cyan]{topic}[/] [bold]{event.get('type', '?')}[/] "
        f"[green]{subject}[/] [dim]{event.get('id', '?')} via {channel}[/] {data}"
    )


async def tail(
    settings: Settings,
    topics: list[str],
    wanted: TailFilter,
    *,
    from_beginning: bool,
    limit: int | None,
    console: Console,
) -> int:
    """Print matching records until Ctrl-C or `limit` records; returns how many were printed."""
    consumer = AIOKafkaConsumer(
        *topics,
        **client_options(settings.kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        # The dedup stage writes in transactions: only committed records are real output.
        isolation_level="read_committed",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shown = 0
    try:
        await consumer.start()
        # A misspelt or not yet created topic would otherwise be a silent wait.
        for topic in sorted(set(topics) - await consumer.topics()):
            console.print(f"[yellow]topic {topic} does not exist (yet): waiting for it[/]")
        while not stop.is_set() and (limit is None or shown < limit):
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for message in batch:
                    # Structured or binary mode alike; anything else (dead letters) shown raw.
                    event: Any = decode(message.headers, message.value)
                    if event is None:
                        event = message.value
                    elif not wanted.matches(event):
                        continue
                    console.print(
                        render(message.topic, message.key, event), highlight=False, soft_wrap=True
                    )
                    shown += 1
                    if limit is not None and shown >= limit:
                        return shown
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return shown
