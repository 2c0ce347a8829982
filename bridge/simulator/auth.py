"""The API key check every REST request (and a bearer WebSocket upgrade) goes through. Pure."""

from __future__ import annotations

import hmac

from aiohttp import web


def bearer_ok(header: str | None, api_key: str) -> bool:
    """`Authorization: Bearer <api key>`, compared in constant time."""
    if header is None or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), api_key.encode())


def unauthorized(detail: str) -> web.Response:
    return web.json_response({"error": "unauthorized", "detail": detail}, status=401)
