"""Which proxy the environment names for Pinecall's API (bridge/sources/egress.py)."""

from __future__ import annotations

import tomllib

import pytest
from packaging.requirements import Requirement
from websockets.exceptions import InvalidProxy
from websockets.proxy import get_proxy, parse_proxy
from websockets.uri import parse_uri
from yarl import URL

from bridge.sources import egress
from bridge.sources.egress import env_proxy, feed_proxy, pinecall_session
from tests.environ import proxied_env
from tests.integration.conftest import REPO


@pytest.fixture(autouse=True)
def _unsaid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test a process of its own for what is said once a process."""
    monkeypatch.setattr(egress, "_unsupported_said", False, raising=False)


def test_the_proxy_of_the_urls_scheme_is_taken_its_credentials_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxied_env(monkeypatch, HTTPS_PROXY="http://bridge:s3cr3t@proxy:3128", HTTP_PROXY="http://p:1")
    # Apart: aiohttp sends only proxy_auth as Proxy-Authorization.
    assert env_proxy("https://api.pinecall.io") == (URL("http://proxy:3128"), ("bridge", "s3cr3t"))
    assert env_proxy("http://api.internal:8080") == (URL("http://p:1"), None)


@pytest.mark.parametrize("no_proxy", ["api.pinecall.io", ".pinecall.io", "pinecall.io", "*"])
def test_no_proxy_keeps_the_api_direct(monkeypatch: pytest.MonkeyPatch, no_proxy: str) -> None:
    proxied_env(monkeypatch, HTTPS_PROXY="http://proxy:3128", NO_PROXY=no_proxy)
    assert env_proxy("https://api.pinecall.io/v1") == (None, None)


@pytest.mark.parametrize(
    ("url", "no_proxy"),
    [
        ("https://api.pinecall.io/v1", "api.pinecall.io:443"),
        ("http://api.internal:8080", "api.internal:8080"),
        ("http://[::1]:8080", "::1"),
        ("http://[fd00::1]:8080", "fd00::1:8080"),
    ],
)
def test_no_proxy_is_read_as_the_feeds_websockets_reads_it(
    monkeypatch: pytest.MonkeyPatch, url: str, no_proxy: str
) -> None:
    # websockets asks proxy_bypass with the port: a `host:port` entry kept the feed direct and
    # sent the token, call logs and registration through the proxy.
    proxied_env(monkeypatch, HTTPS_PROXY="http://proxy:3128", HTTP_PROXY="http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    ws_url = URL(url).with_scheme("wss" if url.startswith("https") else "ws")
    assert get_proxy(parse_uri(str(ws_url))) is None  # websockets' own reading
    assert env_proxy(url) == (None, None)


def test_no_proxy_variable_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    proxied_env(monkeypatch)
    assert env_proxy("https://api.pinecall.io") == (None, None)


async def test_a_socks_proxy_is_not_used_and_said_once_a_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp would fail every request through it; websockets' feed would use it (python-socks).
    proxied_env(monkeypatch, HTTPS_PROXY="socks5h://proxy:1080", HTTP_PROXY="socks5://p:1080")
    assert env_proxy("https://api.pinecall.io") == (None, None)
    # Each session asks again (the feed's at each reconnect): said at the first only.
    for _ in range(3):
        async with pinecall_session("https://api.pinecall.io"):
            pass
    assert env_proxy("http://api.internal:8080") == (None, None)
    assert [r.getMessage() for r in caplog.records] == [
        "proxy not used for Pinecall's API: only http:// and https:// proxies are supported"
    ]


@pytest.mark.parametrize(
    ("given", "proxy", "auth"),
    [
        ("proxy:3128", URL("http://proxy:3128"), None),
        ("10.0.0.1:3128", URL("http://10.0.0.1:3128"), None),
        ("bridge:s3cr3t@proxy.corp:3128", URL("http://proxy.corp:3128"), ("bridge", "s3cr3t")),
        ("proxy", URL("http://proxy"), None),
    ],
)
def test_a_proxy_without_a_scheme_is_read_as_curl_reads_it_http(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    given: str,
    proxy: URL,
    auth: tuple[str, str] | None,
) -> None:
    # Read as a URL, its host was the scheme: refused as unsupported, the requests went direct.
    proxied_env(monkeypatch, HTTPS_PROXY=given)
    assert env_proxy("https://api.pinecall.io") == (proxy, auth)
    assert caplog.records == []


def test_the_feed_reads_a_proxy_without_a_scheme_as_http(monkeypatch: pytest.MonkeyPatch) -> None:
    # websockets' own reading refuses it: each of the feed's connections failed, InvalidProxy.
    proxied_env(monkeypatch, HTTPS_PROXY="bridge:s3cr3t@proxy:3128")
    url = "wss://feed.pinecall.io/v1/ws"
    with pytest.raises(InvalidProxy, match="isn't supported"):
        parse_proxy(get_proxy(parse_uri(url)) or "")
    given = feed_proxy(url)
    assert isinstance(given, str)
    proxy = parse_proxy(given)
    assert (proxy.scheme, proxy.host, proxy.port) == ("http", "proxy", 3128)
    assert proxy.user_info == ("bridge", "s3cr3t")


def test_the_feed_leaves_a_proxy_with_a_scheme_to_websockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxied_env(monkeypatch, HTTPS_PROXY="proxy:3128", NO_PROXY="feed.pinecall.io")
    assert feed_proxy("wss://feed.pinecall.io/v1/ws") is True  # NO_PROXY: direct, its choice
    proxied_env(monkeypatch, HTTPS_PROXY="socks5h://proxy:1080")
    assert feed_proxy("wss://feed.pinecall.io/v1/ws") is True


async def test_a_session_reads_no_netrc(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp's trust_env would: an entry for the API's host made each request carrying the key
    # raise ("Cannot combine AUTHORIZATION header with AUTH argument").
    proxied_env(monkeypatch, HTTPS_PROXY="http://bridge:s3cr3t@proxy:3128")
    async with pinecall_session("https://api.pinecall.io") as session:
        assert not session.trust_env


NOWHERE = "http://127.0.0.1:9"  # a developer's proxy: it cannot reach this machine's loopback


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "https://LOCALHOST.",
        "http://127.0.0.1:80",
        "http://127.9.0.1",
        "http://[::1]:8080",
        "http://[::ffff:127.0.0.1]:8080",  # IPv4-mapped: Go's rule reads the IPv4 it maps
    ],
)
def test_a_loopback_destination_is_never_proxied(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    proxied_env(monkeypatch, HTTPS_PROXY=NOWHERE, HTTP_PROXY=NOWHERE)
    ws_url = str(URL(url).with_scheme("wss" if url.startswith("https") else "ws"))
    assert get_proxy(parse_uri(ws_url)) is not None  # websockets' own choice: the proxy
    assert feed_proxy(ws_url) is None  # so the feed tells it: direct
    assert env_proxy(url) == (None, None)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost.example",
        "http://127.0.0.1.nip.io",
        "http://[fd00::1]:8080",
        "http://[::ffff:10.0.0.1]:8080",
    ],
)
def test_a_name_merely_like_loopback_is_proxied(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # As Go's rule: the name as given, never resolved.
    proxied_env(monkeypatch, HTTP_PROXY=NOWHERE)
    assert feed_proxy(url.replace("http", "ws", 1)) is True
    assert env_proxy(url) == (URL(NOWHERE), None)


def test_the_declared_websockets_has_the_feeds_proxy_keyword() -> None:
    # connect(proxy=...) and InvalidProxy, which the feed passes and catches, came in 15.0: with
    # 13 or 14, which the floor allowed, the feed's module did not import.
    with (REPO / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    spec = next(Requirement(d) for d in declared if Requirement(d).name == "websockets").specifier
    assert "14.2" not in spec
    assert "15.0" in spec
