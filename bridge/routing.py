"""Where an event goes: topic and key, or why it is dropped. Pure."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from bridge.config import RoutingRule, TopicSettings
from bridge.normalise.event import Event

DropReason = Literal["ephemeral", "marker"]
StageOutput = Literal["write", "look_up", "skip"]
# How long the dedup stage takes a topic it found missing to be missing still: records naming it
# meanwhile are skipped without a cluster metadata request each.
MISSING_RECHECK_SECONDS = 10.0
# How long it takes a topic it found to exist to exist still: one deleted since (its rule removed
# after a rollout, records naming it still in the ingest topic) is looked up again, not written
# for ever (failing every transaction, or made again where brokers auto-create topics).
FOUND_RECHECK_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Route:
    topic: str
    key: bytes | None


@dataclass(frozen=True, slots=True)
class Drop:
    reason: DropReason


class Router:
    """Markers never publish; ephemerals only to the ephemeral topic; rules before defaults."""

    def __init__(self, topics: TopicSettings, rules: list[RoutingRule]) -> None:
        self._topics = topics
        self._rules = [(rule.match, rule.topic) for rule in rules]

    def route(self, event: Event) -> Route | Drop:
        if event.marker:
            return Drop("marker")
        key = record_key(event)
        if event.ephemeral:
            if self._topics.ephemeral is None:
                return Drop("ephemeral")
            return Route(self._topics.ephemeral, key)
        for pattern, topic in self._rules:
            if fnmatchcase(event.type, pattern):
                return Route(topic, key)
        if event.call is None:
            return Route(self._topics.alerts, key)
        return Route(self._topics.events, key)

    def topics(self) -> list[str]:
        """Every topic the bridge may write to."""
        names = [self._topics.events, self._topics.alerts, self._topics.dlq]
        if self._topics.ephemeral:
            names.append(self._topics.ephemeral)
        names.extend(topic for _, topic in self._rules)
        return list(dict.fromkeys(names))


def record_key(event: Event) -> bytes | None:
    """The call id keeps a call's events in one partition, in order; agent or org otherwise."""
    if event.call is not None:
        return event.call.encode()
    if event.agent is not None:
        return ("@" + event.agent).encode()
    if event.org is not None:
        return event.org.encode()
    return None


def stage_output(
    topic: str,
    configured: Collection[str],
    found_at: float | None,
    missing_since: float | None,
    now: float,
) -> StageOutput:
    """What the dedup stage does with an output record naming `topic`: it writes its own output
    topics, and those that exist (another pod's routing, during a rolling update); any other is
    looked up, and skipped while missing: sent, its metadata wait failed the transaction at every
    retry, or a cluster that auto-creates topics made it with its defaults. `found_at` and
    `missing_since`: when it was last looked up and found, or found missing."""
    if topic in configured:
        return "write"
    if found_at is not None and now - found_at < FOUND_RECHECK_SECONDS:
        return "write"
    if missing_since is not None and now - missing_since < MISSING_RECHECK_SECONDS:
        return "skip"
    return "look_up"
