"""Reading a Pinecall API answer whole, up to a size: a broken server cannot fill our memory."""

from __future__ import annotations

import aiohttp


class BodyTooLargeError(ValueError):
    """The answer's body is longer than its cap; its reader turns this into its own error."""


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body; BodyTooLargeError, having read at most `cap` + 1 bytes, when it is longer."""
    if response.content_length is not None and response.content_length > cap:
        raise BodyTooLargeError(f"the answer is {response.content_length} bytes, over {cap}")
    parts: list[bytes] = []
    size = 0
    while chunk := await response.content.read(cap + 1 - size):
        parts.append(chunk)
        size += len(chunk)
        if size > cap:
            raise BodyTooLargeError(f"the answer is over {cap} bytes")
    return b"".join(parts)
