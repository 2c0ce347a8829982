"""Where an event goes: topic and key, or why it is dropped. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from bridge.config import RoutingRule, TopicSettings
from bridge.normalise.event import Event

DropReason = Literal["ephemeral", "marker"]


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
