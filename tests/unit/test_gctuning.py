"""bridge.gctuning: start-up frozen, gen 0 collected less often, cycles still collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from bridge.gctuning import GEN0_THRESHOLD, tune_for_serving

pytestmark = pytest.mark.usefixtures("gc_as_it_was")


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_cycles_made_after_tuning_are_still_collected_without_an_explicit_collect() -> None:
    tune_for_serving()
    alive: list[weakref.ref[_Node]] = []
    for _ in range(20 * GEN0_THRESHOLD):
        alive.append(weakref.ref(_Node()))
    # Each cycle is net allocations that gen 0 counts: collections run on their own, so at most
    # the cycles since the last few are left (a bound, not all 140,000).
    left = sum(ref() is not None for ref in alive)
    assert left < 4 * GEN0_THRESHOLD, left


def test_what_existed_before_tuning_is_frozen_and_what_comes_after_is_not() -> None:
    before = _Node()
    tune_for_serving()
    after = _Node()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert gc.get_threshold()[0] == GEN0_THRESHOLD
    assert not any(o is before for o in gc.get_objects())  # frozen: no generation holds it
    assert any(o is after for o in gc.get_objects())
