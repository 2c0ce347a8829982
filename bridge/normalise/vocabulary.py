"""Pinecall's known event types: the bounded set metric labels may carry."""

from __future__ import annotations

from typing import get_args

from bridge.normalise.event import Channel

# From the platform's published wire code and its docs; anything else is labelled `other`
# so a flood of new or hostile type names cannot blow up the metric series count.
KNOWN_TYPES: frozenset[str] = frozenset(
    {
        # docs' seven
        "call.started", "call.ended", "message.received", "message.sent",
        "recording.available", "transcription.completed", "agent.thinking",
        # call log
        "call.ringing", "call.dialing", "call.summary", "call.score", "call.line",
        "call.transferred", "call.attached", "call.claimed", "callback.requested",
        "turn.user", "turn.agent", "user.transcript", "agent.transcript",
        "user.state", "agent.state", "state.changed", "dtmf.received", "event.received",
        "tool.call", "tool.result", "tool.ran", "tool.failed", "tools.changed",
        "confirm.request", "confirm.granted", "confirm.declined",
        "metrics.avatar", "metrics.eot", "metrics.eou", "metrics.interruption", "metrics.llm",
        "metrics.realtime", "metrics.stt", "metrics.tts", "metrics.vad",
        "supervisor.ended", "supervisor.released", "supervisor.said", "supervisor.took_over",
        "supervisor.transferred", "supervisor.whispered",
        "attention.answered", "attention.requested",
        "participant.joined", "participant.left", "participant.speaking",
        "room.opened", "room.sent", "track.published", "track.unpublished",
        "message.taken", "message.waiting", "memory.ops", "docs.sources",
        "vendor.switched", "judge.broke", "prompt.changed",
        # agent log and org feed
        "agent.registered", "agent.configured", "agent.detached", "agent.draining",
        "app.failed", "fleet.full", "code.claimed", "code.issued", "dev.request",
        "release.changed", "run.changed", "worker.changed", "evals.spent",
        # alert webhooks
        "monitor.fired", "spend.unusual", "credits.exhausted", "webhook.test",
        # markers and control
        "log.caught_up", "log.gap", "pong", "error",
    }
)  # fmt: skip

MARKER_TYPES: frozenset[str] = frozenset({"log.caught_up", "log.gap"})


def type_label(event_type: str) -> str:
    """The metric label for a type: itself when known, else `other`."""
    return event_type if event_type in KNOWN_TYPES else "other"


_CHANNELS: frozenset[str] = frozenset(get_args(Channel))


def channel_label(channel: str) -> str:
    """The metric label for a channel read back from a record's header: itself, else `other`."""
    # An ingest record's channel header is whatever its writer put there (a hand-made record,
    # a newer bridge's channel): one new series per value, for ever, without this.
    return channel if channel in _CHANNELS else "other"
