"""The feed-path harness: each variant publishes every frame, and is undone after."""

from __future__ import annotations

import pytest

from bench import feedpath
from bench.paired import report
from bridge.sources.websocket import WebSocketSource


@pytest.mark.parametrize("variant", sorted(feedpath.VARIANTS))
async def test_each_variant_publishes_every_frame_and_pairs_the_rounds(variant: str) -> None:
    # The harness raises unless every frame became a record: a broken old variant would show.
    outcome = await feedpath.measure(variant, rounds=2, per_round=7, burst=3)
    assert len(outcome.old) == len(outcome.new) == 2
    assert all(us > 0 for us in outcome.old + outcome.new)
    assert f"{variant}: old min" in report(variant, outcome, "frame")


def test_the_old_variants_are_undone_after_their_round() -> None:
    def current() -> tuple[object, ...]:
        return (WebSocketSource._take, WebSocketSource._hold)

    today = current()
    with feedpath.VARIANTS["all"](feedpath._source()):
        assert all(old is not new for old, new in zip(current(), today, strict=True))
    assert current() == today
