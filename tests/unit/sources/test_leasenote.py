from __future__ import annotations

import pytest

from bridge.sources.leasenote import LeaseNote, handover_gap, parse_note
from tests.wireformat import BREAKS_ROLLING_UPGRADES


def test_a_note_reads_back_as_written() -> None:
    note = LeaseNote("pod-a/1", 1_700_000_000.25, clean=True)
    assert parse_note(note.encode()) == note


def test_the_note_is_pinned_for_rolling_upgrades() -> None:
    # The next holder may be of the other release: it must read this note, and this one its.
    written = LeaseNote("pod-a/1", 1_790_000_000.12345, clean=True).encode()
    pinned = '{"holder":"pod-a/1","read_until":1790000000.123,"clean":true}'
    assert written == pinned, BREAKS_ROLLING_UPGRADES
    unclean = '{"holder":"pod-a/1","read_until":1.5,"clean":false}'
    assert LeaseNote("pod-a/1", 1.5).encode() == unclean, BREAKS_ROLLING_UPGRADES


def test_a_later_releases_note_with_more_fields_reads_as_its_known_ones() -> None:
    later = '{"holder":"pod-b/7","read_until":12.5,"clean":true,"version":2,"seq":9}'
    assert parse_note(later) == LeaseNote("pod-b/7", 12.5, clean=True)


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
