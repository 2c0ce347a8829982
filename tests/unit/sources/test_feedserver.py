"""Which URL the feed connects to for a token answer's `server`: pure."""

from __future__ import annotations

import pytest

from bridge.sources.feedserver import ServerRefusedError, feed_url, origin

CONFIGURED = "wss://api.pinecall.io/ws/stream?region=eu"


@pytest.mark.parametrize("server", [None, ""])
def test_no_server_named_is_the_configured_url(server: object) -> None:
    assert feed_url(CONFIGURED, server, allow_insecure=False) == CONFIGURED


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("wss://feed-7.pinecall.io", "wss://feed-7.pinecall.io/ws/stream?region=eu"),
        ("wss://feed-7.pinecall.io/", "wss://feed-7.pinecall.io/ws/stream?region=eu"),
        ("WSS://Feed-7.Pinecall.io:8443", "wss://feed-7.pinecall.io:8443/ws/stream?region=eu"),
        ("wss://feed-7.pinecall.io:443", "wss://feed-7.pinecall.io/ws/stream?region=eu"),
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/ws/stream?region=eu"),
        ("ws://localhost:8765", "ws://localhost:8765/ws/stream?region=eu"),
        ("wss://[::1]:9000", "wss://[::1]:9000/ws/stream?region=eu"),
    ],
)
def test_the_servers_origin_with_the_configured_path_and_query(server: str, url: str) -> None:
    assert feed_url(CONFIGURED, server, allow_insecure=False) == url


@pytest.mark.parametrize(
    ("server", "why"),
    [
        ("https://feed-7.pinecall.io", "not a ws:// or wss://"),
        ("feed-7.pinecall.io", "not a ws:// or wss://"),
        ("wss:feed-7.pinecall.io", "not a ws:// or wss://"),
        ("wss://feed-7.pinecall.io/ws/stream", "has a path"),
        ("wss://feed-7.pinecall.io?token=t", "query"),
        ("wss://feed-7.pinecall.io/#x", "fragment"),
        ("wss://u:p@feed-7.pinecall.io", "credentials"),
        ("wss://@feed-7.pinecall.io", "credentials"),
        # A password holding a `/` read as a path (`has a path`) or a port that is no number
        # (`valid host and port`), and one holding a `\` (websockets sends it): the URL
        # settings' rule.
        ("wss://u:/s3cret@feed-7.pinecall.io", "credentials"),
        ("wss://u:s3/cret@feed-7.pinecall.io", "credentials"),
        ("wss://u:12\\s3cret@feed-7.pinecall.io", "credentials"),
        # A password of digits before a `/` reads as a port and a path, to websockets too: no
        # credentials are sent, and only `ws(s)://host[:port]` is taken.
        ("wss://u:12/34@feed-7.pinecall.io", "has a path"),
        ("wss://", "no host"),
        ("wss://feed-7.pinecall.io:99999", "valid host and port"),
        ("wss://feed-7.pinecall.io:x", "valid host and port"),
        ("wss://feed 7.pinecall.io", "whitespace"),
        ("wss://feed-7.pinecall.io\n", "whitespace"),
        ("ws://feed-7.pinecall.io", "plain ws:// URL to another host"),
        (["wss://feed-7.pinecall.io"], "not a ws:// or wss://"),
        (7, "not a ws:// or wss://"),
    ],
)
def test_a_server_that_is_no_feed_origin_is_refused(server: object, why: str) -> None:
    with pytest.raises(ServerRefusedError, match=why) as refused:
        feed_url(CONFIGURED, server, allow_insecure=False)
    # Never quoted whole: a userinfo or query may carry a credential.
    assert "p@" not in str(refused.value)
    assert "cret" not in str(refused.value)
    assert "34@" not in str(refused.value)
    assert "token=" not in str(refused.value)


def test_a_plain_ws_server_elsewhere_is_taken_where_insecure_urls_are_allowed() -> None:
    url = feed_url(CONFIGURED, "ws://feed-7.internal:8080", allow_insecure=True)
    assert url == "ws://feed-7.internal:8080/ws/stream?region=eu"


def test_origin() -> None:
    assert origin("wss://h.example:443/v1/ws?x=1") == "wss://h.example"
    assert origin("ws://H.example:8080/v1/ws") == "ws://h.example:8080"
    assert origin("ws://[::1]:80/v1") == "ws://[::1]"
