"""Where the feed connects: the token answer's `server`, if it names one, else the configured URL.

Pure. The older SDK generation's token answer is `{token, server, expires_in}`: the token is good
on that server only. The connection takes scheme, host and port from it, path and query from
BRIDGE_WEBSOCKET__URL, under the configured URL's rules (plain ws:// only to loopback unless
insecure URLs are allowed); a `server` that is anything more than `ws(s)://host[:port]` is refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from bridge.config import plain_to_another_host
from bridge.redaction import has_userinfo

_DEFAULT_PORTS = {"ws": 80, "wss": 443}


class ServerRefusedError(ValueError):
    """The token answer's `server` cannot be connected to; the message never quotes it whole."""


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL (no userinfo, path or query): what a log line may name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address, bracketed again
        host = f"[{host}]"
    port = parts.port
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):  # the same server either way
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def feed_url(configured: str, server: object, *, allow_insecure: bool) -> str:
    """The feed's URL (without its token): `server`'s origin with `configured`'s path and query,
    or `configured` when `server` is None or empty. Raises ServerRefusedError."""
    if server is None or server == "":
        return configured
    if not isinstance(server, str):
        raise ServerRefusedError(f"is a JSON {type(server).__name__}, not a ws:// or wss:// URL")
    # Checked on the text, before any parsing: urlsplit drops some whitespace silently.
    if any(c.isspace() or not c.isprintable() for c in server):
        raise ServerRefusedError("contains whitespace or control characters")
    # The URL settings' rule, before any parsing: urlsplit reads a password holding a `/` as a
    # port (`u:pa/ss@h`, refused as no valid port) or as a path (`u:/ss@h`, as having one).
    if has_userinfo(server):
        raise ServerRefusedError("carries credentials (user:password@)")
    try:
        parts = urlsplit(server)
        _ = parts.port  # one that is no number, or out of range, raises
    except ValueError:
        raise ServerRefusedError("is not a URL with a valid host and port") from None
    if not server.lower().startswith(("ws://", "wss://")):
        raise ServerRefusedError("is not a ws:// or wss:// URL")
    if not parts.hostname:
        raise ServerRefusedError("has no host")
    if parts.path not in ("", "/") or parts.query or "?" in server or "#" in server:
        # The path and query are the configured URL's; a query may carry a credential.
        raise ServerRefusedError("has a path, query or fragment: only ws(s)://host[:port] is used")
    scheme = parts.scheme.lower()
    netloc = origin(server).split("://", 1)[1]
    chosen = urlunsplit((scheme, netloc, "", "", ""))
    if not allow_insecure and plain_to_another_host(chosen):
        raise ServerRefusedError(
            f"{chosen!r} is a plain ws:// URL to another host: the feed's token would cross the"
            " network unencrypted (BRIDGE_PINECALL__ALLOW_INSECURE_URLS allows it)"
        )
    base = urlsplit(configured)
    return urlunsplit((scheme, netloc, base.path, base.query, ""))
