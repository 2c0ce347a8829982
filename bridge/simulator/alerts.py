"""Seeded alerts: whether a call ends with one of its agent's, and which. Pure.

The platform's webhooks carry alerts only (`monitor.fired`, `spend.unusual`, `credits.exhausted`),
lines of the agent's own log (`call` null). Envelope and data keys are the platform's
(pinecall-runtime's wire/events.py MonitorFired, SpendUnusual, CreditsExhausted: no extra key,
no call id); the values are made up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bridge.simulator.script import CallScript
from bridge.simulator.wire import SIMULATED_ENV, SIMULATED_ORG

# (id, name, metric, threshold) of the monitors an organisation might set.
MONITORS = (
    ("mon_long", "long call", "duration_seconds", 90.0),
    ("mon_slow", "slow answers", "latency_p95_ms", 1200.0),
    # Named by people, in their own words: the platform posts them \u-escaped.
    ("mon_upset", "appelant mécontent", "frustration", 0.7),
)


@dataclass(frozen=True, slots=True)
class AlertPlan:
    type: str
    data: dict[str, Any]
    copies: int  # 2 for a duplicate delivery (the same bytes twice)


def plan_alert(
    rng: random.Random, script: CallScript, *, probability: float, duplicates: float, day: str
) -> AlertPlan | None:
    """The alert that follows this call, if any; the same generator state gives the same one.
    `day`: the ISO date the platform's daily alerts name."""
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
        monitor_id, name, metric, threshold = monitor
        data = {
            "monitor": monitor_id,
            "name": name,
            "metric": metric,
            "above": True,
            "threshold": threshold,
            "value": round(threshold * amount, 2),
            "window_days": 1,
            "agent": script.agent,
            "env": SIMULATED_ENV,
            "day": day,
        }
        return AlertPlan("monitor.fired", data, copies)
    if kind < 0.9:
        data = {
            "org": SIMULATED_ORG,
            "day": day,
            "today_usd": round(4.0 * amount, 2),
            "usual_usd": 4.0,
            "multiple": round(amount, 2),
        }
        return AlertPlan("spend.unusual", data, copies)
    data = {"org": SIMULATED_ORG, "quota": "minutes", "used": 1000.0, "limit": 1000}
    return AlertPlan("credits.exhausted", data, copies)
