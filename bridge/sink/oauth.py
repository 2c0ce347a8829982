"""OAUTHBEARER's token, read from its file each time a Kafka client authenticates a connection.

aiokafka awaits the provider's `token()` once per new connection, in its SASL step
(aiokafka.conn.OAuthAuthenticator), and never authenticates an open connection again: a token
file rotated in place (a projected service account token the kubelet renews) is offered from the
next connection on, with no restart. Open connections keep the token they started with until the
broker closes them (its `connections.max.reauth.ms`); the next one then reads the file.

aiokafka (0.14) takes a broker's refusal of the token, an error challenge with no error code
(RFC 7628 3.2.2: `{"status":"invalid_token"}`), for success: the connection then breaks at its
next request, unexplained, and a client's start retries metadata for ever. `install` makes its
authenticator answer the challenge as the RFC asks, so the broker ends the exchange with
SASL_AUTHENTICATION_FAILED, raised as a SASL refusal like a wrong password's.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import aiokafka.conn
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError

from bridge.configerror import ConfigError
from bridge.secretfiles import read_token

log = logging.getLogger(__name__)
SETTING = "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE"


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka's ABC is untyped
    """The token `path` holds now; the last one read while the file cannot be read or holds
    none (a file caught mid-write, a volume remounted), which the broker may still take."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: str | None = None
        self._said: str | None = None  # the problem last logged: a broken file is said once

    async def token(self) -> str:
        """The token for a new connection; KafkaConnectionError when none was ever read, which
        aiokafka's clients retry as any failed connection."""
        # A small file (a projected token on a tmpfs), read once per new connection: read in
        # the loop, as the reloaded secrets are (sources/secretwatch.py); a thread costs more.
        try:
            token = read_token(self.path, SETTING)
        except ConfigError as exc:
            return self._fallback("; ".join(exc.problems))
        if self._said is not None:
            log.info("the Kafka OAUTHBEARER token file holds a token again", extra=self._where())
            self._said = None
        self._last = token
        return token

    def _fallback(self, problem: str) -> str:
        """The last token read, `problem` logged once; or the error failing this connection."""
        if problem != self._said:
            self._said = problem
            offered = (
                "the last token read is offered"
                if self._last is not None
                else "no token was read yet: the connection fails and is retried"
            )
            log.warning(f"{problem}: {offered}", extra=self._where())
        if self._last is None:
            raise KafkaConnectionError(problem)
        return self._last

    def _where(self) -> dict[str, str]:
        return {"path": str(self.path)}


# What a client sends after a server's error challenge (RFC 7628 3.2.3): the broker then fails it.
_ERROR_ACK = b"\x01"
_installed: list[bool] = []  # whether the authenticator was replaced; its outcome


def _answering(base: type[Any]) -> type[Any]:
    """aiokafka's OAUTHBEARER authenticator `base`, answering an error challenge once."""

    class RefusalAnswered(base):  # type: ignore[misc]
        async def step(self, payload: bytes | None) -> tuple[bytes, bool] | None:
            # None before the token is sent; after it, success carries no bytes, a refusal its
            # error JSON.
            if payload and not getattr(self, "_bridge_answered", False):
                self._bridge_answered = True
                return _ERROR_ACK, True
            answer: tuple[bytes, bool] | None = await super().step(payload)
            return answer

    return RefusalAnswered


def install() -> bool:
    """Make aiokafka raise a refused OAUTHBEARER token (once); False if it cannot."""
    if not _installed:
        base = getattr(aiokafka.conn, "OAuthAuthenticator", None)
        step = getattr(base, "step", None)
        if not (isinstance(base, type) and inspect.iscoroutinefunction(step)):
            log.warning(
                "aiokafka's connection has changed: a refused OAUTHBEARER token is not seen as"
                " a refusal (its connections break at their first request)",
                extra={"attribute": "aiokafka.conn.OAuthAuthenticator"},
            )
            _installed.append(False)
        else:
            aiokafka.conn.OAuthAuthenticator = _answering(base)
            _installed.append(True)
    return _installed[0]


# One provider per file for the process: every client shares its last token and its log lines.
_PROVIDERS: dict[Path, TokenFile] = {}


def token_file(path: Path) -> TokenFile:
    """The process's provider reading `path`."""
    provider = _PROVIDERS.get(path)
    if provider is None:
        provider = _PROVIDERS[path] = TokenFile(path)
    return provider


__all__ = ["SETTING", "TokenFile", "install", "token_file"]
