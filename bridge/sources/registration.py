"""Registering the bridge's webhook with Pinecall's REST API, idempotently."""

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
        """The webhook for `url`, created only when none exists: restarts add no duplicates."""
        for hook in await self.hooks():
            if hook.get("url") == url:
                return hook, False
        return await self.create(url, events, secret), True
