"""The contract check the integration tests' reading helpers run on every record: records the
bridge encodes pass it; a record off the contract in any part fails it."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from bridge import jsoncodec
from bridge.config import RoutingRule, TopicSettings
from bridge.normalise import Event, normalise
from bridge.normalise.binding import Mode, encode
from bridge.routing import Route, Router
from tests.schema import contract

SOURCE = "https://api.pinecall.io"


def event(item: dict[str, object]) -> Event:
    normalised = normalise(item, channel="webhook", received_at=1_700_000_001.5)
    assert isinstance(normalised, Event)
    return normalised


CALL = event({"seq": 3, "ts": 1_700_000_000, "call": "CA_1", "type": "turn.user", "data": {}})
ALERT = event({"type": "monitor.fired", "org": "acme", "at": 1_700_000_000, "data": {"n": 1}})
NOTICE = event({"type": "webhook.test", "data": {}})  # no call, agent or org: unkeyed
# An agent's own log: an ephemeral line of no call.
AGENT_LINE = event(
    {"seq": 4, "ts": 1_700_000_000, "call": None, "agent": "support", "type": "agent.state",
     "ephemeral": True, "data": {}}
)  # fmt: skip


def record(
    ev: Event, key: bytes | None, mode: Mode
) -> tuple[bytes | None, bytes, dict[str, bytes]]:
    value, headers = encode(ev, SOURCE, key, mode)
    return key, value, dict(headers)


DEAD_LETTER = (
    None,
    b'{"data": {}}',
    {
        "content-type": b"application/json",
        "pinecall-dlq-reason": b"missing_type",
        "pinecall-channel": b"webhook",
        "pinecall-received-at": b"1700000001.5",
    },
)


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize(("ev", "key"), [(CALL, b"CA_1"), (ALERT, b"acme"), (NOTICE, None)])
def test_what_the_bridge_encodes_keeps_the_contract(
    ev: Event, key: bytes | None, mode: Mode
) -> None:
    contract.check(*record(ev, key, mode))
    assert contract.kind_of(record(ev, key, mode)[2]) == mode


def test_dead_letters_keep_the_contract() -> None:
    contract.check(*DEAD_LETTER)


def test_records_that_are_not_the_bridges_output_are_left_alone() -> None:
    contract.check(b"k", b"not json", {})  # a test's own raw write
    ingest = {"pinecall-ingest-id": b"x", "content-type": b"application/cloudevents+json"}
    contract.check(None, b"whatever", ingest)


def test_an_output_record_that_lost_its_cloudevents_headers_is_refused() -> None:
    with pytest.raises(contract.ContractError, match="name no message"):
        contract.check(b"CA_1", b'{"id": "CA_1:1"}', {"content-type": b"application/json"})


def broken_structured() -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    key, value, headers = record(CALL, b"CA_1", "structured")
    ce = jsoncodec.loads(value)
    return [
        (key, jsoncodec.dumps({**ce, "specversion": "0.3"}), headers),  # payload off the schema
        (key, jsoncodec.dumps({k: v for k, v in ce.items() if k != "type"}), headers),
        (key, jsoncodec.dumps({**ce, "surprise": 1}), headers),  # additionalProperties: false
        (key, b"{not json", headers),
        # `format: date-time`, which their pattern (Z$) alone lets through.
        (key, jsoncodec.dumps({**ce, "time": "2026-13-45T25:00:00Z"}), headers),
        (key, jsoncodec.dumps({**ce, "pinecallreceivedat": "yesterday, Z"}), headers),
        (key, value, {k: v for k, v in headers.items() if k != "pinecall-id"}),  # headers
        (key, value, {**headers, "ce_id": b"x"}),  # a ce_ header in structured mode
        (b"CA_2", value, headers),  # key is not the partitionkey
        (None, value, headers),
        (key, value, {**headers, "pinecall-id": b"CA_1:4"}),  # not the event's id
        (key, value, {**headers, "pinecall-type": b"turn.agent"}),
        record(ALERT, b"someone", "structured"),  # key and partitionkey not the org's
        record(CALL, b"@support", "structured"),  # a call's event keyed by its agent
        # Past CloudEvents' Integer (32-bit signed); an env no id could be.
        (key, jsoncodec.dumps({**ce, "pinecallseq": 2**31}), headers),
        (key, jsoncodec.dumps({**ce, "pinecallenv": "sandbox\nforged"}), headers),
        (key, jsoncodec.dumps({**ce, "pinecallorg": "o" * 257}), headers),
    ]


def broken_others() -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    key, value, headers = record(CALL, b"CA_1", "binary")
    dl_key, dl_value, dl_headers = DEAD_LETTER
    return [
        (key, value, {k: v for k, v in headers.items() if k != "ce_time"}),
        (key, value, {**headers, "ce_pinecallchannel": b"carrier-pigeon"}),
        (key, value, {**headers, "ce_time": b"2026-02-30T10:00:00Z"}),
        (key, b"{not json", headers),
        (b"", value, headers),  # an empty key: not a call id
        (dl_key, dl_value, {**dl_headers, "pinecall-received-at": b"yesterday"}),
        (b"k", dl_value, dl_headers),  # dead letters are unkeyed
        (key, value, {**headers, "pinecall-id": b"CA_1:4"}),
        record(ALERT, b"someone", "binary"),
        (key, value, {**headers, "ce_pinecallseq": str(2**31).encode()}),
        (key, value, {**headers, "ce_pinecallseq": b"99999999999"}),
        (key, value, {**headers, "ce_pinecallagent": b"support\r\n"}),
    ]


@pytest.mark.parametrize("bad", [*broken_structured(), *broken_others()])
def test_a_record_off_the_contract_fails(bad: tuple[bytes | None, bytes, dict[str, bytes]]) -> None:
    with pytest.raises(contract.ContractError):
        contract.check(*bad)


@pytest.mark.parametrize(
    ("text", "conforms"),
    [
        ("2026-09-21T14:13:20.500Z", True),
        ("2026-09-21T14:13:20Z", True),
        ("2016-12-31T23:59:60Z", True),  # a leap second
        ("2026-09-21t14:13:20.5+02:00", True),
        ("2026-09-21T14:13:20", False),  # no offset
        ("2026-09-21 14:13:20Z", False),
        ("2026-09-21T14:13:61Z", False),
        ("2026-02-29T00:00:00Z", False),
        ("2026-09-21T14:13:20+24:00", False),
        ("20260921T141320Z", False),  # ISO 8601's basic form: not RFC 3339
    ],
)
def test_the_check_holds_times_to_rfc_3339(text: str, conforms: bool) -> None:
    assert contract.FORMATS.conforms(text, "date-time") is conforms


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_each_topic_takes_its_own_messages_and_keys(mode: Mode) -> None:
    """A test's topics end like the channels' addresses (`it.<run>.events`)."""
    contract.check(*record(CALL, b"CA_1", mode), "it.x.events")
    contract.check(*record(CALL, b"CA_1", mode), "it.x.ephemeral")
    contract.check(*record(AGENT_LINE, b"@support", mode), "it.x.ephemeral")  # an agent's log
    contract.check(*record(AGENT_LINE, b"@support", mode), "it.x.alerts")
    contract.check(*record(NOTICE, None, mode), "it.x.ephemeral")
    contract.check(*record(ALERT, b"acme", mode), "it.x.alerts")
    contract.check(*record(NOTICE, None, mode), "it.x.alerts")
    contract.check(*record(NOTICE, None, mode), "it.x.metrics")  # a routing rule's topic
    contract.check(*DEAD_LETTER, "it.x.dlq")
    for bad, topic in (
        (record(NOTICE, None, mode), "it.x.events"),  # a call's topic is keyed by the call id
        (record(AGENT_LINE, b"@support", mode), "it.x.events"),
        (record(CALL, b"CA_1", mode), "it.x.dlq"),
        (DEAD_LETTER, "it.x.events"),
        (DEAD_LETTER, "it.x.alerts"),
    ):
        with pytest.raises(contract.ContractError):
            contract.check(*bad, topic)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_a_rule_naming_the_events_topic_sends_what_its_channel_describes(mode: Mode) -> None:
    """README: a rule's topic may be the events topic, and it takes every event the rule matches,
    of a call or not: the events channel must describe those of no call too (key, no subject)."""
    events = TopicSettings().events
    router = Router(TopicSettings(), [RoutingRule(match="*", topic=events)])
    for ev in (CALL, ALERT, NOTICE):
        route = router.route(ev)
        assert isinstance(route, Route)
        assert route.topic == events
        contract.check(*record(ev, route.key, mode), events, routed=True)
    # Without a rule naming it, the topic holds a call's events only, keyed by the call id.
    with pytest.raises(contract.ContractError):
        contract.check(*record(NOTICE, None, mode), events)


def test_the_schemas_are_the_ones_the_document_names() -> None:
    schemas = contract.messages()
    assert set(schemas) == {"structured", "binary", "dead-letter"}
    # The payload is the JSON Schema file itself, resolved through the document's $ref.
    assert (
        schemas["structured"]["payload"]["title"]
        == "Pinecall event as published by pinecall-bridge"
    )
    assert schemas["binary"]["headers"]["required"][1] == "ce_specversion"
    assert {name: set(kinds) for name, kinds in contract.channels().items()} == {
        "events": {"structured", "binary"},
        "alerts": {"structured", "binary"},
        "dlq": {"dead-letter"},
        "ephemeral": {"structured", "binary"},
    }


def test_the_integration_tests_reading_helpers_apply_the_check() -> None:
    from tests.integration.conftest import Consumed

    def read(key: bytes | None, value: bytes, headers: dict[str, bytes]) -> Consumed:
        m = SimpleNamespace(
            topic="t",
            key=key,
            value=value,
            headers=list(headers.items()),
            partition=0,
            offset=0,
            timestamp=0,
        )
        return Consumed.read(m)

    key, value, headers = record(CALL, b"CA_1", "structured")
    assert read(key, value, headers).json()["id"] == CALL.id
    with pytest.raises(contract.ContractError):
        read(b"CA_other", value, headers)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_the_largest_seq_and_longest_names_keep_the_contract(mode: Mode) -> None:
    ev = event(
        {"seq": 2**31 - 1, "ts": 1_700_000_000, "call": "CA_1", "agent": "a" * 256,
         "type": "turn.user", "data": {}}
    )  # fmt: skip
    contract.check(*record(ev, b"CA_1", mode))


def test_every_attribute_is_named_as_cloudevents_requires() -> None:
    # CloudEvents 1.0 "Naming Conventions": a-z and 0-9 only, at most 20 characters, never
    # `data`. The official Python SDK refuses the whole event over one attribute named otherwise,
    # and the closed schema holds every record the tests read to these names.
    schemas = contract.messages()
    attributes = set(schemas["structured"]["payload"]["properties"]) - {"data"}
    for name in attributes:
        assert re.fullmatch(r"[a-z0-9]{1,20}", name), name
    # Binary mode: each attribute but data is its ce_ header, datacontenttype is content-type.
    ce_headers = {
        name.removeprefix("ce_")
        for name in schemas["binary"]["headers"]["properties"]
        if name.startswith("ce_")
    }
    assert ce_headers == attributes - {"datacontenttype"}
