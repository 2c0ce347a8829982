from bridge.normalise.vocabulary import KNOWN_TYPES, type_label

# Every concrete type the platform notes (/work/shared/pinecall-wire.md, outside the repo) name:
# the families' members spelt out there, the docs' seven, the org feed's notices, the alert
# webhooks' types, the markers and `pong`. Its wildcards (`confirm.*`, `metrics.*`, ...) are
# not here: only named types can be labelled, so the label stays bounded.
WIRE_NOTES_TYPES = (
    # call.* (the family's members as listed)
    "call.ringing", "call.dialing", "call.started", "call.ended", "call.summary",
    "call.score", "call.line", "call.transferred", "call.attached", "call.claimed",
    # utterances, deltas and states
    "turn.user", "turn.agent", "user.transcript", "agent.transcript",
    "user.state", "agent.state", "state.changed",
    "tool.call", "tool.result", "agent.registered",
    # the docs' seven
    "call.started", "call.ended", "message.received", "message.sent",
    "recording.available", "transcription.completed", "agent.thinking",
    # org feed notices
    "release.changed", "run.changed", "worker.changed",
    # alert webhooks
    "monitor.fired", "spend.unusual", "credits.exhausted", "webhook.test",
    # markers and ephemeral control
    "log.caught_up", "log.gap", "pong",
)  # fmt: skip


def test_every_type_the_wire_notes_name_is_known() -> None:
    assert sorted(t for t in WIRE_NOTES_TYPES if t not in KNOWN_TYPES) == []


def test_an_unknown_type_is_labelled_other() -> None:
    assert type_label("turn.user") == "turn.user"
    assert type_label("call.made_up_by_someone") == "other"
