"""Registered webhooks, as `pinecall.webhooks.create/list/delete` manage them. Pure."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.simulator.filters import matches, parse_events


class InvalidHookError(ValueError):
    """A registration request the API refuses with 400."""


@dataclass(frozen=True, slots=True)
class Hook:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str | None  # None: deliveries are not signed
    created_at: str

    def public(self) -> dict[str, Any]:
        """What the API shows: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "created_at": self.created_at,
        }


def parse_hook(body: Any) -> tuple[str, tuple[str, ...], str | None]:
    """url, events and secret of a create request."""
    if not isinstance(body, dict):
        raise InvalidHookError("the body must be a JSON object")
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidHookError("url must be an http:// or https:// URL")
    events = parse_events(body.get("events"))
    if events is None:
        raise InvalidHookError("events must be a list of event types")
    secret = body.get("secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise InvalidHookError("secret must be a non-empty string")
    return url, events, secret


class HookStore:
    def __init__(self) -> None:
        self._hooks: dict[str, Hook] = {}

    def create(self, url: str, events: tuple[str, ...], secret: str | None) -> Hook:
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        hook = Hook(f"wh_{secrets.token_hex(8)}", url, events, secret, created)
        self._hooks[hook.id] = hook
        return hook

    def all(self) -> list[Hook]:
        return list(self._hooks.values())

    def delete(self, hook_id: str) -> bool:
        return self._hooks.pop(hook_id, None) is not None

    def matching(self, event_type: str) -> list[Hook]:
        return [hook for hook in self._hooks.values() if matches(hook.events, event_type)]
