"""Keeping the organisation's Pinecall webhook pointed at the bridge: register, then re-check."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from bridge.config import PinecallSettings
from bridge.metrics import Metrics
from bridge.sources.egress import pinecall_session
from bridge.sources.registration import Registered, RegistrationError, WebhookRegistry

log = logging.getLogger(__name__)


class Registrar:
    """Puts our URL until Pinecall takes it, then checks now and then that it still points here.

    Pinecall may be unreachable at start-up, refuse a key being rotated, or keep another URL
    until an operator decides: the webhook is the durable channel, so every failure is logged
    and retried, with a capped, jittered backoff, and `webhook_registered` says 0 meanwhile.
    """

    def __init__(
        self, api: PinecallSettings, url: str, secret: str | Callable[[], str], metrics: Metrics
    ) -> None:
        """`secret`: the one to put, or what gives it at each put (a reloaded secret file)."""
        self._api = api
        self._url = url
        self._secret = secret
        self._metrics = metrics
        self.registered = asyncio.Event()  # set once Pinecall first took our URL
        metrics.register_registration()

    async def run(self) -> None:
        async with pinecall_session(self._api.api_url) as session:
            registry = WebhookRegistry(session, self._api)
            while True:
                self._announce(await self._ensure(registry))
                self._metrics.webhook_registered.set(1)
                self.registered.set()
                if not self._api.webhook_recheck_seconds:
                    return
                await self._until_moved(registry)
                self._metrics.webhook_registered.set(0)

    def _current_secret(self) -> str:
        # A put after a rotation removed the secret read at start must not bring it back.
        return self._secret() if callable(self._secret) else self._secret

    async def _ensure(self, registry: WebhookRegistry) -> Registered:
        delay = 0.5
        while True:
            try:
                return await registry.ensure(
                    self._url, self._current_secret(), replace=self._api.replace_webhook
                )
            except RegistrationError as exc:
                log.error(
                    "webhook registration failed; retrying",
                    extra={"url": self._url, "error": str(exc), "retry_in_s": round(delay, 1)},
                )
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 60.0)

    async def _until_moved(self, registry: WebhookRegistry) -> None:
        """Return once the organisation's webhook is found deleted or pointing elsewhere."""
        while True:
            await asyncio.sleep(self._api.webhook_recheck_seconds)
            try:
                current = await registry.current()
            except RegistrationError as exc:
                # Pinecall unreachable says nothing about where its webhook points.
                log.warning("could not re-check the webhook", extra={"error": str(exc)})
                continue
            if current is None or current.url != self._url:
                log.error(
                    "the organisation's webhook no longer points at the bridge; registering again",
                    extra={"url": self._url, "found_url": current.url if current else None},
                )
                return
            if not current.signed and self._current_secret():
                # Put again without a secret (`webhooks register` by hand, say): every post
                # would come unsigned, be answered 401, and a 4xx is final for Pinecall.
                log.error(
                    "the organisation's webhook points at the bridge but is unsigned; "
                    "registering again with the secret",
                    extra={"url": self._url},
                )
                return

    def _announce(self, done: Registered) -> None:
        if done.took_over and done.previous is not None:
            log.warning(
                "webhook registered, replacing the organisation's previous one",
                extra={"url": self._url, "previous_url": done.previous.url},
            )
        else:
            log.info(
                "webhook registered" if done.previous is None else "webhook already registered",
                extra={"url": self._url},
            )
