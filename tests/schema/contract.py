"""The AsyncAPI contract (bridge/schema/asyncapi.yaml) as checks on records read from Kafka.

The schemas are the ones the document names, resolved from it (file references and JSON
pointers), never copies: a record the bridge wrote must match its message's payload, headers and
key. The integration tests' reading helpers pass every record through `check`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bridge import jsoncodec
from bridge.ingest.record import PREFIX as INGEST_PREFIX

DOCUMENT = Path(__file__).resolve().parents[2] / "bridge" / "schema" / "asyncapi.yaml"


class ContractError(AssertionError):
    """A record that does not match the message the AsyncAPI document names for it."""


def _pointer(document: Any, pointer: str) -> Any:
    for part in [p for p in pointer.split("/") if p]:
        document = document[part.replace("~1", "/").replace("~0", "~")]
    return document


def _resolve(node: Any, base: Path, document: Any) -> Any:
    """`node` with a top-level `$ref` (to this document or a file beside it) followed."""
    while isinstance(node, dict) and "$ref" in node:
        target, _, pointer = node["$ref"].partition("#")
        if target:
            base = (base.parent / target).resolve()
            text = base.read_text()
            document = json.loads(text) if base.suffix == ".json" else yaml.safe_load(text)
        node = _pointer(document, pointer)
    return node


@functools.cache
def messages() -> dict[str, dict[str, Any]]:
    """Per kind of record ("structured", "binary", "dead-letter"): its payload, headers and key
    schemas, as the document names them. Kinds share payload and headers on every topic; keys
    differ by topic (a call id; or a call id, agent, org or none), so any of them is accepted."""
    document = yaml.safe_load(DOCUMENT.read_text())
    found: dict[str, dict[str, Any]] = {}
    keys: dict[str, list[Any]] = {}
    for name, message in document["components"]["messages"].items():
        kind = message.get("x-cloudevents-mode") or (
            "dead-letter" if name == "deadLetter" else None
        )
        if kind is None:
            continue
        schemas = {
            part: _resolve(message[part], DOCUMENT, document) for part in ("payload", "headers")
        }
        if found.setdefault(kind, schemas) != schemas:
            raise ContractError(f"the {kind} messages name different schemas")
        keys.setdefault(kind, []).append(
            _resolve(message["bindings"]["kafka"]["key"], DOCUMENT, document)
        )
    return {kind: {**schemas, "key": {"anyOf": keys[kind]}} for kind, schemas in found.items()}


@functools.cache
def channels(routed: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """Per output channel with an address, by its last dotted part ("events" for
    pinecall.events, as the tests' topics end too): its kinds of record and their schemas.

    `routed`: the messages a routing rule naming the channel's topic brings (those named
    `routed...`) in place of its own, for the channels that have such messages; else its own.
    """
    document = yaml.safe_load(DOCUMENT.read_text())
    call_key = document["components"]["schemas"]["callKey"]
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for channel in document["channels"].values():
        address = channel.get("address")
        if address is None or {"name": "output"} not in channel.get("tags", []):
            continue
        named = channel["messages"]
        if not routed or not any(name.startswith("routed") for name in named):
            named = {n: ref for n, ref in named.items() if not n.startswith("routed")}
        else:
            named = {n: ref for n, ref in named.items() if n.startswith("routed")}
        kinds: dict[str, dict[str, Any]] = {}
        for ref in named.values():
            message = _resolve(ref, DOCUMENT, document)
            kind = message.get("x-cloudevents-mode") or "dead-letter"
            key = _resolve(message["bindings"]["kafka"]["key"], DOCUMENT, document)
            kinds[kind] = {
                part: _resolve(message[part], DOCUMENT, document) for part in ("payload", "headers")
            } | {"key": key, "call_keyed": key is call_key}
        found[address.rsplit(".", 1)[-1]] = kinds
    return found


# jsonschema checks `format: date-time` only with rfc3339-validator installed, which the bridge
# does not depend on: unchecked, any string ending in Z would pass for a time. RFC 3339 section
# 5.6, its ranges checked by datetime (a leap second, :60, read as :59).
_DATE_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.\d+)?(?:[Zz]|[+-](\d\d):(\d\d))"
)
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # the format says nothing of other types; `type` does
    found = _DATE_TIME.fullmatch(instance)
    if found is None:
        return False
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    datetime(year, month, day, hour, minute, 59 if second == 60 else second)
    offset_hour, offset_minute = found.groups()[6:]
    return offset_hour is None or (int(offset_hour) < 24 and int(offset_minute) < 60)


def _validate(instance: Any, schema: Any, what: str) -> None:
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=FORMATS)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        raise ContractError(f"{what}: " + "; ".join(e.message for e in errors[:3]))


def _ingest(headers: Mapping[str, bytes]) -> bool:
    return any(name.startswith(INGEST_PREFIX) for name in headers)


def kind_of(headers: Mapping[str, bytes]) -> str | None:
    """Which message a record is, by its headers; None: not an output record of the bridge."""
    if _ingest(headers):
        return None  # the internal ingest topic: not a consumer's record
    if "pinecall-dlq-reason" in headers:
        return "dead-letter"
    content_type = headers.get("content-type", b"").decode(errors="replace")
    if content_type.startswith("application/cloudevents"):
        return "structured"
    if any(name.startswith("ce_") for name in headers):
        return "binary"
    return None


def check(
    key: bytes | None,
    value: bytes | None,
    headers: Mapping[str, bytes],
    topic: str = "",
    *,
    routed: bool = False,
) -> None:
    """Raise ContractError unless an output record matches its message in asyncapi.yaml.

    A record without any header is a test's own raw write, left alone; one with headers that
    name no message (a bridge record that lost its CloudEvents headers) is refused. On a topic
    named like an output channel (its last dotted part), the record must be one of that
    channel's messages, with its key; elsewhere (routing rules' topics) any message. `routed`:
    a routing rule names the topic, so the channel's messages for what a rule brings apply.
    """
    kind = kind_of(headers)
    if kind is None:
        if headers and not _ingest(headers):
            raise ContractError(f"headers {sorted(headers)} name no message of asyncapi.yaml")
        return
    channel = channels(routed).get(topic.rsplit(".", 1)[-1])
    if channel is not None and kind not in channel:
        raise ContractError(f"a {kind} record on {topic}: not a message of its channel")
    schemas = messages()[kind] if channel is None else channel[kind]
    texts = {name: raw.decode() for name, raw in headers.items()}
    _validate(texts, schemas["headers"], f"{kind} record headers")
    _validate(None if key is None else key.decode(), schemas["key"], f"{kind} record key")
    if kind == "dead-letter":
        return  # the input's bytes as received: any payload
    try:
        payload = jsoncodec.loads(value or b"")
    except jsoncodec.JSONDecodeError as exc:
        raise ContractError(f"{kind} record value is not JSON: {exc}") from None
    _validate(payload, schemas["payload"], f"{kind} record value")
    attributes = payload if kind == "structured" else texts
    prefix = "" if kind == "structured" else "ce_"
    # The header's pattern holds it to ten digits; CloudEvents' Integer is 32-bit signed.
    seq = texts.get("ce_pinecallseq") if kind == "binary" else None
    if seq is not None and int(seq) > 2**31 - 1:
        raise ContractError(f"{kind} record: ce_pinecallseq {seq} beyond CloudEvents' Integer")
    partition_key = attributes.get(prefix + "partitionkey")
    if partition_key != (None if key is None else key.decode()):
        raise ContractError(f"{kind} record: key {key!r} is not its partitionkey {partition_key!r}")
    # The schema's rule: the call id (subject), else '@' + agent, else the org, else none.
    subject, agent, org = (
        attributes.get(prefix + name) for name in ("subject", "pinecallagent", "pinecallorg")
    )
    rule = subject or (agent and "@" + agent) or org
    if partition_key != rule:
        raise ContractError(f"{kind} record: key {key!r}, where the schema's rule gives {rule!r}")
    named = (texts.get("pinecall-id"), texts.get("pinecall-type"))
    if named != (attributes.get(prefix + "id"), attributes.get(prefix + "type")):
        raise ContractError(f"{kind} record: pinecall-id and pinecall-type {named} are not its own")
    if channel is not None and channel[kind]["call_keyed"] and subject is None:
        raise ContractError(f"a {kind} record of no call on {topic}, keyed by the call id")
