"""A local stand-in for Pinecall: REST API, WebSocket feed, call logs, signed webhooks, traffic.

Call logs are always served; webhooks carry call entries (the docs page's) and, on demand,
alerts (the platform's), delivered as the platform does: 2 attempts, a 4xx final.
"""

from bridge.simulator.config import (
    AuthFailure,
    Channel,
    DropMode,
    SignatureForm,
    SimulatorConfig,
    TrafficSpec,
)
from bridge.simulator.hooks import Hook, InvalidHookError
from bridge.simulator.ledger import Ledger
from bridge.simulator.records import Attempt, Delivery, DeliveryOutcome, WsSend
from bridge.simulator.simulator import Simulator, SimulatorStoppedError
from bridge.simulator.stats import Stats
from bridge.simulator.traffic import TrafficReport

__all__ = [
    "Attempt",
    "AuthFailure",
    "Channel",
    "Delivery",
    "DeliveryOutcome",
    "DropMode",
    "Hook",
    "InvalidHookError",
    "Ledger",
    "SignatureForm",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStoppedError",
    "Stats",
    "TrafficReport",
    "TrafficSpec",
    "WsSend",
]
