"""Per-event decisions of a traffic run: channels, duplicate copies, cross-channel order. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from bridge.simulator.config import TrafficSpec

FrameShape = Literal["log-entry", "documented", "legacy"]
ChannelName = Literal["webhook", "websocket", "sse"]


@dataclass(frozen=True, slots=True)
class Plan:
    channels: tuple[ChannelName, ...]
    webhook_copies: int  # 0 when the webhook is not used, 2 for a duplicate delivery
    websocket_copies: int
    websocket_after_webhook: bool  # hold the frame until the webhook copy is finally answered
    shape: FrameShape


def plan_event(
    rng: random.Random,
    spec: TrafficSpec,
    *,
    ephemeral: bool,
    documented_ratio: float = 0.0,
    legacy_ratio: float = 0.0,
) -> Plan:
    """Decide how one event travels; the same generator state gives the same plan."""
    # Every draw is made whatever the branch, so changing one knob does not shift the others.
    webhook_duplicate = rng.random() < spec.duplicates
    websocket_duplicate = rng.random() < spec.duplicates
    late = rng.random() < spec.reorder
    pick = rng.random()
    shape: FrameShape = "log-entry"
    # The other shapes have no ephemeral flag: the bridge would take an interim line for durable.
    if not ephemeral and pick < documented_ratio:
        shape = "documented"
    elif not ephemeral and pick < documented_ratio + legacy_ratio:
        shape = "legacy"
    channels: tuple[ChannelName, ...] = ()
    if spec.webhook:
        channels += ("webhook",)
    if spec.websocket:
        channels += ("websocket",)
    channels += ("sse",)  # every entry is in its call's log, as on the platform
    return Plan(
        channels=channels,
        webhook_copies=(1 + webhook_duplicate) if spec.webhook else 0,
        websocket_copies=(1 + websocket_duplicate) if spec.websocket else 0,
        websocket_after_webhook=late and spec.webhook and spec.websocket,
        shape=shape,
    )
