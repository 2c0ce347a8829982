"""The note backfill and redrive print when they reach past the dedup window."""

from __future__ import annotations

from rich.text import Text

from bridge.dedupnote import republish_note


def test_the_note_names_the_window_its_setting_and_what_is_published_again() -> None:
    said = Text.from_markup(republish_note(900, "entries")).plain
    assert said == (
        "note: the dedup stage remembers ids for 900 s (BRIDGE_DEDUP__TTL_SECONDS): entries"
        " published longer ago than that are published again, with the same CloudEvent ids"
    )
    assert "events published longer ago than that are published again" in republish_note(
        86_400.5, "events"
    )
    assert "remembers ids for 86400.5 s" in republish_note(86_400.5, "events")
    # A dry run says what the run it tries out would do.
    dry = republish_note(900, "events", dry_run=True)
    assert (
        "without --dry-run, events published longer ago than that would be published again,"
        " with the same CloudEvent ids"
    ) in dry
