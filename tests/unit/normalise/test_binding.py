import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

from bridge import jsoncodec
from bridge.normalise import Event, normalise
from bridge.normalise.binding import Headers, Mode, decode, encode, header_value
from bridge.routing import record_key

SCHEMA = json.loads(
    (Path(__file__).parents[3] / "bridge/schema/pinecall-cloudevent.schema.json").read_text()
)
SOURCE = "https://api.pinecall.io"


def make(item: dict[str, Any]) -> Event:
    event = normalise(item, channel="websocket", received_at=1_700_000_001.5)
    assert isinstance(event, Event)
    return event


ENTRY = make(
    {
        "seq": 3,
        "ts": 1_700_000_000,
        "call": "CA_1",
        "agent": "a1",
        "type": "turn.agent",
        "ephemeral": True,
        "data": {"text": "hi ü"},
        "extra": [1],
    }
)
ALERT = make(
    {"type": "spend.unusual", "org": "o1", "env": "sandbox", "at": 1_700_000_000, "data": {}}
)
KEYLESS = make({"type": "webhook.test", "data": {"n": 1}})


def header_strings(headers: Headers) -> dict[str, str]:
    """Headers as the schema's $defs describe them: name -> UTF-8 text."""
    assert len({name for name, _ in headers}) == len(headers), "a header name appears twice"
    return {name: raw.decode() for name, raw in headers}


def test_structured_is_the_whole_event_with_no_ce_headers() -> None:
    value, headers = encode(ENTRY, SOURCE, b"CA_1", "structured")
    ce = jsoncodec.loads(value)
    assert ce == {**ENTRY.to_cloudevent(SOURCE), "partitionkey": "CA_1"}
    jsonschema.validate(ce, SCHEMA)
    assert headers == (
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("pinecall-id", b"CA_1:3"),
        ("pinecall-type", b"turn.agent"),
    )
    jsonschema.validate(header_strings(headers), SCHEMA["$defs"]["structuredHeaders"])


def test_binary_is_data_in_the_value_and_every_other_attribute_in_a_ce_header() -> None:
    value, headers = encode(ENTRY, SOURCE, b"CA_1", "binary")
    assert jsoncodec.loads(value) == {"text": "hi ü"}
    assert header_strings(headers) == {
        "content-type": "application/json",
        "ce_specversion": "1.0",
        "ce_id": "CA_1:3",
        "ce_source": SOURCE,
        "ce_type": "turn.agent",
        "ce_time": "2023-11-14T22:13:20.000Z",
        "ce_subject": "CA_1",
        "ce_partitionkey": "CA_1",
        "ce_pinecallseq": "3",
        "ce_pinecallagent": "a1",
        "ce_pinecallchannel": "websocket",
        "ce_pinecallreceivedat": "2023-11-14T22:13:21.500Z",
        "ce_pinecallephemeral": "true",
        "ce_pinecallextra": '{"extra":[1]}',
        "pinecall-id": "CA_1:3",
        "pinecall-type": "turn.agent",
    }
    jsonschema.validate(header_strings(headers), SCHEMA["$defs"]["binaryHeaders"])


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_a_keyless_record_has_no_partitionkey(mode: Mode) -> None:
    value, headers = encode(KEYLESS, SOURCE, None, mode)
    ce = decode(headers, value)
    assert ce is not None
    assert "partitionkey" not in ce
    assert "subject" not in ce


def read_back(event: Event, key: bytes | None, mode: Mode) -> dict[str, Any] | None:
    value, headers = encode(event, SOURCE, key, mode)
    return decode(headers, value)


def test_header_values_are_the_cloudevents_string_forms() -> None:
    assert (header_value(True), header_value(False)) == (b"true", b"false")
    assert (header_value(0), header_value(12)) == (b"0", b"12")
    assert header_value("ü") == "ü".encode()


@pytest.mark.parametrize("event", [ENTRY, ALERT, KEYLESS], ids=["entry", "alert", "keyless"])
def test_decode_reads_both_modes_back(event: Event) -> None:
    key = record_key(event)
    structured = read_back(event, key, "structured")
    binary = read_back(event, key, "binary")
    assert structured is not None
    assert binary is not None
    # Binary attributes come back as strings: the Kafka binding carries no types.
    assert binary == {
        name: value if isinstance(value, dict | str) else header_value(value).decode()
        for name, value in structured.items()
    }


def test_decode_refuses_what_is_not_a_cloudevent() -> None:
    dead_letter = (("content-type", b"application/json"), ("pinecall-dlq-reason", b"x"))
    assert decode(dead_letter, b'{"specversion": "1.0", "id": "1"}') is None
    assert decode((), b"{}") is None
    incomplete = (("ce_id", b"1"), ("ce_type", b"t"), ("ce_specversion", b"1.0"))
    assert decode(incomplete, b"{}") is None
    structured = (("content-type", b"application/cloudevents+json"),)
    assert decode(structured, b"not json") is None
    assert decode(structured, b"[1]") is None


def test_decode_takes_the_content_type_over_stray_ce_headers() -> None:
    """Records the bridge wrote before issue 13: structured, with ce_id and ce_type too."""
    value, _ = encode(ENTRY, SOURCE, b"CA_1", "structured")
    old = (
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("ce_id", b"CA_1:3"),
        ("ce_type", b"turn.agent"),
    )
    assert decode(old, value) == jsoncodec.loads(value)


def test_binary_data_that_is_not_json_stays_text() -> None:
    headers = (
        ("ce_specversion", b"1.0"),
        ("ce_id", b"1"),
        ("ce_source", b"s"),
        ("ce_type", b"t"),
        ("content-type", b"text/plain"),
    )
    ce = decode(headers, b"hello")
    assert ce is not None
    assert (ce["data"], ce["datacontenttype"]) == ("hello", "text/plain")


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_the_official_sdk_reads_every_attribute(mode: Mode) -> None:
    value, headers = encode(ENTRY, SOURCE, b"CA_1", mode)
    event = from_kafka_event(KafkaMessage(headers=dict(headers), key=b"CA_1", value=value))
    assert event.get_time() == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert event.get_data() == {"text": "hi ü"}
    attributes = event.get_attributes()
    del attributes["time"]
    seq, ephemeral = (3, True) if mode == "structured" else ("3", "true")
    assert attributes == {
        "specversion": "1.0",
        "id": "CA_1:3",
        "source": SOURCE,
        "type": "turn.agent",
        "subject": "CA_1",
        "datacontenttype": "application/json",
        "partitionkey": "CA_1",
        "pinecallseq": seq,
        "pinecallagent": "a1",
        "pinecallchannel": "websocket",
        "pinecallreceivedat": "2023-11-14T22:13:21.500Z",
        "pinecallephemeral": ephemeral,
        "pinecallextra": '{"extra":[1]}',
    }
