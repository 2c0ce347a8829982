import pytest

from bridge.normalise.ids import MAX_ID_LENGTH, shown, valid_call_id, valid_id

# What the platform sends (pinecall-wire.md, the simulator), and what a path segment may hold
# once quoted: `?`, `#`, `%`, spaces and non-ASCII are quoted, not refused.
REAL = ["CA_8f4a2c", "CA_0123456789abcdef", "room-1", "a?b#c", "%2F", "...", "café", "x" * 256]


@pytest.mark.parametrize("call", REAL)
def test_real_call_ids_are_valid(call: str) -> None:
    assert valid_call_id(call)
    assert valid_id(call)


@pytest.mark.parametrize(
    "call",
    [
        "",
        "x" * (MAX_ID_LENGTH + 1),
        "x" * 1_048_576,
        "CA_1\n12:00:00 ERROR forged",
        "CA_1\r",
        "CA\x001",
        "CA\x1b[2J",
        "CA\x7f",
        "CA\x85",
        # Unicode's noncharacters, which CloudEvents' String disallows too.
        "CA\ufffe",
        "CA\uffff",
        "CA\ufdd0",
        "CA\U0010ffff",
    ],
)
def test_no_id_is_empty_huge_or_holds_a_control_character(call: str) -> None:
    assert not valid_id(call)
    assert not valid_call_id(call)


@pytest.mark.parametrize("call", [".", "..", "a/b", "../../v1/events", "/", "a\\b"])
def test_a_call_id_is_one_path_segment(call: str) -> None:
    # `..` is normalised away; a quoted `/` (%2F) or `\` is decoded back by many servers.
    assert valid_id(call)
    assert not valid_call_id(call)


@pytest.mark.parametrize("call", ["@support", "@"])
def test_a_call_id_is_not_spelt_as_an_agents_log(call: str) -> None:
    # `@<agent>` names an agent's own log in dedup ids and record keys.
    assert valid_id(call)
    assert not valid_call_id(call)


def test_a_long_id_is_shown_cut_with_its_length() -> None:
    assert shown("CA_1") == "CA_1"
    assert shown("x" * 1000) == "x" * 64 + "… (1000 chars)"
