from __future__ import annotations

import pytest

from bridge.sources.leasenote import LeaseNote, handover_gap, parse_note


def test_a_note_reads_back_as_written() -> None:
    note = LeaseNote("pod-a/1", 1_700_000_000.25, clean=True)
    assert parse_note(note.encode()) == note


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "",
        "not json",
        "[]",
        '{"holder": "a"}',
        '{"holder": 1, "read_until": 2}',
        '{"holder": "a", "read_until": true}',
        '{"holder": "a", "read_until": "1"}',
    ],
)
def test_anything_else_is_no_note(metadata: str | None) -> None:
    assert parse_note(metadata) is None


def test_the_gap_runs_from_the_last_read_to_the_new_connection() -> None:
    previous = LeaseNote("a", 100.0)
    assert handover_gap(previous, 103.5) == 3.5


def test_a_previous_holder_still_reading_leaves_no_gap() -> None:
    assert handover_gap(LeaseNote("a", 100.0), 99.0) == 0.0
