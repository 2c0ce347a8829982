"""tests.entries.entry: the envelope in the platform's key order, its defaults, a misspelt key."""

import pytest

from tests.entries import entry


def test_defaults_give_a_durable_turn_in_the_wire_key_order() -> None:
    assert list(entry(3).items()) == [
        ("seq", 3),
        ("ts", 1.0),
        ("call", "CA_1"),
        ("agent", "support"),
        ("type", "turn.user"),
        ("ephemeral", False),
        ("data", {"n": 3}),
    ]


def test_markers_default_to_ephemeral_and_keywords_become_data() -> None:
    gap = entry(4, "log.gap", from_seq=2, to_seq=4)
    assert (gap["ephemeral"], gap["data"]) == (True, {"from_seq": 2, "to_seq": 4})


def test_epoch_and_numbered_text_follow_seq_and_ts_wins_over_epoch() -> None:
    line = entry(5, epoch=1_700_000_000, numbered_text="line")
    assert (line["ts"], line["data"]) == (1_700_000_005, {"text": "line 5"})
    assert entry(5, epoch=1_700_000_000, ts=2.5)["ts"] == 2.5


def test_an_envelope_key_passed_as_a_data_field_is_refused() -> None:
    with pytest.raises(TypeError, match="type"):
        entry(1, type="call.started")
