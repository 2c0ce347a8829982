"""The mark committed with each dedup offset, and a new owner's verdict on what it reads."""

from __future__ import annotations

import pytest

from bridge.dedup.offsetmark import Verdict, judge, mark, marked_offset


def test_the_mark_names_the_offset_it_is_committed_with_and_reads_back() -> None:
    assert mark(1234) == "pcb1:1234"
    assert marked_offset(mark(0)) == 0
    assert marked_offset(mark(1234)) == 1234


@pytest.mark.parametrize(
    "metadata",
    # Empty: what kafka-consumer-groups --reset-offsets writes, and what bridges wrote before.
    [None, "", "pcb1:", "pcb1:-5", "pcb1:12x", "pcb1: 12", "pcb1:١٢", "pcb2:12", "12", "x"],
)
def test_metadata_the_bridge_did_not_write_names_no_offset(metadata: str | None) -> None:
    assert marked_offset(metadata) is None


def test_no_committed_offset_is_a_new_group_not_a_reset() -> None:
    verdict = judge(None, None)
    assert verdict == Verdict("new", None)
    assert not verdict.reset


def test_the_bridges_own_commit_is_not_a_reset() -> None:
    verdict = judge(500, "pcb1:500")
    assert verdict == Verdict("own", 500)
    assert not verdict.reset
    assert verdict.shift is None


def test_an_offset_without_the_mark_is_unmarked_and_counted_with_no_shift() -> None:
    verdict = judge(500, "")
    assert verdict == Verdict("unmarked", 500)
    assert verdict.reset
    assert verdict.shift is None  # the reset tool left nothing saying where the bridge was


@pytest.mark.parametrize(("offset", "shift"), [(120, -380), (900, 400)])
def test_a_mark_naming_another_offset_says_which_way_and_how_far(offset: int, shift: int) -> None:
    verdict = judge(offset, "pcb1:500")
    assert verdict == Verdict("moved", offset, previous=500)
    assert verdict.reset
    assert verdict.shift == shift
