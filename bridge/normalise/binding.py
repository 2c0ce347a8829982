"""An Event as a Kafka record's value and headers, per the CloudEvents Kafka protocol binding. Pure.

Structured mode: the value is the whole event in the JSON format and `content-type` is
`application/cloudevents+json`; there are no `ce_` headers, because a `ce_` header is how readers
(the official SDKs among them) recognise binary mode. Binary mode: the value is the event's `data`
as JSON, `content-type` is its type (`application/json`) and every other attribute is a
`ce_<name>` header. Both modes carry `pinecall-id` and `pinecall-type`, to filter without parsing.
The record key is also the event's `partitionkey` attribute (the Partitioning extension), so a
reader mapping keys by the binding's rule gets the key the bridge wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from bridge import jsoncodec
from bridge.normalise.event import CLOUDEVENTS_CONTENT_TYPE, Event

Mode = Literal["structured", "binary"]
Headers = tuple[tuple[str, bytes], ...]

CONTENT_TYPE = "content-type"
CE_PREFIX = "ce_"
ID_HEADER = "pinecall-id"
TYPE_HEADER = "pinecall-type"
_REQUIRED = frozenset({"specversion", "id", "source", "type"})


def encode(event: Event, source: str, key: bytes | None, mode: Mode) -> tuple[bytes, Headers]:
    """The value and headers of the record that carries `event` under record key `key`."""
    ce = event.to_cloudevent(source, None if key is None else key.decode())
    ours = ((ID_HEADER, event.id.encode()), (TYPE_HEADER, event.type.encode()))
    if mode == "structured":
        return jsoncodec.dumps(ce), ((CONTENT_TYPE, CLOUDEVENTS_CONTENT_TYPE), *ours)
    data = ce.pop("data")
    # Binding 3.2.1: in binary mode `content-type` is the datacontenttype attribute.
    headers = [(CONTENT_TYPE, str(ce.pop("datacontenttype")).encode())]
    headers.extend((CE_PREFIX + name, header_value(value)) for name, value in ce.items())
    return jsoncodec.dumps(data), (*headers, *ours)


def header_value(value: str | int | bool) -> bytes:
    """An attribute's canonical string form in the CloudEvents type system, as UTF-8."""
    if isinstance(value, bool):  # before int: bool is an int, and True is not "True" here
        return b"true" if value else b"false"
    return str(value).encode()


def decode(headers: Iterable[tuple[str, bytes]], value: bytes | None) -> dict[str, Any] | None:
    """A record's CloudEvent as the structured JSON object, or None when it is not one.

    The mode is read as the binding says: structured when `content-type` is a CloudEvents media
    type, binary when `ce_` headers carry every required attribute (whose values stay strings).
    """
    content_type: str | None = None
    attributes: dict[str, Any] = {}
    for name, raw in headers:
        lowered = name.lower()
        if lowered == CONTENT_TYPE:
            content_type = raw.decode(errors="replace")
        elif lowered.startswith(CE_PREFIX):
            attributes[lowered.removeprefix(CE_PREFIX)] = raw.decode(errors="replace")
    if content_type is not None and content_type.lower().startswith("application/cloudevents"):
        try:
            event = jsoncodec.loads(value or b"")
        except jsoncodec.JSONDecodeError:
            return None
        return event if isinstance(event, dict) else None
    if not attributes.keys() >= _REQUIRED:
        return None
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    if value is not None:
        attributes["data"] = _data(value, content_type)
    return attributes


def _data(value: bytes, content_type: str | None) -> Any:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return jsoncodec.loads(value)
        except jsoncodec.JSONDecodeError:
            pass
    return value.decode(errors="replace")
