"""The bytes and headers of a webhook delivery, as the platform sends them. Pure."""

from __future__ import annotations

from typing import Any

from bridge import jsoncodec
from bridge.simulator.config import SignatureForm
from bridge.sources.signature import signature_header

SIMULATED_ORG = "org_sim"
SIMULATED_ENV = "production"


def encode(entry: dict[str, Any]) -> bytes:
    """Compact JSON: the exact bytes signed, posted and pushed on the WebSocket."""
    return jsoncodec.dumps(entry)


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
    """The platform's post of an alert line of an agent's log: no seq, no id, `at` in seconds."""
    return {
        "type": entry["type"],
        "org": SIMULATED_ORG,
        "env": SIMULATED_ENV,
        "agent": entry["agent"],
        "at": int(entry["ts"]),
        "data": entry["data"],
    }


def test_alert(at: float) -> dict[str, Any]:
    """What the platform's `POST /v1/webhook/test` posts: an alert of the simulated org."""
    return {
        "type": "webhook.test",
        "org": SIMULATED_ORG,
        "env": SIMULATED_ENV,
        "agent": None,
        "at": int(at),
        "data": {"said": "Pinecall reaches this URL; every alert of the org comes the same way."},
    }
