"""`pinecall-bridge tail`: what a downstream team sees on the bridge's topics, pretty-printed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndTimestamp
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from bridge import jsoncodec
from bridge.config import Settings
from bridge.deadletter import DeadLetter, is_own_id, named
from bridge.ingest import record as ingest_record
from bridge.normalise.binding import decode
from bridge.normalise.event import renderable, rfc3339
from bridge.pipeline import DLQ_CHANNEL_HEADER, DLQ_REASON_HEADER
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.connectsetup import for_role
from bridge.sink.kafka import COORDINATOR_PASSING, admin_client, client_options, group_offsets

# How often a following tail looks for partitions added to its topics (an operator raising a
# topic's partition count) and for its topics created since: their records are shown at most
# this late.
PARTITIONS_RELOOK_SECONDS = 5.0
# How long `--everywhere` waits for the dedup group's coordinator, asking again this often: longer
# than Kafka takes to create __consumer_offsets, short enough that a cluster that never elects one
# still ends the command.
COORDINATOR_WAIT_SECONDS = 10.0
COORDINATOR_RETRY_SECONDS = 0.2
# Shown as escapes: controls (C0, DEL, C1: a record's ESC would drive the reader's terminal, its
# newline forge a line of another record), format characters (bidi overrides and isolates
# reorder what the line seems to say, Trojan Source; zero-width ones hide in an id) and the
# line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class _Escapes(dict[int, str]):
    """A `str.translate` table of every character to escape, filled in as characters are met
    (built up front, from the whole of Unicode, it added 0.15 s to every import, measured)."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
            shown = char
        elif code < 0x100:
            shown = f"\\x{code:02x}"
        elif code < 0x10000:
            shown = f"\\u{code:04x}"
        else:
            shown = f"\\U{code:08x}"
        self[code] = shown
        return shown


_ESCAPES = _Escapes()


class ReadStalledError(KafkaConnectionError):  # type: ignore[misc]  # aiokafka is untyped
    """A read to the end moved no further for a while though records were left: Kafka is gone."""


class OutputClosedError(Exception):
    """Whoever read tail's output stopped reading (`tail | head -1`): nothing more to print."""


class EscapingConsole(Console):
    """A console that shows a character its terminal cannot encode escaped (tail, the demo)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # A terminal that is not UTF-8 (LANG=...ISO-8859-1) cannot show every caller's character:
        # one it lacks is shown escaped, where it would end the command with UnicodeEncodeError.
        stream = self.file
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


class TailConsole(EscapingConsole):
    """A console whose reader going away ends tail quietly (rich's own exits 1 from the read's task,
    the loop stopped under it and its traceback logged)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # what rich still holds is dropped, never written again
        # Python flushes the stream at exit: pointed at nothing, not a second broken pipe.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.file.fileno())
            finally:
                os.close(devnull)
        raise OutputClosedError


@dataclass(frozen=True, slots=True)
class TailFilter:
    type_glob: str = "*"
    call: str | None = None
    event_id: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if not fnmatchcase(str(event.get("type", "")), self.type_glob):
            return False
        if self.event_id is not None and event.get("id") != self.event_id:
            return False
        return self.call is None or event.get("subject") == self.call

    def matches_raw(self, value: bytes | None, headers: Iterable[tuple[str, bytes]] = ()) -> bool:
        """A record that is no CloudEvent (a dead letter): kept by the type, call and id the bridge
        would have given its event, each where its value tells (`deadletter.named`); else (no
        JSON, no type read) if a string of it equals the call (or id), and whatever its type.
        Its own dedup id (`dlq:<sha256>`) stands for the id too."""
        # A call-log entry's id (`CA_1:57`) is no string of it, its seq a number: only the
        # normaliser's own rules find it. What they cannot read (no JSON, a note of a frame, a
        # call id refused) may still hold the call anywhere: any string equal to it names it.
        raw = value or b""
        if self.event_id is not None and is_own_id(raw, self.event_id):
            # Its own dedup id (`dlq:<sha256>`, its ingest record's), not its event's: found by it.
            return replace(self, event_id=None).matches_raw(value, headers)
        found = named(DeadLetter.of(raw, headers, 0))
        if found is None:
            wanted = [w for w in (self.call, self.event_id) if w is not None]
            return all(_mentions(raw, w) for w in wanted)
        if found.type is None:
            # No type read: a malformed item, whose call and id as read are a guess (`{"data":
            # {"callId": "CA_1"}}` reads as no call's). Whoever chases a call or event it
            # mentions is shown it; its id as read still counts (a seq's `CA_1:57`, an `id` 5).
            if self.call is not None and not _mentions(raw, self.call):
                return False
            return (
                self.event_id is None or self.event_id == found.id or _mentions(raw, self.event_id)
            )
        if not fnmatchcase(found.type, self.type_glob):
            return False
        if self.event_id is not None and not (
            found.id == self.event_id if found.id is not None else _mentions(raw, self.event_id)
        ):
            return False
        if self.call is None:
            return True
        return found.call == self.call if found.call_known else _mentions(raw, self.call)


def _mentions(raw: bytes, text: str) -> bool:
    try:
        document = jsoncodec.loads(raw)
    except jsoncodec.JSONDecodeError:
        return text.encode() in raw
    stack = [document]
    while stack:
        node = stack.pop()
        if node == text:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def ingest_note(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    offset: int,
    committed: int | None,
) -> str:
    """What an ingest record says of its event (bound for, received) and whether dedup decided it.

    `committed`: the dedup group's committed offset of the record's partition, None if it has none.
    """
    given = list(headers)
    entry = ingest_record.decode(key, value, given)
    # Below the committed offset the dedup stage has written it out or dropped it as a copy of an
    # id it saw: which, the output topic tells (one record per id, whichever copy came first).
    decided = "decided" if committed is not None and offset < committed else "not yet decided"
    if entry is None:
        # The record a partition is held at (README "Upgrading"): said, where it looked foreign.
        version = ingest_record.newer_version(given)
        return (
            "" if version is None else f"-> ingest format {version}, a later release's, {decided}"
        )
    redriven = ", redriven" if entry.redriven else ""
    return f"-> {entry.output.topic} received {shown_time(entry.received_at)}{redriven}, {decided}"


def shown_time(epoch_seconds: float) -> str:
    """A header's time as RFC 3339; one no date is (a damaged header's 1e20) as it is stored."""
    return rfc3339(epoch_seconds) if renderable(epoch_seconds) else f"{epoch_seconds!r} (no time)"


def printable(text: str) -> str:
    """`text` with its control and format characters escaped (`\\x1b`, `\\u202e`): one inert
    line on any terminal, which reads as it is stored."""
    return text.translate(_ESCAPES)


def given_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    """A record's headers less the null ones (another producer's): they say nothing."""
    return [(name, raw) for name, raw in headers if raw is not None]


def render(
    topic: str,
    key: bytes | None,
    event: Any,
    headers: Iterable[tuple[str, bytes]] = (),
    *,
    note: str = "",
) -> Text:
    """One line per record: time, topic, type, call, id, then the data; a dead letter's reason.

    `event` is the record's CloudEvent in either mode (`binding.decode`), else its raw value;
    `note`, shown after the topic, what an ingest record's own headers say (`ingest_note`).
    """
    noted = (" ", (printable(note), "magenta"), " ") if note else (" ",)
    # Styled Text, never markup: every field is the sender's text (a caller's words among them),
    # and rich would fail on a "[/]" in it or take a "[bold]" for a style. Escaped likewise:
    # rich passes ESC and newlines through to the terminal.
    if not isinstance(event, dict):
        raw = event.decode(errors="replace") if isinstance(event, bytes) else str(event)
        found = {name: value.decode(errors="replace") for name, value in headers}
        shown = printable(raw[:200])
        if DLQ_REASON_HEADER in found:
            why = printable(f"{found[DLQ_REASON_HEADER]} via {found.get(DLQ_CHANNEL_HEADER, '?')}")
            return Text.assemble(
                (printable(topic), "red"), *noted, "dead letter ", (why, "bold"), ": ", shown
            )
        return Text.assemble(
            (printable(topic), "red"), *noted, ("not a CloudEvent:", "dim"), " ", shown
        )
    data = jsoncodec.dumps(event.get("data")).decode()
    if len(data) > 160:
        data = data[:157] + "..."
    subject = event.get("subject") or (key.decode(errors="replace") if key else "-")
    via = f"{event.get('id', '?')} via {event.get('pinecallchannel', '?')}"
    return Text.assemble(
        (printable(str(event.get("time", "?"))), "dim"),
        " ",
        (printable(topic), "cyan"),
        *noted,
        (printable(str(event.get("type", "?"))), "bold"),
        " ",
        (printable(str(subject)), "green"),
        " ",
        (printable(via), "dim"),
        " ",
        # JSON escapes C0 controls, not DEL nor C1 (U+009B is a CSI to some terminals).
        printable(data),
    )


async def committed_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """The dedup group's committed ingest offsets, read once: what it had decided at the start."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + COORDINATOR_WAIT_SECONDS
    async with admin_client(client_options(settings.kafka), role="tail") as admin:
        while True:
            try:
                found = await group_offsets(admin, settings.dedup.group)
                break
            except COORDINATOR_PASSING:
                # A cluster no group has used yet answers so while it creates __consumer_offsets
                # (a second or so), a coordinator just moved or still loading the group's
                # offsets likewise: a passing state, not a failure (asked again, found again).
                if loop.time() >= give_up:
                    raise
                await asyncio.sleep(COORDINATOR_RETRY_SECONDS)
    return {tp: meta.offset for tp, meta in found.items() if tp.topic == settings.topics.ingest}


def since_offsets(
    found: Mapping[TopicPartition, OffsetAndTimestamp | None], ends: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Where each partition starts for `--since`: its first record at or after the time, else
    its end (`found` is `offsets_for_times`' answer, `ends` the end offsets)."""
    starts = {}
    for tp, end in ends.items():
        first = found.get(tp)
        starts[tp] = end if first is None else first.offset
    return starts


def unfinished(
    positions: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
) -> list[TopicPartition]:
    """The partitions whose position has not reached the end they had at the start."""
    return sorted(tp for tp, end in ends.items() if positions[tp] < end)


async def _existing(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of those of `topics` that exist now, from one metadata request."""
    # The whole cluster's metadata, never a look-up by name: that asks a broker that
    # auto-creates topics to make it, a misspelt --topic among them. It is what
    # consumer.topics() fetches, kept whole: topics() returns only the names, and
    # consumer.partitions_for_topic reads the client's own metadata, which topics() does not
    # refresh (it knows only assigned topics, and a raised partition count after 5 min).
    cluster = await consumer._client.fetch_all_metadata()
    existing = cluster.topics()
    return [
        TopicPartition(topic, partition)
        for topic in topics
        if topic in existing
        for partition in sorted(cluster.partitions_for_topic(topic) or ())
    ]


async def _take_up_added(
    consumer: AIOKafkaConsumer,
    topics: list[str],
    assigned: list[TopicPartition],
    console: Console,
    within: float = PARTITIONS_RELOOK_SECONDS,
) -> list[TopicPartition]:
    """Assign the partitions of `topics` that appeared since `assigned` was read (a raised
    partition count, a topic created); each is read from its beginning, as all its records are
    newer than the start. Returns the new assignment.

    Each wait on Kafka takes `within` seconds at most: one unanswered by then is left to a later
    look (TimeoutError before anything changed), or, the assignment made, to the fetcher."""
    # aiokafka's position() waits for ever on a reset (`--from-beginning`, retention, a partition
    # never read yet) that a partition without a leader, or a Kafka gone, never answers.
    async with asyncio.timeout(within):
        added = sorted(set(await _existing(consumer, topics)) - set(assigned))
        if not added:
            return assigned
        # assign() replaces the assignment and forgets its positions: the old ones are kept.
        positions = {tp: await consumer.position(tp) for tp in assigned}
    partitions = [*assigned, *added]
    consumer.assign(partitions)
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    # Asked for before its first wait, the reset to the beginning is the fetcher's to finish:
    # only its answer is left unwaited, the assignment is made and said.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await consumer.seek_to_beginning(*added)
    known = {tp.topic for tp in assigned}
    for topic in sorted({tp.topic for tp in added} - known):
        console.print(f"[yellow]topic {topic} now exists: reading it from its beginning[/]")
    for tp in added:
        if tp.topic in known:
            console.print(
                f"[yellow]topic {tp.topic} has a new partition {tp.partition}: reading it too[/]"
            )
    return partitions


async def tail(
    settings: Settings,
    topics: list[str],
    wanted: TailFilter,
    *,
    from_beginning: bool = False,
    since: float | None = None,
    to_end: bool = False,
    limit: int | None,
    console: Console,
) -> int:
    """Print matching records until Ctrl-C or `limit` records; returns how many were printed.

    `since` (epoch seconds): start each partition at its first record of then or later;
    `to_end`: stop once every partition has reached the end it had at the start.
    """
    shown = _Shown()
    with _stop_on_signals() as stop:
        reading = asyncio.ensure_future(
            _read(settings, topics, wanted, from_beginning, since, to_end, limit, console, shown)
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not reading.done():
                # Cancelled, never left to see `stop` between fetches: a start or metadata look
                # at a Kafka that does not answer would hold Ctrl-C for its timeouts (10-30 s).
                reading.cancel()
                await asyncio.wait({reading})
    if reading.cancelled():
        return shown.count
    try:
        return reading.result()
    except OutputClosedError:
        # What was printed was read: the end of the reader's wants, not a failure.
        return shown.count


@dataclass(slots=True)
class _Shown:
    """How many records a read printed, kept by the caller when it cancels the read."""

    count: int = 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, the handlers removed again on leaving.

    An in-process caller (a test, an embedding tool) keeps its own Ctrl-C afterwards.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _read(
    settings: Settings,
    topics: list[str],
    wanted: TailFilter,
    from_beginning: bool,
    since: float | None,
    to_end: bool,
    limit: int | None,
    console: Console,
    shown: _Shown,
) -> int:
    # Partitions assigned, never a subscription: aiokafka's sees a partition added to a topic
    # only on its metadata refresh (5 min) and then reads it from "latest", skipping what was
    # written to it meanwhile. A fixed end is what existed at the start; otherwise tail looks
    # every few seconds for partitions and topics that appeared since and reads them whole.
    following = not to_end
    loop = asyncio.get_running_loop()
    decided: dict[TopicPartition, int] = {}
    if settings.topics.ingest in topics:
        decided = await committed_offsets(settings)
    # Made only as it is started: one made before a failed read of the offsets is never stopped.
    consumer = AIOKafkaConsumer(
        **for_role(client_options(settings.kafka), "tail"),
        group_id=None,
        enable_auto_commit=False,
        # `--since` seeks each partition itself: a position retention deleted meanwhile goes on
        # from what is left, never from the end (every record left skipped, as redrive's read).
        auto_offset_reset="earliest" if from_beginning or since is not None else "latest",
        # The dedup stage writes in transactions: only committed records are real output.
        isolation_level="read_committed",
    )
    ends: dict[TopicPartition, int] | None = None
    partitions: list[TopicPartition] = []
    await start_consumer(consumer)
    try:
        partitions = await _existing(consumer, topics)
        # A misspelt or not yet created topic would otherwise be a silent wait.
        # Escaped: a --topic is the operator's text, and may hold a "[/" that rich would parse.
        for topic in sorted(set(topics) - {tp.topic for tp in partitions}):
            if following:
                console.print(
                    f"[yellow]topic {escape(topic)} does not exist (yet): waiting for it[/]"
                )
            else:
                console.print(
                    f"[yellow]topic {escape(topic)} does not exist: nothing to read in it[/]"
                )
        consumer.assign(partitions)
        if since is not None or to_end:
            # Under read_committed the end offsets are the last stable offsets: what a
            # downstream consumer can read now, never past a transaction still open.
            now = await consumer.end_offsets(partitions) if partitions else {}
            if since is not None and partitions:
                at = int(since * 1000)
                found = await consumer.offsets_for_times(dict.fromkeys(partitions, at))
                for tp, offset in since_offsets(found, now).items():
                    consumer.seek(tp, offset)
            ends = now if to_end else None
        look_again = loop.time() + PARTITIONS_RELOOK_SECONDS
        # aiokafka retries a lost broker (or a partition's missing leader) for ever, each fetch
        # answering empty: a read to the end that moves no further this long fails, as redrive's
        # does, where it waited for ever.
        stall_limit = 2 * settings.kafka.request_timeout_ms / 1000
        read, moved_at = -1, loop.time()
        while limit is None or shown.count < limit:
            if following and loop.time() >= look_again:
                # A look Kafka did not answer (in time) is only late: the next one tries again,
                # and the partitions assigned are read meanwhile.
                with contextlib.suppress(KafkaError, TimeoutError):
                    partitions = await _take_up_added(
                        consumer, topics, partitions, console, PARTITIONS_RELOOK_SECONDS
                    )
                look_again = loop.time() + PARTITIONS_RELOOK_SECONDS
            if ends is not None:
                # Within what is left of the limit: aiokafka's position() waits for ever on a
                # reset (`--from-beginning`, retention) that a partition without a leader, or a
                # Kafka gone, never answers.
                try:
                    async with asyncio.timeout(max(moved_at + stall_limit - loop.time(), 0.0)):
                        positions = {tp: await consumer.position(tp) for tp in ends}
                except TimeoutError:
                    raise ReadStalledError(
                        f"no position in the partitions read for {stall_limit:g} s: is Kafka"
                        " reachable, and has each partition a leader?"
                    ) from None
                left = unfinished(positions, ends)
                if not left:
                    break
                done = sum(min(positions[tp], end) for tp, end in ends.items())
                if done > read:
                    read, moved_at = done, loop.time()
                elif loop.time() - moved_at > stall_limit:
                    unread = sum(ends[tp] - positions[tp] for tp in left)
                    raise ReadStalledError(
                        f"no record read for {stall_limit:g} s with {unread} left before the end"
                        " tail started with: is Kafka reachable?"
                    )
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for message in batch:
                    # Past the end it had at the start: a record written since tail began.
                    if ends is not None:
                        tp = TopicPartition(message.topic, message.partition)
                        if message.offset >= ends[tp]:
                            continue
                    headers = given_headers(message.headers)
                    # Structured or binary mode alike; anything else (dead letters) shown raw.
                    event: Any = decode(headers, message.value)
                    if event is None:
                        if not wanted.matches_raw(message.value, headers):
                            continue
                        event = message.value
                    elif not wanted.matches(event):
                        continue
                    # Where it is, to tell an ingest copy from its output and to find it again.
                    place = f"{message.topic}[{message.partition}]@{message.offset}"
                    note = ""
                    if message.topic == settings.topics.ingest:
                        committed = decided.get(TopicPartition(message.topic, message.partition))
                        note = ingest_note(
                            message.key, message.value, headers, message.offset, committed
                        )
                    line = render(place, message.key, event, headers, note=note)
                    console.print(line, highlight=False, soft_wrap=True)
                    shown.count += 1
                    if limit is not None and shown.count >= limit:
                        return shown.count
    finally:
        with contextlib.suppress(Exception):
            await stop_consumer(consumer)
    return shown.count
