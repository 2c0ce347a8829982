"""Pointing the organisation's Pinecall webhook at the bridge, through Pinecall's REST API.

The platform keeps one webhook per organisation: `GET`, `PUT {url, secret}` and `DELETE` on
`/v1/webhook`, and `POST /v1/webhook/test`. A PUT is idempotent, so replicas starting together
all put the same URL and secret and one webhook remains. It also replaces whatever URL the
organisation had, so the bridge reads it first and takes another one over only when told to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from bridge import jsoncodec
from bridge.config import PinecallSettings
from bridge.redaction import echo_spellings, hidden, overhang
from bridge.sources.capped import read_capped
from bridge.sources.redirects import redirected

log = logging.getLogger(__name__)

Step = Literal["set", "take-over", "refuse"]
# Every answer of the webhook API is a small object (`{url, signed}`, `{sent, error}`).
MAX_ANSWER_BYTES = 64 * 1024
# The start of a refusal's body kept in its error (which is logged at every retry).
ERROR_TEXT_CHARS = 300
# What stands for the webhook secret, or the API key, in a refusal's body.
HIDDEN = "[secret]"


class RegistrationError(Exception):
    """Pinecall's API refused or failed a webhook request."""


class WebhookTakenError(RegistrationError):
    """The organisation's webhook points elsewhere, and the bridge may not replace it."""


@dataclass(frozen=True, slots=True)
class OrgWebhook:
    """What `GET /v1/webhook` shows: the URL and whether its posts are signed, never the secret."""

    url: str
    signed: bool


@dataclass(frozen=True, slots=True)
class Registered:
    """What `ensure` did: the URL the organisation had before, and whether it was another."""

    previous: OrgWebhook | None
    took_over: bool


def next_step(current: OrgWebhook | None, url: str, *, replace: bool) -> Step:
    """Whether to put our URL, taking another over, or refuse. Pure.

    Our URL is put again even when it is there already: the secret is never read back, so
    only a PUT makes sure the platform signs with the one the bridge verifies.
    """
    if current is None or current.url == url:
        return "set"
    return "take-over" if replace else "refuse"


def parse_webhook(body: Any) -> OrgWebhook | None:
    """`GET /v1/webhook`'s answer: null when alerts go nowhere. Pure."""
    if body is None:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        raise RegistrationError(f"GET webhook: not {{url, signed}} but {_shape(body):.200}")
    return OrgWebhook(url=body["url"], signed=bool(body.get("signed")))


def _shape(body: Any) -> str:
    """An unexpected answer's keys and types, no value: it may hold the secret. Pure."""
    if isinstance(body, dict):
        return "{" + ", ".join(f"{key!r}: {type(v).__name__}" for key, v in body.items()) + "}"
    return type(body).__name__


class WebhookRegistry:
    """The organisation's webhook, as Pinecall's REST API keeps it."""

    def __init__(self, session: aiohttp.ClientSession, api: PinecallSettings) -> None:
        self._session = session
        self._api = api

    async def _call(self, method: str, path: str, body: Any = None, *, hide: str = "") -> Any:
        """One request; `hide` (the webhook secret of a PUT) and the API key never appear in its
        errors."""
        key = self._api.api_key.get_secret_value() if self._api.api_key else ""
        try:
            async with self._session.request(
                method,
                self._api.api_url + path,
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=self._api.request_timeout_seconds),
                allow_redirects=False,  # the body may hold the webhook secret
            ) as response:
                if (refused := redirected(response)) is not None:
                    raise RegistrationError(f"{method} {path}: {refused}")
                if response.status >= 300:
                    # The key too: a proxy's or a framework's echo of the request quotes its
                    # Authorization header, as the call-log pages' errors are guarded against.
                    text = await _error_text(response, echo_spellings(hide, key))
                    raise RegistrationError(f"{method} {path}: HTTP {response.status} {text}")
                if response.status == 204:
                    return None
                body = await read_capped(response, MAX_ANSWER_BYTES)
                return jsoncodec.loads(body) if body.strip() else None
        # ValueError: not JSON, or over the size cap (BodyTooLargeError).
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistrationError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def current(self) -> OrgWebhook | None:
        return parse_webhook(await self._call("GET", self._api.webhook_path))

    async def put(self, url: str, secret: str) -> None:
        # An empty secret is the platform's "unsigned": it sends no signature header then.
        await self._call(
            "PUT", self._api.webhook_path, {"url": url, "secret": secret or None}, hide=secret
        )

    async def delete(self) -> bool:
        """Forget the organisation's webhook; False when it had none."""
        try:
            await self._call("DELETE", self._api.webhook_path)
        except RegistrationError as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        return True

    async def test(self) -> dict[str, Any]:
        """One signed `webhook.test` post from Pinecall, waited for: `{sent, error}`."""
        answer: dict[str, Any] = await self._call("POST", self._api.webhook_path + "/test", {})
        return answer

    async def ensure(self, url: str, secret: str, *, replace: bool = False) -> Registered:
        """Point the organisation's webhook at `url`, signed with `secret`.

        Raises WebhookTakenError, and changes nothing, when it points elsewhere and `replace`
        is off.
        """
        current = await self.current()
        step = next_step(current, url, replace=replace)
        if step == "refuse" and current is not None:
            raise WebhookTakenError(
                f"the organisation's webhook points at {current.url}, not {url}; Pinecall keeps "
                "one per organisation: set BRIDGE_PINECALL__REPLACE_WEBHOOK=true (the CLI: "
                "--replace) to take it over"
            )
        await self.put(url, secret)
        return Registered(previous=current, took_over=step == "take-over")


async def _error_text(response: aiohttp.ClientResponse, spellings: list[str]) -> str:
    """The start of a refusal's body, each of `spellings` (longest first) replaced whole.

    An API's validation error may echo the request (FastAPI's 422 `input`): the body is read
    past the cut, whatever its chunks, so a secret straddling the cut is hidden too.
    """
    want = ERROR_TEXT_CHARS + overhang(spellings)
    raw = b""
    while len(raw) < want and (chunk := await response.content.read(want - len(raw))):
        raw += chunk
    return hidden(raw.decode("utf-8", "replace"), spellings, ERROR_TEXT_CHARS, HIDDEN)
