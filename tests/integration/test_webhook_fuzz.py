"""Fuzzing the webhook over real HTTP: a `pinecall-bridge run` process, the broker, raw sockets.

Valid signatures mixed with hostile bodies, headers and framing. Invariants: never a 500 (every
answer is 2xx, 4xx or a 503 with Retry-After, and no bug escapes to the catch-all), the process
stays alive and live, its memory stays bounded, every refusal is counted, and only validly signed
bodies reach the ingest and output topics.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import jsoncodec
from bridge.config import WebhookSettings
from bridge.ingest.record import decode as decode_ingest
from bridge.normalise import Event, normalise, split_body
from bridge.normalise.binding import decode as decode_cloudevent
from bridge.rejections import RejectReason
from tests.fuzz import hostile_json, item_texts, signatures
from tests.integration.conftest import (
    SECRET,
    RunningBridge,
    Topics,
    entry,
    read_decided,
    read_to_end,
    until_metrics,
)
from tests.integration.replicas import Replica, replica_env, total
from tests.rawhttp import Framing, Header, RawResponse, build_request, exchange
from tests.sockets import free_port
from tests.webhooks import signed

PATH = "/webhooks/pinecall"
LIMIT = WebhookSettings(secrets=[SECRET]).max_body_bytes
# The peak RSS may pass the RSS before the run by this much: 1 MiB bodies, their parses, slack.
RSS_GROWTH_BOUND = 256 * 1024 * 1024
# A body larger than this may still be on its way when the server has answered and closed.
EARLY_ANSWER_BYTES = 64 * 1024
# The handler's refusals, each counted under its reason (README, Webhooks); mypy holds them to
# the reasons the bridge counts.
COUNTED: frozenset[RejectReason] = frozenset(
    {
        "unsupported_media_type",
        "body_too_large",
        "missing_signature",
        "malformed_signature",
        "invalid_signature",
        "invalid_utf8",
        "invalid_json",
        "empty_body",
        "invalid_body",
        "incomplete_body",
        "kafka_unavailable",
    }
)

content_types = st.one_of(
    st.just("application/json"),
    st.just("application/json; charset=utf-8"),
    st.sampled_from(
        [
            "application/cloudevents+json",
            "Application/JSON",
            "application/json;;;",
            "application/json; charset=latin-1",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
        ]
    ),
    st.none(),
    st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=30),
    st.text(max_size=10),
)
header_values = st.binary(max_size=60).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
extra_headers: st.SearchStrategy[tuple[Header, ...]] = st.one_of(
    st.just(()),
    st.integers(min_value=1, max_value=200).map(
        lambda n: tuple((f"X-Fuzz-{i}", "v" * (i % 60)) for i in range(n))
    ),
    header_values.map(lambda value: (("X-Binary", value),)),
    st.sampled_from(
        [
            (("Content-Type", "text/plain"),),
            (("X-Pinecall-Signature", "sha256=" + "0" * 64),),
            (("X-Big", "a" * 10_000),),
            (("Content-Encoding", "gzip"),),
            (("Content-Encoding", "deflate"),),
            (("Content-Encoding", "br"),),
            (("Expect", "100-continue"),),
            (("Content-Length", "5"),),
            (("Transfer-Encoding", "chunked"),),
            (("Transfer-Encoding", "gzip, chunked"),),
            (("X Bad Name", "v"),),
            ((b"X-Latin", b"caf\xe9"),),
        ]
    ),
)


def oversized(extra: int) -> bytes:
    """Valid JSON just past the body limit."""
    return b"[" + b"0," * ((LIMIT + extra) // 2) + b"0]"


def near_limit(short_by: int) -> bytes:
    """One valid event whose body is just under the limit: a record as large as Kafka may take."""
    head, tail = b'{"type":"turn.user","data":{"s":"', b'"}}'
    return head + b"x" * (LIMIT - short_by - len(head) - len(tail)) + tail


# Valid gzip that inflates far past the body limit.
BOMB = gzip.compress(b" " * (LIMIT * 16))

bodies = st.one_of(
    hostile_json,
    st.integers(min_value=1, max_value=4096).map(oversized),
    st.integers(min_value=0, max_value=4096).map(near_limit),
)


@dataclass(frozen=True)
class Case:
    method: str
    body: bytes
    signature: str | None
    valid: bool
    content_type: str | None
    extra: tuple[Header, ...]
    framing: Framing
    chunk_sizes: tuple[int, ...]

    def request(self) -> bytes:
        headers: list[Header] = []
        if self.content_type is not None:
            headers.append(("Content-Type", self.content_type))
        if self.signature is not None:
            headers.append(("X-Pinecall-Signature", self.signature))
        headers.extend(self.extra)  # after ours: a repeated header never replaces the first
        return build_request(
            self.method,
            PATH,
            headers,
            self.body,
            framing=self.framing,
            chunk_sizes=self.chunk_sizes,
        )

    def deliverable(self) -> bool:
        """A delivery Pinecall could send: it must be stored (or refused for good if too large)."""
        if not self.valid or self.method != "POST" or self.extra or len(self.body) > LIMIT:
            return False
        if self.content_type != "application/json" or self.framing not in ("length", "chunked"):
            return False
        try:
            jsoncodec.loads(self.body)
        except jsoncodec.JSONDecodeError:
            return False
        return True


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Half plausible deliveries (any event shape, any signature), half hostile requests."""
    if draw(st.booleans()):
        body = draw(item_texts)
        signature, valid = draw(signatures(SECRET.encode(), body))
        framing: Framing = draw(st.sampled_from(["length", "chunked"]))
        return Case("POST", body, signature, valid, "application/json", (), framing, (64,))
    bomb = draw(st.integers(min_value=0, max_value=30)) == 0
    body = BOMB if bomb else draw(bodies)
    signature, valid = draw(signatures(SECRET.encode(), body))
    return Case(
        method=draw(st.sampled_from(["POST"] * 9 + ["PUT", "GET"])),
        body=body,
        signature=signature,
        valid=valid,
        content_type=draw(content_types),
        extra=(("Content-Encoding", "gzip"),) if bomb else draw(extra_headers),
        framing=draw(st.sampled_from(["length"] * 6 + ["chunked"] * 2 + ["none", "short", "long"])),
        chunk_sizes=tuple(draw(st.lists(st.integers(min_value=1, max_value=4096), max_size=4))),
    )


@dataclass
class History:
    """What was sent and answered, and what the topics may therefore hold."""

    answers: Counter[int] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    unanswered: list[Case] = field(default_factory=list)
    # Requests with a lying or missing length: the server may refuse (and count) the body, then
    # answer the bytes after it as the next request, or see the sender leave before it can answer.
    ambiguous: int = 0
    stored: int = 0  # records the answers say were written (accepted + dead-lettered)
    # Per event id, the digests of the data a record with it may carry; dead letters' digests.
    allowed_data: dict[str, set[str]] = field(default_factory=dict)
    allowed_dead_letters: set[str] = field(default_factory=set)

    def may_publish(self, body: bytes) -> None:
        """A validly signed body: each of its items may be in the topics."""
        try:
            document = jsoncodec.loads(body)
        except jsoncodec.JSONDecodeError:
            return
        items = split_body(document)
        if not isinstance(document, list):
            self.allowed_dead_letters.add(digest(body))
        for item in items:
            self.allowed_data.setdefault("dlq:" + digest(jsoncodec.canonical(item)), set())
            self.allowed_dead_letters.add(digest(jsoncodec.dumps(item)))
            event = normalise(item, channel="webhook", received_at=0.0)
            if isinstance(event, Event):
                data = digest(jsoncodec.canonical(event.data))
                self.allowed_data.setdefault(event.id, set()).add(data)

    def check(self, case: Case, response: RawResponse | None) -> None:
        if case.framing in ("short", "none", "long"):
            self.ambiguous += 1
        if response is None:
            # Only a body that never ended, or a large one refused before it was read (the
            # server's close then resets the connection, and the answer may be lost).
            assert case.framing == "long" or len(case.body) > EARLY_ANSWER_BYTES, case
            self.unanswered.append(case)
            return
        status = response.status
        self.answers[status] += 1
        assert 200 <= status < 300 or 400 <= status < 500 or status == 503, (status, case)
        if status == 503:
            assert "retry-after" in response.headers, (response, case)
        answer = _json(response.body)
        if isinstance(answer, dict):
            assert answer.get("error") != "internal_error", ("a bug escaped", case)
            if answer.get("error") in COUNTED:
                self.reasons[answer["error"]] += 1
            self.stored += int(answer.get("accepted", 0)) + int(answer.get("dead_lettered", 0))
        if case.deliverable():
            error = answer.get("error") if isinstance(answer, dict) else None
            assert 200 <= status < 300 or error in ("kafka_unavailable", "record_too_large"), (
                response,
                case,
            )
        if 200 <= status < 300:
            assert case.valid, ("a 2xx without a valid signature", case)
            assert isinstance(answer, dict), (response, case)
            assert "accepted" in answer, (response, case)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _json(raw: bytes) -> Any:
    try:
        return jsoncodec.loads(raw)
    except jsoncodec.JSONDecodeError:
        return None


@pytest.mark.hypothesis  # its @given is inside: `make fuzz` selects it by this mark
def test_hostile_requests_never_break_the_bridge(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    port = free_port()
    replica = Replica("fuzz", replica_env(kafka_bootstrap, topics, port), tmp_path / "log", port)
    asyncio.run(replica.start())
    history = History()
    try:
        rss_before = replica.rss_bytes()

        @settings(
            max_examples=settings().max_examples * 4,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(cases())
        def send(case: Case) -> None:
            if case.valid:
                history.may_publish(case.body)
            response = asyncio.run(
                exchange(
                    "127.0.0.1", replica.port, case.request(), half_close=case.framing == "long"
                )
            )
            history.check(case, response)

        send()
        assert replica.alive
        rss_peak = replica.rss_bytes(peak=True)
        asyncio.run(_after_the_run(replica, history, kafka_bootstrap, topics))
    finally:
        asyncio.run(replica.stop())
    assert rss_peak - rss_before < RSS_GROWTH_BOUND, (rss_before, rss_peak)
    assert history.answers, "no request was answered"


async def _after_the_run(
    replica: Replica, history: History, bootstrap: str, topics: Topics
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(replica.url + "/healthz") as response:
            assert response.status == 200
        samples = await replica.metrics(session)
    # Every refusal the fuzzer saw was counted under its reason; more only for lost answers.
    counted = {
        reason: total(samples, "pinecall_bridge_events_rejected_total", reason=reason)
        for reason in COUNTED
    }
    assert all(counted[reason] >= history.reasons[reason] for reason in COUNTED), counted
    assert sum(counted.values()) - history.reasons.total() <= history.ambiguous, counted

    # The ingest topic holds exactly what the answers said was stored, all of it validly signed.
    ingest = await read_to_end(bootstrap, [topics.ingest])
    assert len(ingest) == history.stored
    for record in ingest:
        ingested = decode_ingest(record.key, record.value, list(record.headers.items()))
        assert ingested is not None
        assert ingested.event_id in history.allowed_data, ingested.event_id
        _check_output(history, ingested.output.value, list(ingested.output.headers))

    output = await read_decided(bootstrap, topics, [topics.events, topics.alerts, topics.dlq])
    assert len(output) <= len(ingest)
    for record in output:
        _check_output(history, record.value, list(record.headers.items()))


def _check_output(history: History, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    """A record's value is a validly signed body's event, or its dead letter."""
    event = decode_cloudevent(headers, value)
    if event is None:
        assert digest(value) in history.allowed_dead_letters
        return
    data = digest(jsoncodec.canonical(event["data"]))
    assert data in history.allowed_data[event["id"]], event["id"]


async def test_a_body_cut_short_is_counted_not_logged_as_a_bug(
    bridge: RunningBridge, caplog: pytest.LogCaptureFixture
) -> None:
    # The server as in production (no handler cancellation) sees the sender leave mid-body.
    body, headers = signed(entry(1), SECRET)
    request = build_request("POST", PATH, list(headers.items()), body, framing="long")
    port = int(bridge.url.rsplit(":", 1)[1])
    answer = await exchange("127.0.0.1", port, request, half_close=True)
    assert answer is not None
    assert answer.status == 400
    series = 'pinecall_bridge_events_rejected_total{channel="webhook",reason="incomplete_body"}'
    await until_metrics(bridge, lambda samples: samples.get(series) == 1, within=10)
    assert "unexpected error" not in caplog.text


@pytest.mark.parametrize(
    ("coding", "framing"),
    [
        ([("Content-Encoding", "gzip")], "length"),
        # Only the first was read: `identity` let the gzip through, as JSON (a 401 or 400).
        ([("Content-Encoding", "identity"), ("Content-Encoding", "gzip")], "length"),
        # aiohttp undoes the chunked framing only: the body came still gzipped (a 401).
        ([("Transfer-Encoding", "gzip, chunked")], "none"),
    ],
)
async def test_an_encoded_body_is_refused_unread(
    bridge: RunningBridge, coding: list[Header], framing: Framing
) -> None:
    # Signed as the platform would sign the event; the bridge must not inflate it to check:
    # inflating a gzip bomb (1,000:1) stalls every other request.
    event, headers = signed(entry(1), SECRET)
    body = gzip.compress(event)
    if framing == "none":  # the chunked framing around the gzip, written as the header says
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = build_request("POST", PATH, [*headers.items(), *coding], body, framing=framing)
    response = await exchange("127.0.0.1", int(bridge.url.rsplit(":", 1)[1]), request)
    assert response is not None
    assert response.status == 415
    assert jsoncodec.loads(response.body)["detail"] == "send the body unencoded"
