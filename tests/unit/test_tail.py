from bridge.tail import TailFilter, render

EVENT = {
    "id": "CA_1:3",
    "type": "turn.user",
    "subject": "CA_1",
    "time": "2026-11-23T10:00:00.000Z",
    "pinecallchannel": "websocket",
    "data": {"text": "x" * 500},
}


def test_filter_by_type_glob_and_call() -> None:
    assert TailFilter().matches(EVENT)
    assert TailFilter(type_glob="turn.*").matches(EVENT)
    assert not TailFilter(type_glob="call.*").matches(EVENT)
    assert TailFilter(call="CA_1").matches(EVENT)
    assert not TailFilter(call="CA_2").matches(EVENT)


def test_render_is_one_short_line() -> None:
    line = render("pinecall.events", b"CA_1", EVENT)
    assert "turn.user" in line
    assert "CA_1:3 via websocket" in line
    assert line.endswith("...")
    assert len(line) < 400


def test_render_without_subject_uses_the_key() -> None:
    line = render("pinecall.alerts", b"@support", {"type": "monitor.fired", "data": {}})
    assert "@support" in line


def test_render_non_cloudevent() -> None:
    assert "not a CloudEvent" in render("t", None, b"raw")
