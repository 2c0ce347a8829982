"""The bytes and headers of a webhook delivery, as the platform sends them. Pure."""

from __future__ import annotations

import json
from typing import Any

from bridge import jsoncodec
from bridge.simulator.config import SignatureForm
from bridge.sources.signature import signature_header

SIMULATED_ORG = "org_sim"
SIMULATED_ENV = "production"


def encode(entry: dict[str, Any]) -> bytes:
    """Compact JSON: the exact bytes signed, posted and pushed on the WebSocket."""
    return jsoncodec.dumps(entry)


def alert_wire(body: dict[str, Any]) -> bytes:
    """An alert's bytes as pinecall-runtime's gateway/_alerts.py posts them: the stdlib's compact
    JSON, so non-ASCII comes as `\\u` escapes and `at` with all its digits; what is signed."""
    return json.dumps(body, separators=(",", ":")).encode()


def webhook_headers(
    body: bytes, event_type: str, secret: str | None, form: SignatureForm
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Pinecall-Event": event_type}
    if secret is not None:
        headers["X-Pinecall-Signature"] = signature_header(
            secret.encode(), body, bare=form == "bare"
        )
    return headers


def alert_body(entry: dict[str, Any]) -> dict[str, Any]:
    """The platform's post of an alert line of an agent's log: no seq, no id, `at` in epoch
    seconds as `time.time()` gave them (a float)."""
    return {
        "type": entry["type"],
        "org": SIMULATED_ORG,
        "env": SIMULATED_ENV,
        "agent": entry["agent"],
        "at": entry["ts"],
        "data": entry["data"],
    }


def test_alert(at: float) -> dict[str, Any]:
    """What the platform's `POST /v1/webhook/test` posts: an alert of the simulated org."""
    return {
        "type": "webhook.test",
        "org": SIMULATED_ORG,
        "env": SIMULATED_ENV,
        "agent": None,
        "at": at,
        "data": {"said": "Pinecall reaches this URL; every alert of the org comes the same way."},
    }
