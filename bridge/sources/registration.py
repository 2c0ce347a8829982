"""Registering the bridge's webhook with Pinecall's REST API, idempotently and concurrently.

The API lists, creates and deletes; it has no "create unless it exists". Replicas starting
together would each list, find nothing and create: two hooks, every delivery doubled. So a
replica creates, then lists again and deletes every hook for its URL but the winner, the same
one for everybody (the oldest, then the lowest id). The winner is never deleted, and whoever
lists last has seen every create: one hook remains, however the replicas interleave.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from bridge.config import PinecallSettings

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    """Pinecall's API refused or failed a webhook request."""


class WebhookRegistry:
    """`pinecall.webhooks.create/list/delete`, as the SDK calls them."""

    def __init__(self, session: aiohttp.ClientSession, api: PinecallSettings) -> None:
        self._session = session
        self._api = api

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        key = self._api.api_key.get_secret_value() if self._api.api_key else ""
        try:
            async with self._session.request(
                method,
                self._api.api_url + path,
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=self._api.request_timeout_seconds),
            ) as response:
                if response.status >= 300:
                    text = (await response.text())[:300]
                    raise RegistrationError(f"{method} {path}: HTTP {response.status} {text}")
                if response.status == 204:
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistrationError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def hooks(self) -> list[dict[str, Any]]:
        body = await self._call("GET", self._api.webhooks_path)
        hooks = body.get("data", []) if isinstance(body, dict) else body
        return [hook for hook in hooks or [] if isinstance(hook, dict)]

    async def create(self, url: str, events: list[str], secret: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"url": url, "secret": secret}
        if events:
            payload["events"] = events
        hook: dict[str, Any] = await self._call("POST", self._api.webhooks_path, payload)
        return hook

    async def delete(self, hook_id: str) -> None:
        await self._call("DELETE", f"{self._api.webhooks_path}/{hook_id}")

    async def ensure(self, url: str, events: list[str], secret: str) -> tuple[dict[str, Any], bool]:
        """The webhook for `url`, created only when none exists; extra ones deleted.

        Returns the hook that stays and whether this call created it.
        """
        mine = [hook for hook in await self.hooks() if hook.get("url") == url]
        created: dict[str, Any] | None = None
        if not mine:
            created = await self.create(url, events, secret)
            mine = [hook for hook in await self.hooks() if hook.get("url") == url]
            if not any(hook.get("id") == created.get("id") for hook in mine):
                mine.append(created)  # a list that lags the create still counts it
        keep = winner(mine)
        for hook in mine:
            if hook is not keep:
                await self._delete_extra(hook)
        return keep, created is not None and keep.get("id") == created.get("id")

    async def _delete_extra(self, hook: dict[str, Any]) -> None:
        log.warning(
            "deleting a duplicate webhook (replicas registered together)",
            extra={"id": hook.get("id"), "url": hook.get("url")},
        )
        try:
            await self.delete(str(hook.get("id")))
        except RegistrationError as exc:
            if "HTTP 404" not in str(exc):  # another replica deleted it first
                raise


def winner(hooks: list[dict[str, Any]]) -> dict[str, Any]:
    """The hook every replica keeps among copies: the oldest, then the lowest id. Pure."""
    return min(hooks, key=lambda hook: (str(hook.get("created_at", "")), str(hook.get("id", ""))))
