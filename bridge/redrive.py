"""`pinecall-bridge redrive`: dead letters the bridge now reads, offered to the ingest stage again.

The dead-letter topic is read (committed records, from `--since` to its end as it was when the
command started, or with `--until` each partition to its first record well past it), and each
dead letter the normaliser now reads goes through the daemon's own path (normalise → route →
the ingest topic) with its first channel and receipt time, so its id is the one it would have
had: the dedup stage publishes it once. What is still unrecognised, and the sources' notes, are
counted and reported, never written to the dead-letter topic again.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError

from bridge import logthrottle
from bridge.config import KafkaSettings, Settings
from bridge.deadletter import (
    DeadLetter,
    Note,
    Redrive,
    Selection,
    StillUnrecognised,
    Verdict,
    classify,
    deliveries,
)
from bridge.dedupnote import republish_note
from bridge.metrics import Metrics
from bridge.normalise.ids import CALL_ID_REFUSED, valid_call_id
from bridge.pipeline import (
    BatchResult,
    Delivery,
    ForRedrive,
    pipeline_for,
    submit_retrying,
    unflushed,
)
from bridge.progress import CountedBar, counted_bar
from bridge.routing import Router
from bridge.sink.acls import read_refused, topic_refused
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.connectsetup import for_role
from bridge.sink.kafka import (
    KafkaSink,
    client_options,
    missing_ingest,
    stop_within,
    topic_partitions,
)
from bridge.tail import printable

if TYPE_CHECKING:
    from rich.console import Console

# Calls named in the hint to backfill them; the rest are counted.
SHOWN_CALLS = 20
# How far a partition's record times may go back: a dead letter's time is its CreateTime, the
# broker's clock as the dedup replica that wrote it last read it (bridge/clocks.py; the bridge
# creates the topic with Kafka's default; LogAppendTime would not make it safe either, a broker's
# clock can step back or a leader with another take over), and several replicas append to one
# partition: a later record may be older by the brokers' clocks' skew, by how long a batch waited
# to be appended (aiokafka expires it after the request timeout), and by how far behind its
# writer's last read was (a fetch's wait; a backlog's lag while one is worked off, with no fresh
# record read on any of its partitions). Far more than the first ones, and cheap: some minutes of
# dead letters read for nothing, where reading on meant the rest of the topic.
UNTIL_SLACK_SECONDS = 600.0


class Progress(Protocol):
    """What the redrive reports as it goes (a rich progress bar, or nothing)."""

    def offsets_found(self, total: int) -> None: ...

    def offsets_read(self, done: int) -> None: ...

    def offered(self, count: int) -> None: ...


class NoProgress:
    """No bar: library use and tests."""

    def offsets_found(self, total: int) -> None:
        pass

    def offsets_read(self, done: int) -> None:
        pass

    def offered(self, count: int) -> None:
        pass


class ReadStalledError(Exception):
    """Nothing was read for a while though records were left: Kafka is unreachable."""


class MissingTopicError(Exception):
    """The dead-letter or ingest topic does not exist (or this user may not describe it): a
    misspelt name, another cluster, or an ACL."""


@dataclass(slots=True)
class RedriveReport:
    dry_run: bool = False
    read: int = 0  # dead letters read from the range
    selected: int = 0  # of those, the ones `--until`, `--reason` and `--channel` picked
    redriven: int = 0  # the bridge reads now: submitted to the ingest stage (dry run: would be)
    submitted: BatchResult = field(default_factory=BatchResult)
    unrecognised: Counter[str] = field(default_factory=Counter)  # by today's reason
    notes: Counter[str] = field(default_factory=Counter)  # by kind
    note_calls: set[str] = field(default_factory=set)
    unreadable: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    ingest_topic: str = ""  # of the topics `submitted.too_large_for` names, the ingest topic

    @property
    def ok(self) -> bool:
        return self.error is None

    def take(self, letters: list[DeadLetter], selection: Selection) -> list[Redrive]:
        """Count what each selected dead letter is now; the inputs to offer again."""
        wanted: list[Redrive] = []
        for letter in letters:
            self.read += 1
            if selection.matches(letter):
                self.selected += 1
                verdict = classify(letter)
                self.count(verdict)
                if isinstance(verdict, Redrive):
                    wanted.append(verdict)
        return wanted

    def count(self, verdict: Verdict) -> None:
        if isinstance(verdict, Redrive):
            self.redriven += 1
        elif isinstance(verdict, StillUnrecognised):
            self.unrecognised[verdict.reason] += 1
        elif isinstance(verdict, Note):
            self.notes[verdict.kind] += 1
            if verdict.call is not None:
                self.note_calls.add(verdict.call)
        else:
            self.unreadable[verdict.why] += 1


async def redrive(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    metrics: Metrics | None = None,
) -> RedriveReport:
    """Read the selected dead letters and submit those the bridge now reads to the ingest topic."""
    shown = progress if progress is not None else NoProgress()
    metrics = metrics if metrics is not None else Metrics()
    report = RedriveReport(dry_run=dry_run, ingest_topic=settings.topics.ingest)
    sink = KafkaSink(settings.kafka, metrics, role="redrive")
    router = Router(settings.topics, settings.routing.rules)
    # Old events by design (in neither the event-lag nor the end-to-end histogram: their receipt
    # was the first one), and no dead letter written: one still unrecognised, or still too large
    # for the ingest topic or its output topic (learned below), is counted, not added again.
    pipeline = pipeline_for(settings, sink, router, metrics, ForRedrive(sink.limits))
    consumer = AIOKafkaConsumer(
        **for_role(client_options(settings.kafka), "redrive"),
        group_id=None,
        enable_auto_commit=False,
        # A start that retention deleted meanwhile: from what is left, never from the end.
        auto_offset_reset="earliest",
        # The dedup stage writes dead letters in transactions: only committed ones were written.
        isolation_level="read_committed",
    )
    sink_started = False
    # The setup's metadata and config reads need Describe on the ingest and output topics; only
    # the dead-letter topic's read needs Read: a refusal names the right of the step it ended.
    reading = False
    try:
        await start_consumer(consumer)
        if not dry_run:
            missing = await missing_ingest(settings.kafka, settings.topics.ingest)
            if missing is not None:
                raise MissingTopicError(missing)
            await sink.start()
            sink_started = True
            await sink.learn_limits(
                [settings.topics.ingest, *router.topics()], writes=[settings.topics.ingest]
            )
        reading = True
        read = _read(
            consumer,
            settings.kafka,
            settings.topics.dlq,
            selection.since,
            shown,
            until=selection.until,
        )
        async with contextlib.aclosing(read) as batches:
            async for letters in batches:
                wanted = report.take(letters, selection)
                if dry_run:
                    continue
                for channel, received_at, items in deliveries(wanted):
                    result = await submit_retrying(
                        pipeline, items, channel, retry=Delivery.redriven(received_at)
                    )
                    report.submitted.add(result)
                    if not result.ok:
                        report.error = "Kafka did not take every event: " + ", ".join(
                            sorted(result.failure_reasons)
                        )
                        return report
                    # Not those dropped by routing or still too large: never offered.
                    shown.offered(result.accepted)
    except (MissingTopicError, ReadStalledError) as exc:
        report.error = str(exc)
    except TopicAuthorizationFailedError as exc:
        # aiokafka's names the topic alone: the right missing, and where the ACLs are listed.
        report.error = (
            read_refused(exc, settings.dedup.group)
            if reading
            else topic_refused(exc, "Describe", "a topic it writes or routes to")
        )
    finally:
        with contextlib.suppress(Exception):
            await stop_consumer(consumer)
        if sink_started and not await stop_within(sink, settings.kafka.publish_timeout_seconds):
            # Kafka went away: without a bound the command never ended. The first error stays.
            report.error = report.error or unflushed(settings.kafka.publish_timeout_seconds)
        logthrottle.flush_all()  # what the thinned lines held back is said before the report
    return report


async def _read(
    consumer: AIOKafkaConsumer,
    kafka: KafkaSettings,
    topic: str,
    since: float,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    *,
    until: float | None = None,
) -> AsyncGenerator[list[DeadLetter], None]:
    """The topic's records from `since` to its end as it is now, each partition's only up to its
    first record past `until` (see `past_the_end`), a fetched batch at a time."""
    partitions = await topic_partitions(kafka, [topic])
    if not partitions:
        # Kafka answers a topic this user may not describe as one that does not exist.
        raise MissingTopicError(
            f"the dead-letter topic {topic} does not exist, or this user may not describe it"
            " (BRIDGE_TOPICS__DLQ)"
        )
    consumer.assign(partitions)
    ends = await consumer.end_offsets(partitions)  # read_committed: the last stable offsets
    found = await consumer.offsets_for_times({tp: int(since * 1000) for tp in partitions})
    starts: dict[TopicPartition, int] = {}
    for tp in partitions:
        at = found.get(tp)
        # No record as recent as `since`: nothing to read there.
        starts[tp] = ends[tp] if at is None else min(at.offset, ends[tp])
        consumer.seek(tp, starts[tp])
    progress.offsets_found(sum(ends[tp] - starts[tp] for tp in partitions))
    # aiokafka retries a lost broker forever and getmany then answers empty: without a bound
    # the command would wait for ever instead of failing.
    stall_limit = 2 * kafka.request_timeout_ms / 1000
    read, moved_at = -1, clock()
    while True:
        positions = {tp: min(await consumer.position(tp), ends[tp]) for tp in partitions}
        done = sum(positions[tp] - starts[tp] for tp in partitions)
        progress.offsets_read(done)
        left = [tp for tp in partitions if positions[tp] < ends[tp]]
        if not left:
            return
        if done > read:
            read, moved_at = done, clock()
        elif clock() - moved_at > stall_limit:
            unread = sum(ends[tp] - positions[tp] for tp in left)
            raise ReadStalledError(
                f"no dead letter read for {stall_limit:g} s with {unread} left:"
                " is Kafka reachable (BRIDGE_KAFKA__BOOTSTRAP_SERVERS)?"
            )
        batches = await consumer.getmany(*left, timeout_ms=500)
        letters = []
        for tp, batch in batches.items():
            for m in batch:
                if m.offset >= ends[tp]:  # written since the command started
                    break
                if past_the_end(m.timestamp / 1000, until):
                    ends[tp] = m.offset  # what follows it is later still: not read
                    consumer.pause(tp)
                    progress.offsets_found(sum(ends[p] - starts[p] for p in partitions))
                    break
                letters.append(DeadLetter.of(m.value, m.headers, m.timestamp))
        yield letters


def past_the_end(timestamp: float, until: float | None) -> bool:
    """Whether a record this recent ends its partition's read: past `until` by more than a
    partition's times are expected to go back (UNTIL_SLACK_SECONDS)."""
    return until is not None and timestamp > until + UNTIL_SLACK_SECONDS


class BarProgress:
    """The dead-letter topic's offsets read on the bar, events offered to the ingest topic beside
    it."""

    def __init__(self, bar: CountedBar) -> None:
        self._bar = bar

    def offsets_found(self, total: int) -> None:
        self._bar.total(total)

    def offsets_read(self, done: int) -> None:
        self._bar.completed(done)

    def offered(self, count: int) -> None:
        self._bar.count(count)


def run_redrive(
    settings: Settings, selection: Selection, console: Console, *, dry_run: bool = False
) -> int:
    """The command: redrive with a progress bar, then a summary; 1 when Kafka failed."""
    ttl = settings.dedup.ttl_seconds
    if selection.since < time.time() - ttl:
        # A dry run too: it is what the run it tries out would do.
        console.print(republish_note(ttl, "events", dry_run=dry_run), highlight=False)
    # Offsets, not dead letters: each transaction's commit marker takes one too (5 dead letters
    # may end at offset 10), and counting records instead would cost a read of them all first.
    with counted_bar(
        console, "dead-letter topic", None, unit="offsets", counted="offered to the ingest topic"
    ) as bar:
        report = asyncio.run(
            redrive(settings, selection, dry_run=dry_run, progress=BarProgress(bar))
        )
    for line in summary(report, ttl):
        # Not markup: calls and reasons are the dead letters' own text.
        console.print(line, highlight=False, markup=False)
    return 0 if report.ok else 1


def summary(report: RedriveReport, ttl: float) -> list[str]:
    """What became of the dead letters read, one line per kind: plain text, its control and
    format characters escaped (calls, reasons and errors are the records' or Kafka's text)."""
    lines = [f"{report.read} dead letters read, {report.selected} selected"]
    if report.dry_run:
        lines.append(f"{report.redriven} the bridge reads now: dry run, nothing was published")
    else:
        s = report.submitted
        lines.append(
            f"{report.redriven} the bridge reads now: {s.accepted} offered to the ingest topic,"
            f" {s.dropped} dropped by routing, {s.refused} still too large for Kafka"
        )
        if s.refused:
            # A final answer, not a failure: it would be refused again at every run.
            lines.append(
                f"{s.refused} still too large for Kafka: never offered, left in the dead-letter"
                " topic, not written again"
            )
            lines.extend(_too_large(s.too_large_for, report.ingest_topic))
    if report.unrecognised:
        lines.append(
            f"{sum(report.unrecognised.values())} still unrecognised ({_by(report.unrecognised)}):"
            " left in the dead-letter topic, not written again"
        )
    if report.notes["call_log"]:
        # A call backfill refuses would fail the whole suggested command: not suggested.
        calls = sorted(call for call in report.note_calls if valid_call_id(call))
        invalid = len(report.note_calls) - len(calls)
        # Quoted: a valid id may still hold a space or a `;`, and the line is pasted into a shell.
        named = " ".join(f"--call {shlex.quote(call)}" for call in calls[:SHOWN_CALLS])
        more = f" (and {len(calls) - SHOWN_CALLS} more calls)" if len(calls) > SHOWN_CALLS else ""
        line = (
            f"{report.notes['call_log']} notes of call-log entries the bridge could not read:"
            " no input to offer again"
        )
        if calls:
            line += f"; `pinecall-bridge backfill {named}`{more} reads those calls again"
        if invalid:
            line += f"; {invalid} calls left out, not call ids backfill takes ({CALL_ID_REFUSED})"
        lines.append(line)
    if report.notes["feed_frame"]:
        lines.append(
            f"{report.notes['feed_frame']} notes of feed frames too large to decode: no input"
            " to offer again (their call's log, if it has one, has the whole event)"
        )
    if report.unreadable:
        lines.append(
            f"{sum(report.unreadable.values())} records that are not the bridge's dead letters"
            f" ({_by(report.unreadable)})"
        )
    if report.error is not None:
        lines.append(f"error: {report.error}")
    elif not report.dry_run and report.submitted.accepted:
        lines.append(
            f"the dedup stage drops those it saw in the last {ttl:g} s, and publishes the rest"
            " (again, for events published before that)."
        )
    elif report.dry_run and report.redriven:
        lines.append(
            f"without --dry-run, the dedup stage would drop those it saw in the last {ttl:g} s,"
            " and publish the rest (again, for events published before that)."
        )
    # A dead letter's ESC would drive the operator's terminal, its newline forge a line.
    return [printable(line) for line in lines]


def _too_large(by_topic: Counter[str], ingest: str) -> list[str]:
    """A line per topic too small for some (the ingest topic's first), saying what to raise."""
    lines = []
    for topic, n in sorted(by_topic.items(), key=lambda kv: (kv[0] != ingest, kv[0])):
        what = "the ingest topic" if topic == ingest else "the output topic"
        lines.append(
            f"{n} too large for {what} {topic}: raise its max.message.bytes (and"
            " BRIDGE_KAFKA__MAX_REQUEST_BYTES if that is lower), then redrive them again"
        )
    return lines


def _by(counts: Counter[str]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items()))
