import json
from pathlib import Path

import jsonschema
import pytest

from bridge import jsoncodec
from bridge.normalise import Event, normalise
from bridge.normalise.event import rfc3339
from bridge.normalise.ids import NOT_IN_A_STRING

SCHEMA = json.loads(
    (Path(__file__).parents[3] / "bridge/schema/pinecall-cloudevent.schema.json").read_text()
)


def make(item: dict[str, object]) -> Event:
    event = normalise(item, channel="webhook", received_at=1_700_000_001.5)
    assert isinstance(event, Event)
    return event


def test_rfc3339_is_utc_with_millis() -> None:
    assert rfc3339(1_700_000_000.123456) == "2023-11-14T22:13:20.123Z"


def test_cloudevent_of_a_log_entry() -> None:
    ce = make(
        {
            "seq": 3,
            "ts": 1_700_000_000,
            "call": "CA_1",
            "agent": "a1",
            "type": "turn.agent",
            "ephemeral": False,
            "data": {"text": "hi"},
        }
    ).to_cloudevent("https://api.pinecall.io")
    assert ce == {
        "specversion": "1.0",
        "id": "CA_1:3",
        "source": "https://api.pinecall.io",
        "type": "turn.agent",
        "subject": "CA_1",
        "time": "2023-11-14T22:13:20.000Z",
        "datacontenttype": "application/json",
        "pinecallseq": 3,
        "pinecallagent": "a1",
        "pinecallchannel": "webhook",
        "pinecallreceivedat": "2023-11-14T22:13:21.500Z",
        "data": {"text": "hi"},
    }
    jsonschema.validate(ce, SCHEMA)


def test_cloudevent_of_an_alert_validates() -> None:
    ce = make(
        {
            "type": "spend.unusual",
            "org": "o1",
            "env": "production",
            "agent": "a",
            "at": 1_700_000_000,
            "data": {},
            "x": 1,
        }
    ).to_cloudevent("s")
    assert "subject" not in ce
    assert (ce["pinecallorg"], ce["pinecallenv"]) == ("o1", "production")
    jsonschema.validate(ce, SCHEMA)


def test_extra_fields_keep_out_what_cloudevents_strings_disallow() -> None:
    # JSON text leaves the C1 controls and noncharacters raw, which a String attribute may not
    # hold; escaped, pinecallextra reads back as the very same fields.
    extra = {"note": "a\x85b\x7f", "k\x9f": "\ufffe \U0010ffff", "ok": "café"}
    ce = make({"type": "x.y", "data": {}, **extra}).to_cloudevent("https://api.pinecall.io")
    assert NOT_IN_A_STRING.search(ce["pinecallextra"]) is None
    assert jsoncodec.loads(ce["pinecallextra"]) == extra
    jsonschema.validate(ce, SCHEMA)


def test_time_falls_back_to_receipt() -> None:
    ce = make({"type": "call.started", "data": {"call_id": "CA"}}).to_cloudevent("s")
    assert ce["time"] == ce["pinecallreceivedat"]


def test_schema_refuses_a_broken_event() -> None:
    ce = make({"type": "call.started", "data": {"call_id": "CA"}}).to_cloudevent("s")
    del ce["id"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ce, SCHEMA)


def test_rfc3339_agrees_with_datetime() -> None:
    import random
    from datetime import UTC, datetime

    rng = random.Random(7)
    samples = [rng.uniform(0, 4_000_000_000) for _ in range(5000)]
    samples += [1_700_000_000.9999996, 1_700_000_000.0004999, 0.0, 1_700_000_000.123]
    for moment in samples:
        reference = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert rfc3339(moment) == reference.replace("+00:00", "Z"), moment
