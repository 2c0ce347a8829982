"""One breaker for every call-log follower: a refused API key stops them all, one probes. Pure.

A 401 is about the key, not the call: without a breaker each of hundreds of followers would
ask and be refused on its own schedule. The first refusal opens it; the followers then wait one
backoff (the feed's ReconnectPolicy), one of them probes, and an answer that is not a refusal
closes it. Each follower keeps its own resume point meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.sources.reconnect import ReconnectPolicy

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Go:
    """Ask now; `probe` is this request's number when it tests the key for everyone."""

    probe: int | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Do not ask: wait `seconds`, or (None) until the probe out has its answer."""

    seconds: float | None


class AuthBreaker:
    """Not thread-safe; `now` is a monotonic clock's seconds, passed in by the caller."""

    def __init__(self, policy: ReconnectPolicy) -> None:
        self._policy = policy
        self.state: State = "closed"
        self.retry_at = 0.0
        self._probe = 0  # the number of the latest probe: an older one's end changes nothing

    def admit(self, now: float) -> Go | Wait:
        """May a follower ask now? At most one probe is out while the key is refused."""
        if self.state == "closed":
            return Go()
        if self.state == "open" and now >= self.retry_at:
            self.state = "half_open"
            self._probe += 1
            return Go(self._probe)
        if self.state == "open":
            return Wait(self.retry_at - now)
        return Wait(None)

    def refused(self, now: float) -> bool:
        """A 401; True when it opened the breaker (the one refusal to report)."""
        opened = self.state == "closed"
        # Refusals of requests already out when it opened change nothing: one backoff for all.
        if self.state != "open":
            self.state = "open"
            self.retry_at = now + self._policy.next_delay("auth", None)
        return opened

    def accepted(self) -> bool:
        """An answer that was not a refusal; True when it closed the breaker."""
        reopened = self.state != "closed"
        if reopened:
            self.state = "closed"
            self._policy.reset()
        return reopened

    def key_changed(self, now: float) -> bool:
        """The API key was reloaded: an open breaker lets a probe go now; True when it did."""
        if self.state != "open":
            return False  # a probe out meanwhile may carry the old key: its refusal reopens it
        self.retry_at = now
        return True

    def probe_over(self, probe: int, now: float) -> None:
        """Probe `probe` ended; without a verdict (an outage, a stop) another probes later."""
        if self.state == "half_open" and probe == self._probe:
            self.state = "open"
            # "connect_error": the auth refusals so far still set the least wait.
            self.retry_at = now + self._policy.next_delay("connect_error", None)
