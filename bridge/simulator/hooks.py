"""Webhooks: the organisation's one (`/v1/webhook`, as the platform keeps it), and the
simulator's own extra ones (`register_webhook`, `--webhook-url`) with event filters. Pure."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.simulator.filters import ALL, matches, parse_events


class InvalidHookError(ValueError):
    """A registration request the API refuses with 400."""


@dataclass(frozen=True, slots=True)
class Hook:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str | None  # None: deliveries are not signed
    created_at: str

    def shown(self) -> dict[str, Any]:
        """What `GET /v1/webhook` shows of the organisation's: never the secret."""
        return {"url": self.url, "signed": self.secret is not None}


ORG_HOOK_ID = "org"


def _url_of(body: Any) -> str:
    """The `url` of a registration request, which must be a JSON object."""
    if not isinstance(body, dict):
        raise InvalidHookError("the body must be a JSON object")
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidHookError("url must be an http:// or https:// URL")
    return url


def parse_org_hook(body: Any) -> tuple[str, str | None]:
    """url and secret of a `PUT /v1/webhook`; an empty or null secret means unsigned posts."""
    url = _url_of(body)
    secret = body.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise InvalidHookError("secret must be a string")
    return url, secret or None


def parse_hook(body: Any) -> tuple[str, tuple[str, ...], str | None]:
    """url, events and secret of one of the simulator's own registrations."""
    url = _url_of(body)
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
        return self._keep(f"wh_{secrets.token_hex(8)}", url, events, secret)

    def put_org(self, url: str, secret: str | None) -> Hook:
        """Point the organisation's webhook at `url`, replacing what it had."""
        return self._keep(ORG_HOOK_ID, url, ALL, secret)

    def _keep(self, hook_id: str, url: str, events: tuple[str, ...], secret: str | None) -> Hook:
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        hook = self._hooks[hook_id] = Hook(hook_id, url, events, secret, created)
        return hook

    def org(self) -> Hook | None:
        return self._hooks.get(ORG_HOOK_ID)

    def all(self) -> list[Hook]:
        return list(self._hooks.values())

    def delete(self, hook_id: str) -> bool:
        return self._hooks.pop(hook_id, None) is not None

    def matching(self, event_type: str) -> list[Hook]:
        return [hook for hook in self._hooks.values() if matches(hook.events, event_type)]
