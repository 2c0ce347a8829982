"""When to reconnect the feed: exponential backoff with full jitter, reset once stable. Pure."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal, Protocol

DisconnectReason = Literal[
    "auth",
    "token_error",
    "connect_error",
    "out_of_descriptors",  # this process (or host) has no file descriptor left: no outage
    "closed",
    "server_error",
    "ping_timeout",
    "subscribe_refused",
    "frame_too_large",
    "error",
]
# Refusals (auth, and a subscription the platform refused) come from a human's mistake or a
# revoked key: never retry them in a tight loop.
AUTH_MIN_DELAY = 5.0
# A refusal's floor (5 s, 10 s, ... up to the cap) is drawn from its top fifth: alone it was the
# same for everyone, and after a platform outage every feed's token requests came back together.
AUTH_JITTER_SHARE = 0.2
_REFUSALS = frozenset({"auth", "token_error", "subscribe_refused"})
# 2.0**1024 overflows a float: past this many doublings any sane cap has long been reached, and
# the feed must go on reconnecting forever (a Pinecall outage of hours is ~1,000 attempts).
_MAX_DOUBLINGS = 64


class BackoffSettings(Protocol):
    """A reconnecting source's settings section (the WebSocket feed's, the call logs')."""

    @property
    def backoff_initial_seconds(self) -> float: ...
    @property
    def backoff_max_seconds(self) -> float: ...
    @property
    def stable_after_seconds(self) -> float: ...


class ReconnectPolicy:
    """Delays grow 0.5, 1, 2 ... up to a cap (jittered); a stable connection starts them over."""

    def __init__(
        self,
        initial: float,
        cap: float,
        stable_after: float,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._initial = initial
        self._cap = cap
        self._stable_after = stable_after
        self._rand = rand
        self.attempt = 0
        self.auth_failures = 0

    @classmethod
    def of(cls, settings: BackoffSettings) -> ReconnectPolicy:
        """The policy a source's settings section describes."""
        return cls(
            settings.backoff_initial_seconds,
            settings.backoff_max_seconds,
            settings.stable_after_seconds,
        )

    def reset(self) -> None:
        """The attempt succeeded: the next failure waits the initial delay again."""
        self.attempt = 0
        self.auth_failures = 0

    def next_delay(self, reason: DisconnectReason, connected_for: float | None) -> float:
        """The wait before the next attempt; `connected_for` is None when no connection opened."""
        stable = connected_for is not None and connected_for >= self._stable_after
        if stable:
            self.attempt = 0
        # An auth close of a stable connection is its token expiring (Pinecall's 4001 "token
        # expired"), not a refusal: counted as one, each expiry waited 5 s more, up to the cap.
        if reason in _REFUSALS and not stable:
            self.auth_failures += 1
        elif connected_for is not None:
            self.auth_failures = 0
        ceiling = min(self._cap, self._initial * 2.0 ** min(self.attempt, _MAX_DOUBLINGS))
        self.attempt += 1
        delay = self._rand(0.0, ceiling)
        if self.auth_failures:
            floor = min(self._cap, AUTH_MIN_DELAY * self.auth_failures)
            floor -= self._rand(0.0, floor * AUTH_JITTER_SHARE)
            delay = max(delay, floor, min(self._cap, AUTH_MIN_DELAY))
        return delay

    @property
    def rand(self) -> Callable[[float, float], float]:
        """The draw its jitter takes, for a backoff of another schedule to jitter alike."""
        return self._rand
