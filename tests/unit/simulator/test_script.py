from bridge.normalise import normalise
from bridge.normalise.event import Event
from bridge.simulator.script import CallScript, generate_calls


def test_the_same_seed_gives_the_same_calls() -> None:
    assert generate_calls(42, 5) == generate_calls(42, 5)
    assert generate_calls(42, 5) != generate_calls(43, 5)


def test_a_call_does_not_depend_on_how_many_calls_are_made() -> None:
    assert generate_calls(7, 3) == generate_calls(7, 10)[:3]


def test_a_call_lives_from_start_to_score_with_seq_from_1_in_the_logs_names() -> None:
    for script in generate_calls(1, 20):
        types = [step.type for step in script.steps]
        assert [step.seq for step in script.steps] == list(range(1, len(script.steps) + 1))
        assert types[0] == "call.started"
        assert types[-3:] == [
            "call.ended",
            "call.summary",
            "call.score",  # the last line of every call log on the platform
        ]
        turns = [t for t in types if t != "user.transcript"][1:-3]
        assert len(turns) >= 6
        assert turns == ["turn.user", "agent.state", "turn.agent"] * (len(turns) // 3)
        assert script.call.startswith("CA_")
        assert all(s.ephemeral == (s.type == "user.transcript") for s in script.steps)


def test_calls_have_ephemeral_lines_and_the_logs_data() -> None:
    scripts = generate_calls(3, 10)
    assert any(step.ephemeral for script in scripts for step in script.steps)
    steps = {step.type: step.data for step in scripts[0].steps}
    assert set(steps["call.ended"]) == {"duration", "reason"}
    assert steps["call.summary"]["recording"].startswith("https://")
    assert {"summary", "transcript"} <= set(steps["call.summary"])
    assert isinstance(steps["turn.user"]["text"], str)
    assert steps["agent.state"] == {"state": "thinking"}


def test_an_entry_is_the_platforms_log_line_and_the_bridge_reads_it() -> None:
    script: CallScript = generate_calls(5, 1)[0]
    step = script.steps[1]
    entry = script.entry(step, 1700000000.5)
    assert list(entry) == ["seq", "ts", "call", "agent", "type", "ephemeral", "data"]
    event = normalise(entry, channel="webhook", received_at=1700000001.0)
    assert isinstance(event, Event)
    assert event.id == f"{script.call}:{step.seq}"
    assert event.ephemeral == step.ephemeral
