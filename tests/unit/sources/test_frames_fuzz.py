"""Properties of the feed's frame handling: any frame is classified, every event is publishable."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge import jsoncodec
from bridge.sources.frames import CONTROL_TYPES, UNTYPED, classify
from tests.fuzz import hostile_json, json_scalars, pinecall_items, submit_checked

# The feed's own frames, and log entries or legacy events whose type is one of their names: no
# other strategy makes a type of CONTROL_TYPES, so the control branch below would never run.
controls = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(CONTROL_TYPES))},
    optional={
        "seq": json_scalars,
        "event": st.sampled_from(["call.started", "x"]),
        "callId": st.text(max_size=5),
    },
)
# Text frames as websockets hands them over (valid UTF-8), and binary frames.
frames: st.SearchStrategy[str | bytes] = st.one_of(
    hostile_json.map(lambda raw: raw.decode("utf-8", errors="replace")),
    pinecall_items.map(lambda item: jsoncodec.dumps(item).decode()),
    controls.map(lambda item: jsoncodec.dumps(item).decode()),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@given(frames)
def test_any_frame_is_classified_never_raised(message: str | bytes) -> None:
    frame = classify(message)
    assert frame.kind in ("event", "control", "garbage")
    if frame.kind == "garbage":
        assert frame.item is None
        assert frame.detail
        return
    assert isinstance(frame.item, dict)
    if frame.kind == "control":
        assert frame.item["type"] in CONTROL_TYPES
        assert "seq" not in frame.item
    else:
        typed = isinstance(frame.item.get("type"), str) or isinstance(frame.item.get("event"), str)
        assert typed == (frame.detail != UNTYPED)


@given(controls)
def test_a_control_type_is_the_feeds_reply_only_without_a_seq_or_a_legacy_event(
    item: dict[str, Any],
) -> None:
    # A log entry (its seq) or an older SDK's event (event and callId) may carry such a type.
    reply = "seq" not in item and not ("event" in item and "callId" in item)
    assert classify(jsoncodec.dumps(item).decode()).kind == ("control" if reply else "event")


@given(st.lists(frames, max_size=8))
def test_the_events_of_any_frames_are_published_or_dead_lettered(messages: list[Any]) -> None:
    # The reader queues each event frame's item; the publisher submits them as one batch.
    items = [frame.item for frame in map(classify, messages) if frame.kind == "event"]
    submit_checked(items, "websocket")
