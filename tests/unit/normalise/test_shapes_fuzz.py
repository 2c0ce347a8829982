"""Properties of normalisation over any JSON: never an exception, always a valid CloudEvent."""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from bridge import jsoncodec
from bridge.normalise import Event, Unrecognised, event_time, normalise, split_body
from bridge.normalise.binding import decode, encode
from bridge.normalise.shapes import Names, names
from bridge.routing import record_key
from tests.fuzz import hostile_json, named_items, pinecall_items, reserialised
from tests.unit.normalise.test_binding import SCHEMA, SOURCE, header_strings

RECEIVED = 1_790_000_000.25
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
HEADER_VALIDATORS = {
    "structured": jsonschema.Draft202012Validator(SCHEMA["$defs"]["structuredHeaders"]),
    "binary": jsonschema.Draft202012Validator(SCHEMA["$defs"]["binaryHeaders"]),
}


def as_read(item: Any) -> Any:
    """The item as the bridge would have it: decoded from its JSON text."""
    return jsoncodec.loads(jsoncodec.dumps(item))


def check_event(event: Event) -> None:
    """A valid CloudEvent in both content modes, read back as written."""
    key = record_key(event)
    ce = event.to_cloudevent(SOURCE, None if key is None else key.decode())
    VALIDATOR.validate(ce)
    for mode in ("structured", "binary"):
        value, headers = encode(event, SOURCE, key, mode)
        HEADER_VALIDATORS[mode].validate(header_strings(headers))
        read = decode(headers, value)
        assert read is not None
        assert (read["id"], read["type"], read["data"]) == (ce["id"], ce["type"], ce["data"])
        if mode == "structured":
            assert read == ce


@given(pinecall_items.map(as_read), st.sampled_from(["webhook", "websocket"]))
def test_any_item_is_an_event_or_unrecognised(item: Any, channel: Any) -> None:
    result = normalise(item, channel=channel, received_at=RECEIVED)
    if isinstance(result, Unrecognised):
        assert result.item is item
        return
    assert isinstance(result, Event)
    assert result.id
    assert 0 < len(result.type) <= 256
    check_event(result)


@given(hostile_json)
def test_every_decodable_body_normalises_and_encodes(raw: bytes) -> None:
    try:
        document = jsoncodec.loads(raw)
    except jsoncodec.JSONDecodeError:
        return
    for item in split_body(document):
        result = normalise(item, channel="webhook", received_at=RECEIVED)
        if isinstance(result, Event):
            check_event(result)
        else:
            # The dead-letter path writes the item and hashes its canonical form.
            assert jsoncodec.loads(jsoncodec.dumps(item)) == item
            jsoncodec.canonical(item)


@given(st.data(), pinecall_items.map(as_read))
def test_id_is_stable_under_reserialisation_and_channel(data: st.DataObject, item: Any) -> None:
    first = normalise(item, channel="webhook", received_at=RECEIVED)
    raw = data.draw(reserialised(item))
    again = normalise(jsoncodec.loads(raw), channel="websocket", received_at=RECEIVED + 60)
    if isinstance(first, Event):
        assert isinstance(again, Event)
        assert again.id == first.id
        assert (again.type, again.call, again.seq) == (first.type, first.call, first.seq)
    else:
        assert isinstance(again, Unrecognised)
        assert again.reason == first.reason


@given(pinecall_items)
def test_event_time_is_the_time_normalise_reads(item: Any) -> None:
    # The webhook's replay check reads a body's time with event_time(): it must be the time
    # the published event carries, whatever the shape.
    item = as_read(item)
    event = normalise(item, channel="webhook", received_at=RECEIVED)
    if isinstance(event, Event):
        assert event_time(item) == event.event_time


@given(st.one_of(named_items, pinecall_items).map(as_read))
def test_names_are_the_id_type_and_call_of_the_event_normalise_makes(item: Any) -> None:
    # `tail` finds a dead letter by names(): of an item the bridge reads, they are its event's.
    event = normalise(item, channel="webhook", received_at=RECEIVED)
    if isinstance(event, Event):
        assert names(item) == Names(event.id, event.type, event.call, call_known=True)
