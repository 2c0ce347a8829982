"""A local stand-in for Pinecall: REST API, WebSocket feed and signed webhooks, with traffic."""

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
