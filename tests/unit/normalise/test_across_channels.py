"""One event, every envelope carrying its `(call, seq)`: one dedup id, one ingest key, one topic.

The feed's docs-page and older-SDK shapes carry no seq: one ingest key and topic, their own id.

The dedup stage drops a copy only when it meets the same id in the same ingest partition, so
every copy must agree on both. Each event is rendered by the simulator's own renderers (what it
sends), read back by the bridge's own parsers, then normalised, routed and encoded for the
ingest topic as the pipeline does. Pure: no socket, no broker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge import jsoncodec
from bridge.config import TopicSettings
from bridge.ingest import record as ingest
from bridge.normalise import Channel, Event, normalise, split_body
from bridge.normalise.binding import encode as encode_cloudevent
from bridge.normalise.shapes import content_id
from bridge.routing import Route, Router
from bridge.simulator import wire
from bridge.simulator.alerts import plan_alert
from bridge.simulator.calllog import CallLogs
from bridge.simulator.eventstream import frame as sse_frame
from bridge.simulator.frames import event_frame
from bridge.simulator.plan import FrameShape
from bridge.simulator.script import CallScript, generate_call
from bridge.simulator.wire import alert_body, encode
from bridge.sink.record import Record
from bridge.sources.calllog.eventstream import Event as SseEvent
from bridge.sources.calllog.eventstream import EventStreamParser
from bridge.sources.calllog.follow import CallFollow, Publish
from bridge.sources.calllog.pages import page_of
from bridge.sources.frames import classify
from bridge.sources.reconnect import ReconnectPolicy

# An ephemeral topic, so that interim lines are routed (and keyed) rather than dropped.
ROUTER = Router(TopicSettings(ephemeral="pinecall.ephemeral"), [])
INGEST = "pinecall.ingest"
SOURCE = "https://api.pinecall.io"
TS = 1790000000.25
DAY = "2026-09-21"  # the day TS falls on
Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Copy:
    """One delivery of the event: the channel and the decoded item the bridge submits."""

    how: str
    channel: Channel
    item: Any


def webhook(body: bytes) -> list[Any]:
    """What the webhook source submits for a posted body."""
    return split_body(jsoncodec.loads(body))


def feed(text: str) -> list[Any]:
    """What the WebSocket source submits for a pushed frame."""
    frame = classify(text)
    return [frame.item] if frame.kind == "event" else []


def call_log_stream(entry: Entry) -> list[Any]:
    """What a call-log follower publishes for the entry's SSE event."""
    follow = CallFollow(str(entry["call"]), 0, ReconnectPolicy(0.5, 30.0, 60.0))
    items = []
    for parsed in EventStreamParser().feed(sse_frame(entry)):
        assert isinstance(parsed, SseEvent)
        step = follow.step(parsed)
        if isinstance(step, Publish):
            items.append(step.item)
    return items


def call_log_page(entry: Entry) -> list[Any]:
    """What a follower's fill and `backfill` submit: the entries of the call's JSON page."""
    logs = CallLogs()
    log = logs.append(entry)
    body = jsoncodec.dumps(logs.page(log, 0, 100).body())
    return list(page_of(jsoncodec.loads(body)).entries)


def log_entry_copies(entry: Entry) -> list[Copy]:
    """A log entry, on every channel the simulator carries one with its `(call, seq)`: webhook (a
    retry too), the feed's log-entry frame, the call log's SSE stream and its JSON pages."""
    body = encode(entry)
    copies = [Copy("webhook", "webhook", item) for item in webhook(body)]
    copies += [Copy("webhook retry", "webhook", item) for item in webhook(body)]
    copies += [
        Copy("feed", "websocket", item) for item in feed(event_frame(entry, body, "log-entry"))
    ]
    # A call log serves its call's lines, from seq 1: not an agent's, nor a seq-0 notice.
    if entry["call"] is not None and entry["seq"] >= 1:
        copies += [Copy("call-log sse", "sse", item) for item in call_log_stream(entry)]
        copies += [Copy("call-log page", "sse", item) for item in call_log_page(entry)]
    return copies


def alert_copies(body: Entry) -> list[Copy]:
    """Pinecall posts an alert by webhook alone, the same bytes on a retry or a duplicate."""
    # The bytes the simulator posts (the platform's: `\u` escapes), not a log entry's encoding.
    posted = wire.alert_wire(body)
    return [Copy(f"webhook copy {n}", "webhook", item) for n in (1, 2) for item in webhook(posted)]


def script() -> CallScript:
    return generate_call(random.Random(7))


def call_step(kind: str, *, state: str | None = None, ephemeral: bool = False) -> Entry:
    """The first line of the simulated call of this type (and data.state)."""
    call = script()
    for step in call.steps:
        wanted = state is None or step.data.get("state") == state
        if step.type == kind and step.ephemeral == ephemeral and wanted:
            return call.entry(step, TS + step.seq)
    raise AssertionError(f"the simulated call has no {kind}")


def agent_alert(kind: str) -> Entry:
    """An alert the simulator ends a call with: a line of the agent's own log, as posted."""
    call = script()
    rng = random.Random(kind)
    plan = None
    while plan is None or plan.type != kind:
        plan = plan_alert(rng, call, probability=1.0, duplicates=0.0, day=DAY)
    entry = CallLogs().agent_entry(call.agent, plan.type, plan.data, TS)
    assert entry["call"] is None
    return alert_body(entry)


def seq_zero_notice(call: str | None) -> Entry:
    """A seq-0 line: an org-feed notice (`call` null) or a local error in a call's log."""
    kind = "release.changed" if call is None else "error"
    return {"seq": 0, "ts": TS, "call": call, "agent": script().agent, "type": kind,
            "ephemeral": False, "data": {"release": "r_41"}}  # fmt: skip


def said_in_full(kind: str) -> Entry:
    """The call's first line of this type, saying é, € and an emoji: the call log's SSE escapes
    them (`\\u00e9`, a surrogate pair), a webhook and a page carry them in UTF-8."""
    line = call_step(kind)
    return {**line, "data": {**line["data"], "text": "Jos\u00e9: 15 \u20ac \U0001f389"}}


CALL_KEY = script().call.encode()
AGENT_KEY = f"@{script().agent}".encode()
# (case, the copies of one event, the ingest key they must share)
CASES: list[tuple[str, Callable[[], list[Copy]], bytes]] = [
    ("call.started", lambda: log_entry_copies(call_step("call.started")), CALL_KEY),
    ("turn.user", lambda: log_entry_copies(call_step("turn.user")), CALL_KEY),
    (
        "agent.thinking",
        lambda: log_entry_copies(call_step("agent.state", state="thinking")),
        CALL_KEY,
    ),
    ("interim", lambda: log_entry_copies(call_step("user.transcript", ephemeral=True)), CALL_KEY),
    ("non-ASCII turn.agent", lambda: log_entry_copies(said_in_full("turn.agent")), CALL_KEY),
    ("call.summary", lambda: log_entry_copies(call_step("call.summary")), CALL_KEY),
    ("call.score", lambda: log_entry_copies(call_step("call.score")), CALL_KEY),
    ("monitor.fired", lambda: alert_copies(agent_alert("monitor.fired")), AGENT_KEY),
    ("spend.unusual", lambda: alert_copies(agent_alert("spend.unusual")), AGENT_KEY),
    ("credits.exhausted", lambda: alert_copies(agent_alert("credits.exhausted")), AGENT_KEY),
    ("webhook.test", lambda: alert_copies(wire.test_alert(TS)), b"org_sim"),
    ("seq-0 in a call's log", lambda: log_entry_copies(seq_zero_notice("CA_0")), b"CA_0"),
    ("seq-0 org notice", lambda: log_entry_copies(seq_zero_notice(None)), AGENT_KEY),
]


@dataclass(frozen=True, slots=True)
class Ingested:
    event: Event
    route: Route
    record: Record


def ingested(copy: Copy) -> Ingested:
    """The pipeline's path for one copy: normalise, route, the ingest record."""
    event = normalise(copy.item, channel=copy.channel, received_at=TS + 100)
    assert isinstance(event, Event), (copy.how, event)
    route = ROUTER.route(event)
    assert isinstance(route, Route), (copy.how, route)
    value, headers = encode_cloudevent(event, SOURCE, route.key, "structured")
    output = Record(route.topic, route.key, value, headers)
    record = ingest.encode(INGEST, event.id, output, copy.channel, event.received_at)
    return Ingested(event, route, record)


@pytest.mark.parametrize(("name", "render", "key"), CASES, ids=[name for name, _, _ in CASES])
def test_every_copy_has_one_id_one_ingest_key_one_topic(
    name: str, render: Callable[[], list[Copy]], key: bytes
) -> None:
    copies = render()
    assert len(copies) >= 2, f"{name}: fewer than two copies, nothing to compare"
    done = [ingested(copy) for copy in copies]
    first = done[0]
    for copy, each in zip(copies, done, strict=True):
        assert each.event.id == first.event.id, (copy.how, each.event.id, first.event.id)
        assert each.record.key == key, (copy.how, each.record.key, key)
        assert ingest.event_id_of(each.record.headers) == first.event.id, copy.how
        assert each.route.topic == first.route.topic, copy.how
        decoded = ingest.decode(each.record.key, each.record.value, each.record.headers)
        assert decoded is not None, copy.how
        assert decoded.output.topic == first.route.topic, copy.how


def test_the_cases_are_distinct_events() -> None:
    """Distinct events get distinct ids: the agreement above is not a constant id."""
    ids = [ingested(render()[0]).event.id for _, render, _ in CASES]
    assert len(set(ids)) == len(ids), ids


def test_an_alert_line_is_keyed_alike_in_its_post_and_in_its_agent_log() -> None:
    """An alert is a line of its agent's log (`call` null): as an entry it is keyed `@<agent>`,
    as its webhook post too, so an alert in both shapes would meet one dedup owner. The ids
    differ (`@<agent>:<seq>`, the post's content id), but no channel the bridge reads serves the
    agent log: the README's dedup limits say so."""
    call = script()
    rng = random.Random(3)
    plan = plan_alert(rng, call, probability=1.0, duplicates=0.0, day=DAY)
    assert plan is not None
    entry = CallLogs().agent_entry(call.agent, plan.type, plan.data, TS)
    as_entry = ingested(Copy("entry", "websocket", entry))
    as_post = ingested(Copy("post", "webhook", alert_body(entry)))
    assert as_entry.record.key == as_post.record.key == f"@{call.agent}".encode()
    assert as_entry.route.topic == as_post.route.topic == "pinecall.alerts"
    # With an id of its own (none today), either shape takes it: one id, one key.
    with_id = {"id": "alert_1"}
    same = [
        ingested(Copy("entry", "websocket", {**entry, **with_id})),
        ingested(Copy("post", "webhook", {**alert_body(entry), **with_id})),
    ]
    assert {i.event.id for i in same} == {"alert_1"}
    assert {i.record.key for i in same} == {f"@{call.agent}".encode()}


@pytest.mark.parametrize("shape", ["documented", "legacy"])
@pytest.mark.parametrize("kind", ["call.started", "turn.user", "call.summary", "call.score"])
def test_a_frame_without_an_id_matches_only_its_own_bytes(shape: FrameShape, kind: str) -> None:
    """The docs page's and the older SDK's frames carry no seq: their id is their content's, so a
    resent frame (a duplicate push, a token refresh's overlap) is dropped, but the entry's other
    copies are not (the README's known limits); all share the call's key, partition and topic."""
    entry = call_step(kind)
    text = event_frame(entry, encode(entry), shape)
    sent_again = event_frame(entry, encode(entry), shape)
    [frame, resent] = [ingested(Copy(shape, "websocket", i)) for i in feed(text) + feed(sent_again)]
    [entry_copy] = [ingested(Copy("webhook", "webhook", i)) for i in webhook(encode(entry))]
    assert frame.event.id == resent.event.id == content_id(jsoncodec.loads(text))
    assert frame.event.id != entry_copy.event.id == f"{entry['call']}:{entry['seq']}"
    assert frame.record.key == entry_copy.record.key == CALL_KEY
    assert frame.route.topic == entry_copy.route.topic
    assert (frame.event.call, frame.event.seq) == (entry["call"], None)


def test_escaped_and_utf8_copies_carry_the_same_data() -> None:
    """The SSE copy was `\\u` escapes on the wire, the others UTF-8: one id, one data."""
    copies = log_entry_copies(said_in_full("turn.user"))
    assert {copy.how for copy in copies} >= {"webhook", "call-log sse", "call-log page"}
    done = [ingested(copy) for copy in copies]
    for copy, each in zip(copies, done, strict=True):
        assert each.event.id == done[0].event.id, copy.how
        assert each.event.data == done[0].event.data, copy.how
    assert done[0].event.data["text"] == "Jos\u00e9: 15 \u20ac \U0001f389"
