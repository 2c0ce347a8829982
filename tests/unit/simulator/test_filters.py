from bridge.simulator.filters import ALL, matches, parse_events


def test_missing_empty_or_star_means_every_type() -> None:
    assert parse_events(None) == ALL
    assert parse_events([]) == ALL
    assert parse_events(["call.started", "*"]) == ALL


def test_a_list_of_names_is_kept_and_anything_else_refused() -> None:
    assert parse_events(["call.started", "message.*"]) == ("call.started", "message.*")
    assert parse_events("call.started") is None
    assert parse_events([1]) is None
    assert parse_events([""]) is None


def test_names_and_globs_match() -> None:
    assert matches(("call.started",), "call.started")
    assert not matches(("call.started",), "call.ended")
    assert matches(("call.*",), "call.ended")
    assert matches(ALL, "anything.at.all")
