"""What the simulator did, kept in memory for tests: webhook deliveries and WebSocket sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bridge.simulator.plan import FrameShape

DeliveryOutcome = Literal["pending", "ok", "failed", "rejected", "cancelled"]


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int  # from 1
    status: int | None  # None: no HTTP answer
    error: str | None  # the transport error or "timeout", when there was no answer
    started_at: float  # epoch seconds
    elapsed: float


@dataclass(slots=True)
class Delivery:
    """One copy of one event to one webhook URL, with every attempt and the final outcome."""

    hook_id: str
    url: str
    call: str
    seq: int
    type: str
    copy: int  # 0 the original, 1 the injected duplicate (same bytes)
    attempts: list[Attempt] = field(default_factory=list)
    outcome: DeliveryOutcome = "pending"

    @property
    def retried(self) -> bool:
        return len(self.attempts) > 1

    def why_not(self) -> str | None:
        """None once delivered; else what the last attempt got: its status or its error."""
        if self.outcome == "ok":
            return None
        if not self.attempts:
            return self.outcome
        last = self.attempts[-1]
        return last.error if last.status is None else f"HTTP {last.status}"


@dataclass(frozen=True, slots=True)
class WsSend:
    """One event frame written to one WebSocket connection."""

    connection: int
    call: str
    seq: int
    type: str
    copy: int
    shape: FrameShape
