"""`pinecall-bridge tail`: what a downstream team sees on the bridge's topics, pretty-printed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.text import Text

from bridge import jsoncodec
from bridge.config import Settings
from bridge.normalise.binding import decode
from bridge.pipeline import DLQ_CHANNEL_HEADER, DLQ_REASON_HEADER
from bridge.sink.clienttasks import stop_consumer
from bridge.sink.kafka import client_options


@dataclass(frozen=True, slots=True)
class TailFilter:
    type_glob: str = "*"
    call: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if not fnmatchcase(str(event.get("type", "")), self.type_glob):
            return False
        return self.call is None or event.get("subject") == self.call


def render(
    topic: str, key: bytes | None, event: Any, headers: Iterable[tuple[str, bytes]] = ()
) -> Text:
    """One line per record: time, topic, type, call, id, then the data; a dead letter's reason.

    `event` is the record's CloudEvent in either mode (`binding.decode`), else its raw value.
    """
    # Styled Text, never markup: every field is the sender's text (a caller's words among them),
    # and rich would fail on a "[/]" in it or take a "[bold]" for a style.
    if not isinstance(event, dict):
        raw = event.decode(errors="replace") if isinstance(event, bytes) else str(event)
        found = {name: value.decode(errors="replace") for name, value in headers}
        if DLQ_REASON_HEADER in found:
            why = f"{found[DLQ_REASON_HEADER]} via {found.get(DLQ_CHANNEL_HEADER, '?')}"
            return Text.assemble((topic, "red"), " dead letter ", (why, "bold"), ": ", raw[:200])
        return Text.assemble((topic, "red"), " ", ("not a CloudEvent:", "dim"), " ", raw[:200])
    data = jsoncodec.dumps(event.get("data")).decode()
    if len(data) > 160:
        data = data[:157] + "..."
    subject = event.get("subject") or (key.decode(errors="replace") if key else "-")
    via = f"{event.get('id', '?')} via {event.get('pinecallchannel', '?')}"
    return Text.assemble(
        (str(event.get("time", "?")), "dim"),
        " ",
        (topic, "cyan"),
        " ",
        (str(event.get("type", "?")), "bold"),
        " ",
        (str(subject), "green"),
        " ",
        (via, "dim"),
        " ",
        data,
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
                    line = render(message.topic, message.key, event, message.headers)
                    console.print(line, highlight=False, soft_wrap=True)
                    shown += 1
                    if limit is not None and shown >= limit:
                        return shown
    finally:
        with contextlib.suppress(Exception):
            await stop_consumer(consumer)
    return shown
