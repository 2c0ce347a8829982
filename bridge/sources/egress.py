"""HTTP sessions to Pinecall's API through the environment's proxy (HTTPS_PROXY, NO_PROXY).

The feed's WebSocket (websockets >= 15) takes the proxy from the environment itself; without this
its token request, the call logs and the webhook registration went direct, failing for ever where
egress is only through a proxy. Not aiohttp's `trust_env`: it also reads ~/.netrc for each
request, and a netrc entry for the API's host made every request carrying the API key raise.
A loopback destination is never proxied, by either client (`feed_proxy` for the WebSocket).
"""

from __future__ import annotations

import logging
import urllib.request
import warnings
from typing import Any, Literal

import aiohttp
from websockets.exceptions import InvalidURI
from websockets.proxy import get_proxy
from websockets.uri import parse_uri
from yarl import URL

from bridge.config import is_loopback

log = logging.getLogger(__name__)
# Each session asks (the feed's at each connection, the call logs' at each start): said once a
# process, not once a session.
_unsupported_said = False


def feed_proxy(url: str) -> str | Literal[True] | None:
    """websockets' `proxy` for connecting to `url`: None (direct) for a loopback host, a proxy
    given without a scheme as http://, else True (the environment's, as websockets reads it)."""
    # Go's net/http rule (golang.org/x/net/http/httpproxy, useProxy: "localhost" or a loopback IP
    # is never proxied): a proxy cannot reach this machine's loopback, so a developer's
    # HTTPS_PROXY without NO_PROXY=127.0.0.1 sent the local simulator's every connection to it.
    host = URL(url).host
    if host is not None and is_loopback(host):
        return None
    try:
        given = get_proxy(parse_uri(url))  # websockets' own choice, NO_PROXY included
    except InvalidURI:
        return True  # the connection says what is wrong with the URL, as before
    if given is not None and "://" not in given:
        # As env_proxy reads it (curl's rule): websockets refused `proxy:3128` as a scheme it
        # does not support, and the feed's every connection failed while the API's went through.
        return f"http://{given}"
    return True


def env_proxy(url: str) -> tuple[URL | None, tuple[str, str] | None]:
    """The proxy the environment names for `url` and its credentials apart (user, password);
    (None, None) if none."""
    target = URL(url)
    if target.host is None or is_loopback(target.host):  # as feed_proxy: Go's rule
        return None, None
    # proxy_bypass reads NO_PROXY as curl and websockets do (names, domain suffixes, `*`), asked
    # as websockets asks it, with the port: a `host:port` entry kept the feed direct, not these.
    asked = target.host if target.port is None else f"{target.host}:{target.port}"
    if urllib.request.proxy_bypass(asked):
        return None, None
    given = urllib.request.getproxies().get(target.scheme)
    if not given:
        return None, None
    if "://" not in given:
        # `proxy:3128`, as curl reads it: http://. Else its host read as a scheme, refused as
        # one not supported, and every request went direct.
        given = f"http://{given}"
    proxy = URL(given)
    if proxy.scheme not in ("http", "https"):
        # aiohttp speaks HTTP proxies only: a SOCKS one would fail every request, unexplained.
        global _unsupported_said
        if not _unsupported_said:
            _unsupported_said = True
            log.warning(
                "proxy not used for Pinecall's API: only http:// and https:// proxies are"
                " supported",
                extra={"proxy_scheme": proxy.scheme},
            )
        return None, None
    # Apart: aiohttp sends only proxy_auth as Proxy-Authorization, never a proxy URL's userinfo.
    auth = (proxy.user, proxy.password or "") if proxy.user else None
    return proxy.with_user(None), auth


def pinecall_session(api_url: str, **options: Any) -> aiohttp.ClientSession:
    """A session for requests to `api_url`'s host: through the environment's proxy, if any."""
    proxy, auth = env_proxy(api_url)
    with warnings.catch_warnings():
        # aiohttp 3.14 deprecates proxy_auth for each request's proxy_headers, which a session's
        # default proxy has no place for; still the one way to give it, until aiohttp 4.
        warnings.simplefilter("ignore", DeprecationWarning)
        proxy_auth = None if auth is None else aiohttp.BasicAuth(*auth)
        return aiohttp.ClientSession(proxy=proxy, proxy_auth=proxy_auth, **options)
