"""Properties of the feed's frame handling: any frame is classified, every event is publishable."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge import jsoncodec
from bridge.sources.frames import CONTROL_TYPES, UNTYPED, classify
from tests.fuzz import hostile_json, pinecall_items, submit_checked

# Text frames as websockets hands them over (valid UTF-8), and binary frames.
frames: st.SearchStrategy[str | bytes] = st.one_of(
    hostile_json.map(lambda raw: raw.decode("utf-8", errors="replace")),
    pinecall_items.map(lambda item: jsoncodec.dumps(item).decode()),
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


@given(st.lists(frames, max_size=8))
def test_the_events_of_any_frames_are_published_or_dead_lettered(messages: list[Any]) -> None:
    # The reader queues each event frame's item; the publisher submits them as one batch.
    items = [frame.item for frame in map(classify, messages) if frame.kind == "event"]
    submit_checked(items, "websocket")
