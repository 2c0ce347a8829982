"""The handler-path harness: each variant runs the path end to end, and is undone after."""

from __future__ import annotations

import functools

import pytest

from bench import handlerpath
from bridge import pipeline
from bridge.app import json_errors
from bridge.normalise import shapes
from bridge.pipeline import Pipeline


@pytest.mark.parametrize("variant", sorted(handlerpath.VARIANTS))
async def test_each_variant_handles_every_request_and_pairs_the_rounds(variant: str) -> None:
    # The harness raises on any answer but 200: an old variant that broke the path would show.
    outcome = await handlerpath.measure(variant, rounds=2, per_round=3)
    assert len(outcome.old) == len(outcome.new) == 2
    assert all(us > 0 for us in outcome.old + outcome.new)
    assert f"{variant}: old min" in handlerpath.report(variant, outcome)


def test_the_old_variants_are_undone_after_their_round() -> None:
    def current() -> tuple[object, ...]:
        return (Pipeline._send, shapes._checked, vars(pipeline)["normalise"])

    today = current()
    with handlerpath.VARIANTS["all"]():
        assert all(old is not new for old, new in zip(current(), today, strict=True))
    assert current() == today


async def test_the_stop_middleware_variant_adds_only_the_stop_middleware_on_the_old_side() -> None:
    await handlerpath.measure("stop-middleware", rounds=1, per_round=1)
    path = handlerpath._path
    new = path.call
    assert isinstance(new, functools.partial)
    assert new.func is json_errors
    with handlerpath.VARIANTS["stop-middleware"]():
        old = path.call
        assert isinstance(old, functools.partial)
        assert old.func.__name__ == "closing"
        assert old.keywords["handler"].func is json_errors
    assert path.call is new
