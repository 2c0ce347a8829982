"""The mark committed with each dedup offset, and a new owner's verdict on what it reads."""

from __future__ import annotations

import pytest

from bridge.dedup.offsetmark import Verdict, judge, judge_absent, mark, marked_offset
from tests.wireformat import BREAKS_ROLLING_UPGRADES


def test_the_mark_names_the_offset_it_is_committed_with_and_reads_back() -> None:
    # An owner of the other release judges it: changed, every takeover reads as a reset.
    assert mark(1234) == "pcb1:1234", BREAKS_ROLLING_UPGRADES
    assert marked_offset(mark(0)) == 0
    assert marked_offset(mark(1234)) == 1234


@pytest.mark.parametrize(
    "metadata",
    # Empty: what kafka-consumer-groups --reset-offsets writes, and what bridges wrote before.
    [None, "", "pcb1:", "pcb1:-5", "pcb1:12x", "pcb1: 12", "pcb1:١٢", "pcb2:12", "12", "x"],
)
def test_metadata_the_bridge_did_not_write_names_no_offset(metadata: str | None) -> None:
    assert marked_offset(metadata) is None


def test_a_later_releases_mark_is_unmarked_and_its_offset_taken_as_found() -> None:
    # Said and counted as a reset, nothing skipped nor replayed: the offset is the true position.
    assert judge(500, "pcb2:500;more") == Verdict("unmarked", 500)


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


@pytest.mark.parametrize(
    ("start", "end", "aged", "verdict"),
    [
        # A new group's (or an added partition's) first start: everything kept is undecided.
        (0, 5, False, Verdict("new", 0, kept=5)),
        (0, 0, False, Verdict("new", 0)),
        # Retention deleted records with nothing committed: an owner decided them before.
        (3, 5, False, Verdict("missing", 3, kept=2)),
        # A record kept from longer ago than the TTL: a new group takes its partitions at once.
        (0, 5, True, Verdict("missing", 0, kept=5)),
        (3, 5, True, Verdict("missing", 3, kept=2)),
        # Nothing kept: the log start is as good as any offset; nothing is output twice.
        (5, 5, False, Verdict("new", 5)),
    ],
)
def test_no_committed_offset_is_missing_only_where_the_partition_was_in_use_before(
    start: int, end: int, aged: bool, verdict: Verdict
) -> None:
    found = judge_absent(start, end, aged=aged)
    assert found == verdict
    assert found.reset is (verdict.kind == "missing")
