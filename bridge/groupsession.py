"""Whether a member's group session still holds, by its own clock.

aiokafka keeps a member's assignment however long the coordinator has been out of reach: at the
session timeout it only marks the coordinator dead and looks for it again, so a member cut off
alone would go on acting on partitions the group has handed to another member. Its user acts on
`Session.expired` itself: the dedup stage counts no partition owned and keeps its tasks
(dropping them would cost every partition a restore after any outage longer than the session
timeout, the whole cluster's included).

`watch_heartbeats` takes one aiokafka private, checked against aiokafka 0.14.0:
``AIOKafkaConsumer._coordinator`` (``GroupCoordinator``) and its ``_do_heartbeat()``, which
returns True when the coordinator answered that the member is still in its generation (or
rebalancing), replaced on the one coordinator instance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


class Session:
    """The member's session as the coordinator last confirmed it. Pure: the caller's clock."""

    def __init__(self, timeout_s: float, now: float) -> None:
        self._timeout = timeout_s
        self._heard = now

    def heard(self, now: float) -> None:
        """The coordinator confirmed the session (a heartbeat, an assignment)."""
        self._heard = max(self._heard, now)

    def expired(self, now: float) -> bool:
        """Unconfirmed for longer than the session timeout: the group may have moved on."""
        return now - self._heard > self._timeout


def watch_heartbeats(consumer: Any, heard: Callable[[], None]) -> None:
    """Call `heard` after each heartbeat the coordinator answered with the member still in."""
    coordinator = getattr(consumer, "_coordinator", None)
    beat: Callable[[], Awaitable[bool]] | None = getattr(coordinator, "_do_heartbeat", None)
    if beat is None:
        raise TypeError("this aiokafka has no GroupCoordinator._do_heartbeat to watch")

    async def watched() -> bool:
        ok = await beat()
        if ok:
            heard()
        return ok

    coordinator._do_heartbeat = watched  # type: ignore[union-attr]
