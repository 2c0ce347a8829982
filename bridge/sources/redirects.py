"""Requests to Pinecall's API carry its key (and a webhook secret): never sent on elsewhere.

aiohttp follows a redirect to any origin; it drops the Authorization header across origins, but
sends a PUT's or POST's body (the webhook secret) again. So no request to the API follows one
(`allow_redirects=False`), and a 3xx answer is an error that says where it pointed.
"""

from __future__ import annotations

import aiohttp

from bridge.redaction import without_query


def redirected(response: aiohttp.ClientResponse) -> str | None:
    """The error for a redirect answer, naming the setting to fix; None for any other status."""
    if not 300 <= response.status < 400:
        return None
    # Without its query: a redirect keeping the request's, or a signed URL, carries credentials.
    location = without_query(response.headers.get("Location", ""))[:200]
    return (
        f"Pinecall's API answered {response.status} redirecting to {location!r}: not followed"
        " (the request carries the API key); point BRIDGE_PINECALL__API_URL (or the feed's"
        " URL) where it belongs"
    )


def redirect_note(response: aiohttp.ClientResponse) -> dict[str, str]:
    """A log line's `error` for a redirect answer; nothing for any other status."""
    refused = redirected(response)
    return {"error": refused} if refused is not None else {}
