import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from bench.handlerpath import _old_rfc3339
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


def _written(render: Callable[[float], str], moment: float) -> str:
    """What `render` makes of `moment`: its text, or the name of what it raised."""
    try:
        return render(moment)
    except (ValueError, OverflowError, OSError) as exc:
        return f"raised {type(exc).__name__}"


def test_rfc3339_writes_what_it_wrote_before_its_milliseconds_were_looked_up() -> None:
    # A differential test against the old copy the bench's A/B times: the same text (or error)
    # for every time, the renderable ones and those renderable() refuses alike.
    import random

    rng = random.Random(12)
    samples: list[float] = [rng.uniform(0, 4_000_000_000) for _ in range(20_000)]
    samples += [rng.uniform(-4_000_000_000, 0) for _ in range(2_000)]
    # Each side of second and millisecond boundaries, where the rounding carries or does not.
    for second in [0, 1, 59, 951_868_799, 1_700_000_000, 1_709_251_199, 4_102_444_800]:
        for offset in (0.0, 1e-7, 0.0004994, 0.0004995, 0.0005, 0.9994999, 0.9995, 0.9999995):
            samples += [second + offset, second - offset, -second - offset]
    # Leap days and leap-second dates (UTC has no :60, nor does datetime), a minute's and a
    # year's last instant, the last second of year 9999 and past it, and what is no time.
    samples += [951_782_400.0, 1_709_164_800.5, 78_796_799.9996, 1_483_228_799.9999996]
    samples += [253_402_300_799.0, 253_402_300_799.9994, 253_402_300_799.9996, 1e20, -1e20]
    samples += [-0.0, -1e-7, -0.4999, -0.5, -1.0, -1.9999999, 1_700_000_000, -86_400]
    samples += [float("nan"), float("inf"), float("-inf")]
    differ = [m for m in samples if _written(rfc3339, m) != _written(_old_rfc3339, m)]
    assert differ == []
    assert _written(rfc3339, 1_700_000_000.9999996) == "2023-11-14T22:13:21.000Z"
    assert _written(rfc3339, -1.5) == _written(_old_rfc3339, -1.5) != "raised ValueError"
