"""The API key check every REST request (and a bearer WebSocket upgrade) goes through. Pure."""

from __future__ import annotations

import hmac

from aiohttp import web


def bearer_ok(header: str | None, api_key: str) -> bool:
    """`Authorization: Bearer <api key>`, compared in constant time."""
    if header is None or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), api_key.encode())


class ApiKey:
    """The one key the simulated API takes now: a rotation makes the old one refused, as a
    revoked key is."""

    def __init__(self, value: str) -> None:
        self.value = value

    def ok(self, header: str | None) -> bool:
        return bearer_ok(header, self.value)

    def rotate(self, value: str) -> None:
        if not value:
            raise ValueError("api_key must not be empty")
        self.value = value


def unauthorized(detail: str) -> web.Response:
    return web.json_response({"error": "unauthorized", "detail": detail}, status=401)
