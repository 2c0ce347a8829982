"""Fuzzing's one place: the Hypothesis profiles, and the hostile inputs the fuzz tests share.

`make test` runs the short `fast` profile; `FUZZ=long` (or `--hypothesis-profile=long`, or
`make fuzz`) the long one. Under CI the profiles inherit Hypothesis's `ci` profile
(derandomised, no example database), so a CI run is reproducible. Every fuzz test imports this
module, which registers the profiles; tests/conftest.py does not, so a session without fuzz
tests never imports Hypothesis.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import settings
from hypothesis import strategies as st

from bridge import jsoncodec
from bridge.config import TopicSettings
from bridge.ingest.record import decode as decode_ingest
from bridge.metrics import Metrics
from bridge.normalise import Channel
from bridge.normalise.binding import decode as decode_cloudevent
from bridge.normalise.vocabulary import KNOWN_TYPES, MARKER_TYPES
from bridge.pipeline import Pipeline
from bridge.routing import Router
from bridge.sink.record import Record
from tests.unit.fakes import FakeSink
from tests.webhooks import SIGNATURE, signed

SCHEMA = jsoncodec.loads(
    (Path(__file__).parents[1] / "bridge/schema/pinecall-cloudevent.schema.json").read_bytes()
)

FAST = "fast"
LONG = "long"
FAST_EXAMPLES = 40
LONG_EXAMPLES = 1000


def register_profiles() -> None:
    """Register `fast` and `long`, and load the one `FUZZ` asks for (`fast` unless `long`)."""
    base = settings.get_profile(settings.get_current_profile_name())
    settings.register_profile(FAST, parent=base, max_examples=FAST_EXAMPLES, deadline=None)
    settings.register_profile(LONG, parent=base, max_examples=LONG_EXAMPLES, deadline=None)
    settings.load_profile(LONG if os.environ.get("FUZZ") == LONG else FAST)


# At the first import, which is before any fuzz test's @given (it reads the profile then).
register_profiles()


# --- JSON values -------------------------------------------------------------------------------

# What orjson can read: integers within 64 bits (larger ones arrive as floats), finite floats.
json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=12), json_values, max_size=6
)


def nested_text(depth: int, leaf: bytes = b"1") -> bytes:
    """JSON text of `leaf` inside `depth` containers, objects and lists in turn."""
    opening = b"".join(b"[" if level % 2 else b'{"k":' for level in range(depth))
    closing = b"".join(b"]" if level % 2 else b"}" for level in reversed(range(depth)))
    return opening + leaf + closing


# --- Pinecall-shaped items, valid and not ----------------------------------------------------

_int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_types = st.one_of(
    st.sampled_from(sorted(KNOWN_TYPES | MARKER_TYPES)),
    st.text(max_size=300),
    json_scalars,
)
_times = st.one_of(
    _int64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, max_value=253402300800 * 1000),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda moment: moment.isoformat()),
    st.text(max_size=30),
    st.none(),
)
_ids = st.one_of(st.text(max_size=20), _int64, st.booleans(), st.none(), st.floats())
_names = st.one_of(st.text(max_size=20), json_scalars)
_data = st.one_of(json_objects, json_values)


def _shape(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    shaped = st.fixed_dictionaries(required, optional=optional)
    # Unknown envelope fields too: they travel as `pinecallextra`.
    return st.tuples(shaped, json_objects).map(lambda pair: {**pair[1], **pair[0]})


log_entries = _shape(
    {
        "seq": st.one_of(st.integers(min_value=-2, max_value=2**64 - 1), json_scalars),
        "type": _types,
        "data": _data,
    },
    {
        "ts": _times,
        "call": _names,
        "agent": _names,
        "ephemeral": json_scalars,
        "id": _ids,
    },
)
alerts = _shape(
    {"type": _types, "org": _names, "at": _times},
    {"env": _names, "agent": _names, "data": _data, "id": _ids},
)
documented = _shape(
    {"type": _types, "data": _data},
    {
        "id": _ids,
        "timestamp": _times,
        "created_at": _times,
        "time": _times,
        "agent": _names,
        "org": _names,
        "env": _names,
    },
)
legacy = _shape({"event": _types}, {"callId": _names, "id": _ids, "ts": _times})

# Every shape the bridge recognises, near misses of them, and any JSON at all.
pinecall_items: st.SearchStrategy[Any] = st.one_of(
    log_entries, alerts, documented, legacy, json_values
)
# Each shape with a call id where it reads one, valid or not: names are read from these.
_calls = st.one_of(st.sampled_from(["CA_1", "", "a/b", "CA_1\n"]), _names)
_known_types = st.sampled_from(sorted(KNOWN_TYPES))
named_items: st.SearchStrategy[Any] = st.one_of(
    st.tuples(log_entries, _known_types, _calls, _calls, st.integers(-1, 2**31), json_objects).map(
        lambda t: {**t[0], "type": t[1], "call": t[2], "agent": t[3], "seq": t[4], "data": t[5]}
    ),
    st.tuples(documented, _known_types, _calls).map(
        lambda t: {**t[0], "type": t[1], "data": {"call_id": t[2]}}
    ),
    st.tuples(legacy, _known_types, _calls).map(lambda t: {**t[0], "event": t[1], "callId": t[2]}),
    st.tuples(alerts, _known_types).map(lambda t: {**t[0], "type": t[1]}),
)
# An item whose `data` (or an unknown field) nests containers around the JSON codec's limits:
# orjson reads 1024 levels but writes only 254.
deep_texts: st.SearchStrategy[bytes] = st.tuples(
    st.integers(min_value=245, max_value=1030), st.sampled_from([b"data", b"extra"])
).map(
    lambda pair: b'{"type":"turn.user","data":{},"' + pair[1] + b'":' + nested_text(pair[0]) + b"}"
)


# --- JSON text, as it arrives on the wire ------------------------------------------------------


def reserialised(value: Any) -> st.SearchStrategy[bytes]:
    """The same JSON value in other bytes: other key order and whitespace."""
    return st.sampled_from(
        [
            jsoncodec.dumps(value),
            json.dumps(value, indent=2, ensure_ascii=False).encode(),
            json.dumps(_reverse_keys(value), separators=(" , ", " : ")).encode(),
        ]
    )


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reverse_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(item) for item in value]
    return value


def _splice(text: bytes, fragment: bytes, at: int) -> bytes:
    at = at % (len(text) + 1)
    return text[:at] + fragment + text[at:]


item_texts = st.one_of(pinecall_items, st.lists(pinecall_items, max_size=5)).map(jsoncodec.dumps)
_hostile_fragments = st.sampled_from(
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e999",
        b"1" + b"0" * 400,
        b"18446744073709551616",
        b"\xff",
        b"\xc3\x28",
        b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
        b'"\\ud800"',
        b"\x00",
        b"\xef\xbb\xbf",  # a byte-order mark
        b",",
        b"}",
        b"]]]]",
        b'"',
    ]
)
_literals = st.sampled_from(
    [
        b"",
        b"   \n\t",
        b"null",
        b"[]",
        b"{}",
        b'"text"',
        b"NaN",
        b'{"type":"turn.user","data":{"n":NaN}}',
        b'{"type":"turn.user","data":{"n":Infinity}}',
        b'{"type":"turn.user","data":{"n":1e999}}',
        b'{"type":"turn.user","data":{"n":' + b"9" * 5000 + b"}}",
        b'{"type":"turn.user","type":"call.ended","data":{},"data":{"a":1}}',
        b'{"seq":1,"seq":-1,"call":"c","type":"t","data":{}}',
        b'{"type":"turn.user","data":{"s":"\xff\xfe"}}',
        b'\xef\xbb\xbf{"type":"turn.user","data":{}}',
        b'{"type":"turn.user","data":{}} trailing',
        b'{"type":"turn.user","data":{}',
    ]
)
# Bodies and frames: valid JSON texts of every shape, the same with hostile bytes spliced in,
# deep nesting either side of the codec's limits, known-bad literals, and random bytes.
hostile_json: st.SearchStrategy[bytes] = st.one_of(
    item_texts,
    st.builds(_splice, item_texts, _hostile_fragments, st.integers(min_value=0)),
    deep_texts,
    st.integers(min_value=1, max_value=1200).map(nested_text),
    _literals,
    st.binary(max_size=200),
)


# --- Webhook signatures ----------------------------------------------------------------------


def signatures(secret: bytes, body: bytes) -> st.SearchStrategy[tuple[str | None, bool]]:
    """An `X-Pinecall-Signature` value for `body` (None: no header), and whether it is valid.

    Valid: the HMAC in any accepted spelling. Invalid: missing, empty, another secret or body,
    cut short or too long, another algorithm or separator, non-hex, or arbitrary text.
    """
    digest = signed(body, secret, bare=True)[1][SIGNATURE]
    other = signed(body, secret + b"x", bare=True)[1][SIGNATURE]
    valid = st.sampled_from(
        [
            "sha256=" + digest,
            digest,
            digest.upper(),
            "SHA256=" + digest.upper(),
            "Sha256=" + digest,
            "  sha256=" + digest + "\t",
            "\t" + digest + " ",
        ]
    )
    invalid = st.one_of(
        st.sampled_from(
            [
                "",
                "   ",
                "sha256=" + other,
                other,
                "sha256=" + digest[:-1],
                digest + "0",
                "sha1=" + digest,
                "sha256:" + digest,
                "sha256= " + digest,
                "sha256=sha256=" + digest,
                "sha256=" + "g" * 64,
                "sha256=" + digest[:32] + " " + digest[32:],
            ]
        ),
        st.text(max_size=80),
    )
    return st.one_of(
        valid.map(lambda value: (value, True)),
        st.one_of(st.none(), invalid).map(lambda value: (value, False)),
    )


# --- The ingest stage's core, as a property --------------------------------------------------


def submit_checked(items: list[Any], channel: Channel, raw: bytes | None = None) -> list[Record]:
    """Submit a delivery through a real Pipeline into a FakeSink, check what it wrote, return it.

    Every item is accepted, dropped or dead-lettered, never failed; every record is an ingest
    record whose output is a schema-valid CloudEvent or a dead letter.
    """
    topics = TopicSettings()
    sink = FakeSink()
    pipeline = Pipeline(
        sink,
        Router(topics, []),
        Metrics(),
        source="https://api.pinecall.io",
        ingest_topic=topics.ingest,
        dlq_topic=topics.dlq,
        publish_timeout=5,
    )
    result = asyncio.run(pipeline.submit(items, channel, raw=raw))
    assert result.ok, result
    assert result.accepted + result.dropped + result.dead_lettered == len(items)
    assert len(sink.records) == result.accepted + result.dead_lettered
    for record in sink.records:
        entry = decode_ingest(record.key, record.value, record.headers)
        assert entry is not None
        assert entry.channel == channel
        if entry.output.topic == topics.dlq:
            continue
        event = decode_cloudevent(entry.output.headers, entry.output.value)
        assert event is not None
        jsonschema.validate(event, SCHEMA)
        assert event["id"] == entry.event_id
    return sink.records
