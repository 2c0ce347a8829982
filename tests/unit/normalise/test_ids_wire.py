"""The dedup ids, pinned: they guard rolling upgrades, rollbacks and restarts.

Two versions that give the same event different ids both publish it: during a rollout old and new
pods dedup each other's copies, and after an upgrade the dedup window restored from the ingest
topic holds the old version's ids. So these ids are spelt out as today's code computes them; a
change to the id scheme, the canonical JSON or the window's digest breaks them, and must not ship
without a plan for the copies in flight.
"""

from typing import Any, get_args

import pytest

from bridge.dedup.window import digest
from bridge.normalise.event import Channel, Event
from bridge.normalise.shapes import normalise

# (entry as sent, its dedup id)
IDS: list[tuple[dict[str, Any], str]] = [
    (
        {
            "seq": 7,
            "ts": 1790000000.5,
            "call": "CA_1",
            "agent": "ag",
            "type": "turn.user",
            "data": {},
        },
        "CA_1:7",
    ),
    ({"seq": 3, "ts": 1790000000.5, "agent": "ag", "type": "agent.log", "data": {}}, "@ag:3"),
    ({"seq": 7, "call": "CA_1", "type": "turn.user", "data": {}, "id": "evt_9"}, "evt_9"),
    ({"seq": 7, "call": "CA_1", "type": "turn.user", "data": {}, "id": 42}, "42"),
    # Content ids: canonical JSON (sorted keys, no whitespace, UTF-8 unescaped, shortest floats).
    (
        {
            "seq": 0,
            "ts": 1790000000.5,
            "call": "CA_1",
            "type": "turn.user",
            "data": {"b": 1.5, "a": "é"},
        },
        "sha256:1e9d994e5848f60170b3bc0720594453a6e11b097e333d2f0ec4b841a2f3100f",
    ),
    (
        {
            "type": "alert.raised",
            "org": "o",
            "env": "prod",
            "agent": "ag",
            "at": "2026-09-21T10:00:00Z",
            "data": {"n": [1, 2, {"z": None, "y": True}]},
        },
        "sha256:3c98752b1ce692a460ff73b239d996e44021e56e69542a385bf1e58b48221fce",
    ),
    (
        {
            "type": "call.ended",
            "data": {"call_id": "CA_2", "duration": 12.25},
            "timestamp": "2026-09-21T10:00:00+02:00",
        },
        "sha256:45110b992b5cdbcc584a76d05056f36354334ecdf6a4a3e70210d8c946108ad4",
    ),
    (
        {"event": "call.started", "callId": "CA_3", "from": "+15550001"},
        "sha256:12f0be557edec4b6d592245258698965a21567f6eccdf0066f3b9ab53cf087bc",
    ),
]


@pytest.mark.parametrize("channel", get_args(Channel))
@pytest.mark.parametrize(("item", "expected"), IDS)
def test_every_channel_gives_an_event_the_pinned_id(
    item: dict[str, Any], expected: str, channel: Channel
) -> None:
    event = normalise(item, channel=channel, received_at=1.0)
    assert isinstance(event, Event)
    assert event.id == expected


@pytest.mark.parametrize(
    ("event_id", "expected"),
    [
        ("CA_1:7", 0x63EB821987C4A83C30BCEB123FC8E52F),
        ("sha256:00", 0xE9A7A2590FDC83C51CA12FE8F0B76A19),
        ("é:1", 0x22BE51FF8672ECFE8CA050EA87BF1945),
    ],
)
def test_the_dedup_window_digests_an_id_as_pinned(event_id: str, expected: int) -> None:
    assert digest(event_id) == expected
