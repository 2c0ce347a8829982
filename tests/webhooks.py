"""Signed webhook requests: the body and headers Pinecall's platform sends, built in one place."""

from __future__ import annotations

from typing import Any

from bridge import jsoncodec
from bridge.sources.signature import signature_header

SIGNATURE = "X-Pinecall-Signature"


def signed(
    body: bytes | Any, secret: bytes | str, *, bare: bool = False
) -> tuple[bytes, dict[str, str]]:
    """The raw body (`body` itself if bytes, else its JSON) and the headers Pinecall sends.

    `bare` gives the signature as bare hex, without its `sha256=` prefix.
    """
    raw = body if isinstance(body, bytes) else jsoncodec.dumps(body)
    key = secret if isinstance(secret, bytes) else secret.encode()
    return raw, {
        "Content-Type": "application/json",
        SIGNATURE: signature_header(key, raw, bare=bare),
    }
