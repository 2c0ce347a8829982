import gc
from collections.abc import Iterator

import pytest

from bench.paired import CPYTHON_GEN0_THRESHOLD, gc_threshold, gc_unfrozen, set_gen0_threshold


@pytest.fixture(autouse=True)
def gc_as_it_was() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_old_side_of_gc_threshold_runs_at_cpythons_default_then_the_runs_is_back() -> None:
    set_gen0_threshold(7_000)
    older = gc.get_threshold()[1:]
    with gc_threshold(CPYTHON_GEN0_THRESHOLD):
        assert gc.get_threshold() == (700, *older)
    assert gc.get_threshold() == (7_000, *older)


def test_the_old_side_of_gc_freeze_has_nothing_frozen_and_the_harness_is_frozen_again() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    with gc_unfrozen():
        assert gc.get_freeze_count() == 0
    assert gc.get_freeze_count() >= frozen


def test_no_threshold_given_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    set_gen0_threshold(None)
    assert gc.get_threshold() == before
