"""What a partition coming back does with its kept window: resume, replay the gap, or restore."""

from __future__ import annotations

import pytest

from bridge.dedup.kept import Choice, Kept, choose, gap_readable

KEPT = Kept(position=30, revoked_at=1000.0, last_appended_at=500.0)


@pytest.mark.parametrize(
    ("committed", "reset", "wanted"),
    [
        (30, False, Choice("resume")),  # nobody decided anything since
        (45, False, Choice("gap")),  # others decided 30..44: only those are read
        (20, False, Choice("full", "behind")),  # moved back: its window holds ids not decided
        (None, False, Choice("full", "unknown")),  # offsets gone (topic deleted, group reset)
        (45, True, Choice("full", "reset")),  # an operator's reset: not the bridge's decisions
        (30, True, Choice("full", "reset")),
    ],
)
def test_the_committed_offset_says_what_a_kept_window_is_good_for(
    committed: int | None, reset: bool, wanted: Choice
) -> None:
    assert choose(KEPT, 1060.0, 900.0, committed, reset=reset, straight=True) == wanted


def test_the_same_offset_after_another_owner_resumes_only_once_the_record_before_is_checked() -> (
    None
):
    """Revoked by one rebalance and back by a later one (a flap): another owner may have
    committed that offset in a topic made again, after deciding records the window lacks."""
    assert choose(KEPT, 1060.0, 900.0, 30, reset=False, straight=False) == Choice("check")
    unknown = Kept(position=30, revoked_at=1000.0, last_appended_at=None)
    assert choose(unknown, 1060.0, 900.0, 30, reset=False, straight=False) == Choice(
        "full", "unknown"
    )
    assert choose(unknown, 1060.0, 900.0, 30, reset=False, straight=True) == Choice("resume")
    # Nothing to replay: the call-log source loses no progress by a check.
    assert choose(KEPT, 1060.0, 900.0, 30, reset=False, straight=False, replay=False) == Choice(
        "check"
    )


def test_a_window_kept_longer_than_the_keep_setting_is_dropped() -> None:
    assert choose(KEPT, 1900.0, 900.0, 30, reset=False, straight=True) == Choice("resume")
    assert choose(KEPT, 1900.5, 900.0, 30, reset=False, straight=True) == Choice("full", "aged")


def test_a_zero_keep_setting_leaves_the_age_to_the_stage() -> None:
    """0 keeps a window through one rebalance: the stage drops it at the assignment."""
    assert choose(KEPT, 1000.5, 0.0, 30, reset=False, straight=True) == Choice("resume")


def test_a_gap_is_never_replayed_for_the_call_log_source_nor_without_a_last_record() -> None:
    assert choose(KEPT, 1060.0, 900.0, 45, reset=False, straight=True, replay=False) == Choice(
        "full", "progress"
    )
    assert choose(KEPT, 1060.0, 900.0, 30, reset=False, straight=True, replay=False) == Choice(
        "resume"
    )
    unknown = Kept(position=30, revoked_at=1000.0, last_appended_at=None)
    assert choose(unknown, 1060.0, 900.0, 45, reset=False, straight=True) == Choice(
        "full", "unknown"
    )


@pytest.mark.parametrize(
    ("log_start", "before", "wanted"),
    [
        (0, (29, 500.0), None),  # the record it last processed, still there
        (29, (29, 500.0), None),
        (30, (30, 510.0), "deleted"),  # retention deleted the record before the gap
        (31, (31, 510.0), "deleted"),  # and part of the gap
        (0, None, "deleted"),
        (0, (29, 501.0), "recreated"),  # another record there: the topic was made again
        (0, (33, 600.0), "recreated"),  # 29 gone (truncated, or a control record now)
    ],
)
def test_a_gap_is_readable_only_after_the_very_record_the_window_last_took(
    log_start: int, before: tuple[int, float] | None, wanted: str | None
) -> None:
    assert gap_readable(KEPT, log_start, before) == wanted
