"""Seeded alerts: whether a call ends with one of its agent's, and which. Pure.

The platform's webhooks carry alerts only (`monitor.fired`, `spend.unusual`, `credits.exhausted`),
lines of the agent's own log (`call` null). The envelope is the platform's; the data is made up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bridge.simulator.script import CallScript

# (name, metric, threshold) of the monitors an organisation might set.
MONITORS = (
    ("long call", "duration_seconds", 90.0),
    ("slow answers", "latency_p95_ms", 1200.0),
    # Named by people, in their own words: the platform posts them \u-escaped.
    ("appelant mécontent", "frustration", 0.7),
)


@dataclass(frozen=True, slots=True)
class AlertPlan:
    type: str
    data: dict[str, Any]
    copies: int  # 2 for a duplicate delivery (the same bytes twice)


def plan_alert(
    rng: random.Random, script: CallScript, *, probability: float, duplicates: float
) -> AlertPlan | None:
    """The alert that follows this call, if any; the same generator state gives the same one."""
    # Every draw is made whatever the branch, so changing one knob does not shift the others.
    fires = rng.random() < probability
    kind = rng.random()
    amount = rng.uniform(1.2, 3.0)
    duplicate = rng.random() < duplicates
    monitor = rng.choice(MONITORS)
    if not fires:
        return None
    copies = 1 + duplicate
    if kind < 0.7:
        name, metric, threshold = monitor
        value = round(threshold * amount, 2)
        data = {"monitor": name, "metric": metric, "value": value, "threshold": threshold}
        return AlertPlan("monitor.fired", {**data, "call": script.call}, copies)
    if kind < 0.9:
        spent = round(4.0 * amount, 2)
        data = {"window": "1h", "spent": spent, "usual": 4.0, "currency": "usd"}
        return AlertPlan("spend.unusual", data, copies)
    return AlertPlan("credits.exhausted", {"balance": 0.0, "currency": "usd"}, copies)
