"""The bytes and headers of a webhook delivery, as the platform sends them. Pure."""

from __future__ import annotations

from typing import Any

from bridge import jsoncodec
from bridge.simulator.config import SignatureForm
from bridge.sources.signature import signature_header

SIMULATED_ORG = "org_sim"


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


def test_alert(at: float) -> dict[str, Any]:
    """What the platform's `POST /v1/webhook/test` posts: an alert of the simulated org."""
    return {
        "type": "webhook.test",
        "org": SIMULATED_ORG,
        "env": "production",
        "agent": None,
        "at": int(at),
        "data": {"said": "Pinecall reaches this URL; every alert of the org comes the same way."},
    }
