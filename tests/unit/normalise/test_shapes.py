import hashlib
from typing import Any

import pytest

from bridge import jsoncodec
from bridge.normalise import Event, Unrecognised, event_time, normalise, shapes, split_body
from bridge.normalise.shapes import to_epoch

NOW = 1_790_000_000.0


def norm(item: object) -> Event:
    result = normalise(item, channel="webhook", received_at=NOW)
    assert isinstance(result, Event), result
    return result


def entry(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "seq": 7,
        "ts": 1_789_999_999.5,
        "call": "CA_8f4a2c",
        "agent": "support",
        "type": "turn.user",
        "ephemeral": False,
        "data": {"text": "hello", "call_id": "tool_1"},
    }
    base.update(over)
    return base


def test_log_entry_maps_every_field() -> None:
    e = norm(entry())
    assert (e.id, e.type, e.call, e.agent, e.seq) == (
        "CA_8f4a2c:7",
        "turn.user",
        "CA_8f4a2c",
        "support",
        7,
    )
    assert e.event_time == 1_789_999_999.5
    assert e.data == {"text": "hello", "call_id": "tool_1"}
    assert not e.ephemeral
    assert not e.marker


def test_log_entry_data_call_id_is_not_the_call() -> None:
    assert norm(entry(call=None)).call is None


def test_agent_log_entry_id_uses_agent() -> None:
    assert norm(entry(call=None, type="agent.registered")).id == "@support:7"


def test_seq_zero_falls_back_to_content_hash() -> None:
    item = entry(seq=0, call=None, type="release.changed")
    expected = "sha256:" + hashlib.sha256(jsoncodec.canonical(item)).hexdigest()
    assert norm(item).id == expected


def test_payload_id_wins() -> None:
    assert norm(entry(id="evt_1")).id == "evt_1"
    assert norm({"type": "call.started", "id": 42, "data": {}}).id == "42"


def test_the_largest_seq_cloudevents_integer_holds_is_kept() -> None:
    assert norm(entry(seq=2**31 - 1)).to_cloudevent("s")["pinecallseq"] == 2**31 - 1


@pytest.mark.parametrize("payload_id", [1.5, 7.0, True, False, ["evt_1"], {"id": "evt_1"}])
def test_an_id_of_no_usable_type_is_refused(payload_id: object) -> None:
    # Read as none, the event took a content id and its own id was nowhere in what was published.
    for item in (entry(id=payload_id), {"type": "call.started", "id": payload_id, "data": {}}):
        result = normalise(item, channel="webhook", received_at=NOW)
        assert result == Unrecognised("invalid_id", item)


@pytest.mark.parametrize("payload_id", [None, ""])
def test_a_null_or_empty_id_is_none(payload_id: object) -> None:
    item = {"type": "call.started", "id": payload_id, "data": {}}
    assert norm(item).id == shapes.content_id(item)


def test_an_id_up_to_64_bits_is_its_decimal() -> None:
    assert norm({"type": "call.started", "id": 2**64 - 1, "data": {}}).id == str(2**64 - 1)


@pytest.mark.parametrize("field", ["agent", "org", "env"])
@pytest.mark.parametrize("value", [42, True, ["acme"], "x" * 5_000 + "\n", "sandbox\r\nforged"])
def test_an_alerts_agent_org_or_env_that_is_no_id_is_refused(field: str, value: object) -> None:
    # Read as none (or kept, env), it vanished from the event or became a 5,000-character header.
    for item in (
        {"type": "monitor.fired", "org": "acme", "env": "production", "at": 1, "data": {}},
        {"type": "call.started", "data": {}},
    ):
        item = {**item, field: value}
        result = normalise(item, channel="webhook", received_at=NOW)
        assert result == Unrecognised("invalid_id", item)


def test_ephemeral_and_markers_are_flagged() -> None:
    assert norm(entry(ephemeral=True, type="user.transcript")).ephemeral
    assert norm(entry(type="log.caught_up")).marker
    assert norm(entry(type="log.gap", data={"from_seq": 1, "to_seq": 5, "snapshot": {}})).marker


@pytest.mark.parametrize("seq", [-1, "7", 1.5, True, None, 2**31, 2**63])
def test_bad_seq_is_unrecognised(seq: object) -> None:
    result = normalise(entry(seq=seq), channel="webhook", received_at=NOW)
    assert result == Unrecognised("invalid_seq", entry(seq=seq))


def test_documented_shape() -> None:
    e = norm(
        {
            "type": "call.started",
            "data": {"call_id": "CA_1", "from": "+1"},
            "timestamp": "2026-11-23T10:00:00Z",
        }
    )
    assert e.call == "CA_1"
    assert e.event_time == 1_795_428_000.0
    assert e.id.startswith("sha256:")


@pytest.mark.parametrize("key", ["timestamp", "created_at", "time"])
def test_documented_time_keys(key: str) -> None:
    assert norm({"type": "x.y", "data": {}, key: 1_700_000_000}).event_time == 1_700_000_000.0


def test_alert_shape() -> None:
    item = {
        "type": "monitor.fired",
        "org": "org_1",
        "env": "production",
        "agent": "support",
        "at": 1_700_000_000.25,
        "data": {"monitor": "m"},
    }
    e = norm(item)
    assert (e.org, e.env, e.agent, e.call, e.event_time) == (
        "org_1",
        "production",
        "support",
        None,
        1_700_000_000.25,
    )
    assert e.id.startswith("sha256:")


def test_webhook_test_alert_has_null_agent() -> None:
    e = norm(
        {
            "type": "webhook.test",
            "org": "org_1",
            "env": "sandbox",
            "agent": None,
            "at": 1,
            "data": {},
        }
    )
    assert e.agent is None
    assert e.org == "org_1"


def test_legacy_frame() -> None:
    e = norm({"event": "call.started", "callId": "CA_9", "from": "+1", "timestamp": 1_700_000_000})
    assert (e.type, e.call) == ("call.started", "CA_9")
    assert e.data == {"from": "+1", "timestamp": 1_700_000_000}


def test_an_unreadable_time_key_gives_way_to_the_next() -> None:
    e = norm({"event": "call.started", "callId": "CA_9", "timestamp": "soon", "ts": 1_700_000_000})
    assert e.event_time == 1_700_000_000.0


def test_legacy_frame_keeps_its_agent() -> None:
    e = norm({"event": "bot.word", "agent": "pines", "word": "hi"})
    assert (e.type, e.call, e.agent) == ("bot.word", None, "pines")
    assert e.data == {"agent": "pines", "word": "hi"}


@pytest.mark.parametrize("agent", [42, ["support"], {"name": "support"}])
def test_a_legacy_frames_agent_of_another_type_stays_in_its_data_only(agent: object) -> None:
    # Its fields are the payload's: kept whole in data, no field of it refuses the frame.
    e = norm({"event": "agent.note", "callId": "CA_1", "agent": agent})
    assert (e.call, e.agent, e.data) == ("CA_1", None, {"agent": agent})


def test_legacy_frame_whose_payload_has_a_type() -> None:
    e = norm({"event": "participant.joined", "callId": "CA_1", "type": "sip", "id": "CA_1:7"})
    assert (e.type, e.call, e.id) == ("participant.joined", "CA_1", "CA_1:7")
    assert e.data == {"type": "sip"}


def test_unknown_fields_and_types_are_kept() -> None:
    e = norm(entry(type="brand.new.type", region="eu"))
    assert e.type == "brand.new.type"
    assert e.extra == {"region": "eu"}
    ce = e.to_cloudevent("https://api.pinecall.io")
    assert jsoncodec.loads(ce["pinecallextra"]) == {"region": "eu"}


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ([], "not_an_object"),
        ("text", "not_an_object"),
        ({"data": {}}, "missing_type"),
        ({"type": 5, "data": {}}, "invalid_type"),
        ({"type": "", "data": {}}, "invalid_type"),
        ({"type": "x" * 300, "data": {}}, "invalid_type"),
        ({"type": "turn.user\n12:00:00 ERROR forged", "data": {}}, "invalid_type"),
        ({"event": "call.started\x00", "callId": "CA_1"}, "invalid_type"),
        (entry(call="x" * 1_048_576), "invalid_call_id"),
        (entry(call="CA_1/../../v1/events"), "invalid_call_id"),
        (entry(call=".."), "invalid_call_id"),
        (entry(call="CA_1\nforged"), "invalid_call_id"),
        ({"event": "call.started", "callId": "a\\b"}, "invalid_call_id"),
        ({"type": "call.ended", "data": {"call_id": "x" * 300}}, "invalid_call_id"),
        (entry(id="x" * 300), "invalid_id"),
        (entry(id="e\x00"), "invalid_id"),
        (entry(call=None, agent="x" * 300), "invalid_id"),
        ({"type": "monitor.fired", "org": "o\n", "at": 1, "data": {}}, "invalid_id"),
        ({"type": "call.started"}, "invalid_data"),
        ({"type": "call.started", "data": [1]}, "invalid_data"),
        ({"type": "monitor.fired", "org": "o", "at": 1, "data": "no"}, "invalid_data"),
        (entry(data=None), "invalid_data"),
    ],
)
def test_unrecognised(item: object, reason: str) -> None:
    result = normalise(item, channel="webhook", received_at=NOW)
    assert isinstance(result, Unrecognised)
    assert result.reason == reason


@pytest.mark.parametrize("call", [12345, True, ["CA_1"], {"id": "CA_1"}])
def test_a_call_that_is_no_string_is_no_call_id_not_no_call(call: object) -> None:
    # Read as no call, it took the id of the agent's own log line of the same seq (`@support:7`),
    # and the dedup stage dropped whichever of the two came second.
    result = normalise(entry(call=call), channel="webhook", received_at=NOW)
    assert isinstance(result, Unrecognised)
    assert result.reason == "invalid_call_id"


def test_a_legacy_frame_whose_call_id_is_no_string_is_no_call_id() -> None:
    # Read as none, the frame landed as no call's (the alerts topic), its call id nowhere in it.
    result = normalise(
        {"event": "call.started", "callId": 123}, channel="websocket", received_at=NOW
    )
    assert isinstance(result, Unrecognised)
    assert result.reason == "invalid_call_id"


@pytest.mark.parametrize("call", [12345, True, ["CA_1"], {"id": "CA_1"}])
def test_a_documented_events_call_id_that_is_no_string_is_no_call_id(call: object) -> None:
    # Read as none, the call's event went to the alerts topic, keyed by no call: 200, unseen.
    item = {"type": "call.started", "data": {"call_id": call}}
    result = normalise(item, channel="webhook", received_at=NOW)
    assert isinstance(result, Unrecognised)
    assert result.reason == "invalid_call_id"


def test_a_documented_event_with_a_null_or_empty_call_id_is_no_calls() -> None:
    for call in (None, ""):
        assert norm({"type": "monitor.note", "data": {"call_id": call}}).call is None


@pytest.mark.parametrize("agent", [5, False, ["support"]])
def test_an_agent_that_is_no_string_is_no_id(agent: object) -> None:
    result = normalise(entry(call=None, agent=agent), channel="webhook", received_at=NOW)
    assert isinstance(result, Unrecognised)
    assert result.reason == "invalid_id"


def test_a_call_spelt_as_an_agents_log_is_no_call_id() -> None:
    # Taken as a call, its line 7 had the id of agent support's own line 7: one was dropped.
    assert norm(entry(call=None)).id == "@support:7"
    result = normalise(entry(call="@support"), channel="webhook", received_at=NOW)
    assert isinstance(result, Unrecognised)
    assert result.reason == "invalid_call_id"


def test_an_empty_call_is_still_an_agent_log_line() -> None:
    assert norm(entry(call="")).id == "@support:7"


def test_same_event_same_id_across_channels_and_bytes() -> None:
    a = jsoncodec.loads(b'{"type":"call.ended","data":{"call_id":"CA_1","duration":3}}')
    b = jsoncodec.loads(b'{ "data": {"duration": 3, "call_id": "CA_1"}, "type": "call.ended" }')
    wa = normalise(a, channel="webhook", received_at=NOW)
    wb = normalise(b, channel="websocket", received_at=NOW + 5)
    assert isinstance(wa, Event)
    assert isinstance(wb, Event)
    assert wa.id == wb.id


def test_split_body() -> None:
    assert split_body([1, 2]) == [1, 2]
    assert split_body({"a": 1}) == [{"a": 1}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000_123, 1_700_000_000.123),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # no offset: UTC
        ("2023-11-14", 1_699_920_000.0),  # a bare date: its midnight, UTC
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("1700000000", 1_700_000_000.0),  # epoch seconds sent as a string
        ("1700000000.5", 1_700_000_000.5),
        ("1700000000123", 1_700_000_000.123),
        ("20231114", 1_699_920_000.0),  # 8 digits: a date
        ("1e9", None),
        ("12.5", None),  # an offset, not a time in 1970
        ("yesterday", None),
        ("", None),
        (True, None),
        (None, None),
        (-5, None),
        (float("inf"), None),
        (1e30, None),
    ],
)
def test_to_epoch(value: object, expected: float | None) -> None:
    got = to_epoch(value)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("number", "text", "expected"),
    [
        (0, "0", None),  # a field left unset, not 1970-01-01
        (0.0, "0.0", None),
        (5, "5", None),
        (12.5, "12.5", None),
        (99_999_999, "99999999", None),
        (-1_700_000_000, "-1700000000", None),
        (10**30, "1" + "0" * 30, None),
        (100_000_000, "100000000", 100_000_000.0),  # the first 9-digit epoch second, 1973
        (1_700_000_000, "1700000000", 1_700_000_000.0),
        (1_700_000_000.5, "1700000000.5", 1_700_000_000.5),
        (1_700_000_000_123, "1700000000123", 1_700_000_000.123),
    ],
)
def test_a_time_reads_the_same_as_a_number_or_a_string(
    number: float, text: str, expected: float | None
) -> None:
    # `ts: 0` was 1970 while `ts: "0"` was no time: zero, negative and absurd times are no time
    # whatever their JSON type, and the same epoch reads the same either way.
    assert to_epoch(number) == to_epoch(text) == expected
    assert norm(entry(ts=number)).time == (NOW if expected is None else expected)


@pytest.mark.parametrize(
    ("written", "as_number"),
    [
        ("1e9", 1e9),
        ("1E9", 1e9),
        ("1e12", 1e9),  # milliseconds
        ("1.5e9", 1.5e9),
        ("1.7e12", 1.7e9),
        ("-1e9", None),  # before 1973
        ("-1000000000", None),
        ("1000000000", 1e9),
    ],
)
def test_a_json_number_in_any_form_is_a_time_a_string_only_in_digits_or_iso(
    written: str, as_number: float | None
) -> None:
    # JSON writes one number as `1e9` or `1000000000` alike; a string is what its sender wrote,
    # and an exponent or a sign in one is no way of writing a time (the README's `time` row).
    number, text = jsoncodec.loads(f'[{written}, "{written}"]'.encode())
    assert to_epoch(number) == as_number
    assert to_epoch(text) == (as_number if written.isdigit() else None)


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "Infinity", "-Infinity", "1e400"])
def test_a_string_naming_no_finite_number_is_no_time(text: str) -> None:
    assert to_epoch(text) is None


def test_an_iso_time_before_1973_is_no_time_either() -> None:
    assert to_epoch("1970-01-01T00:00:00Z") is None
    assert to_epoch("1973-03-03T09:46:40Z") == 100_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-12-31T23:59:60Z", 1_483_228_800.0),  # a leap second: the next second's start
        ("2016-12-31T23:59:60.250Z", 1_483_228_800.25),
        ("2016-12-31 23:59:60+00:00", 1_483_228_800.0),
        ("2016-12-31t23:59:59z", 1_483_228_799.0),  # RFC 3339 allows lower case
        ("2017-01-01T13:59:59.123456789+14:00", 1_483_228_799.123456),
        ("2016-12-31T23:59:61Z", None),
        ("9999-12-31T23:59:60Z", None),  # past what datetime renders
    ],
)
def test_every_rfc3339_time_is_read(text: str, expected: float | None) -> None:
    # Unread, the event took its receipt time: hours off for a call log read back later.
    assert to_epoch(text) == expected
    item = {"type": "turn.user", "data": {}, "time": text}
    assert norm(item).time == (NOW if expected is None else expected)


def test_bad_timestamp_falls_back_to_receipt_time() -> None:
    e = norm(entry(ts="soon"))
    assert e.event_time is None
    assert e.time == NOW


@pytest.mark.parametrize(
    ("item", "kept"),
    [
        (entry(ts="soon"), {"ts": "soon"}),
        (entry(ts=0), {"ts": 0}),
        ({"type": "monitor.fired", "org": "acme", "at": "soon", "data": {}}, {"at": "soon"}),
        (
            {"type": "x.y", "data": {}, "timestamp": "soon", "time": 1_790_000_000},
            {"timestamp": "soon"},
        ),
        ({"type": "x.y", "data": {}, "timestamp": 1_790_000_000, "time": "soon"}, {"time": "soon"}),
        ({"type": "x.y", "data": {}, "timestamp": 1_790_000_000, "time": 1_790_000_001}, {}),
        (entry(ts=None), {}),
        (entry(), {}),
    ],
)
def test_a_time_field_not_read_is_kept_in_the_extras(item: dict[str, Any], kept: object) -> None:
    # The event took another time, or its receipt time: the one given was in none of its fields.
    for known in (shapes.UNREAD, event_time(item)):
        e = norm_known(item, known)
        assert e.extra == kept
        assert jsoncodec.loads(e.to_cloudevent("s").get("pinecallextra", "{}")) == kept


TIMED = [
    ({"seq": 1, "ts": 1_790_000_000.5, "type": "turn.user", "data": {}}, 1_790_000_000.5),
    ({"type": "monitor.fired", "org": "acme", "at": 1_790_000_000}, 1_790_000_000.0),
    ({"type": "x", "data": {}, "created_at": "2026-09-21T14:13:20Z"}, 1_790_000_000.0),
    ({"event": "call.ended", "callId": "CA_1", "ts": 1_790_000_000_000}, 1_790_000_000.0),
    ({"type": "monitor.fired", "org": "acme", "at": "soon"}, None),
    ({"type": "call.started", "data": {}}, None),
    ([1, 2], None),
]


@pytest.mark.parametrize(("item", "expected"), TIMED)
def test_event_time_of_each_shape(item: Any, expected: float | None) -> None:
    assert event_time(item) == expected


@pytest.mark.parametrize(("item", "expected"), TIMED)
def test_a_time_read_before_normalise_gives_the_same_event(item: Any, expected: Any) -> None:
    read = normalise(item, channel="webhook", received_at=NOW, known_time=event_time(item))
    assert read == normalise(item, channel="webhook", received_at=NOW)


def test_normalise_takes_the_time_it_is_given_without_reading_it_again() -> None:
    assert norm_known(entry(ts=1_790_000_000.0), 1_790_000_001.0).event_time == 1_790_000_001.0
    assert norm_known(entry(ts=1_790_000_000.0), None).time == NOW


def norm_known(item: object, known: float | shapes._Unread | None) -> Event:
    result = normalise(item, channel="webhook", received_at=NOW, known_time=known)
    assert isinstance(result, Event), result
    return result


def test_the_payload_id_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str | None] = []
    read = shapes._payload_id

    def counted(item: dict[str, Any]) -> str | None:
        reads.append(read(item))
        return reads[-1]

    monkeypatch.setattr(shapes, "_payload_id", counted)
    assert norm({"type": "x.y", "data": {}, "id": "evt_1"}).id == "evt_1"
    assert reads == ["evt_1"]


@pytest.mark.parametrize(
    "item",
    [
        {"seq": 57, "ts": 1.0, "call": "CA_1", "agent": "a", "type": "call.ended", "data": {}},
        {"seq": 3, "ts": 1.0, "agent": "a", "type": "log.line", "data": {}},
        {"seq": 0, "ts": 1.0, "call": "CA_1", "type": "turn.user", "data": {}},
        {"seq": 4, "id": "E_4", "call": "CA_1", "type": "turn.user", "data": {}},
        {"type": "agent.down", "org": "o", "env": "prod", "at": 1.8e9, "data": {}},
        {"type": "call.ended", "data": {"call_id": "CA_2"}},
        {"type": "call.ended", "id": 12, "data": {}},
        {"event": "transcript", "callId": "CA_3", "text": "hi"},
    ],
)
def test_names_are_those_normalise_gives_what_it_reads(item: dict[str, Any]) -> None:
    event = normalise(item, channel="webhook", received_at=1.0)
    assert isinstance(event, Event)
    assert shapes.names(item) == shapes.Names(event.id, event.type, event.call, call_known=True)


@pytest.mark.parametrize(
    ("item", "named"),
    [
        # Refused for its data: its seq and call still name it, as its published copy would be.
        (
            {"seq": 57, "call": "CA_1", "type": "call.ended", "data": "x"},
            shapes.Names("CA_1:57", "call.ended", "CA_1", call_known=True),
        ),
        # A seq past CloudEvents' Integer, a call id that is no call's: none read.
        ({"seq": 2**40, "call": "CA_1", "type": "t"}, shapes.Names(None, "t", "CA_1", True)),
        ({"seq": 1, "call": 7, "type": 9}, shapes.Names(None, None, None, False)),
        ({"seq": 1, "call": "a/b", "type": "t"}, shapes.Names("a/b:1", "t", None, False)),
        # The documented shape's call is in its data: none there, none read.
        (
            {"type": "t", "data": "x"},
            shapes.Names(shapes.content_id({"type": "t", "data": "x"}), "t"),
        ),
        ({"id": {"no": "id"}, "data": {"call_id": "CA_1"}}, shapes.Names(None, None, "CA_1", True)),
        ([1, 2], shapes.Names()),
    ],
)
def test_names_of_what_normalise_refuses_are_those_it_can_read(
    item: Any, named: shapes.Names
) -> None:
    assert isinstance(normalise(item, channel="webhook", received_at=1.0), Unrecognised)
    assert shapes.names(item) == named


def test_a_notes_names_leave_out_its_own_content_id() -> None:
    note = {"call": "CA_1", "seq": None, "type": "turn.user", "bytes": 9}
    assert shapes.names(note, content=False) == shapes.Names(None, "turn.user", "CA_1", True)
    assert shapes.names({"data": "head", "truncated": True}, content=False) == shapes.Names()
