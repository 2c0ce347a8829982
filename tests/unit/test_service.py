"""What a bridge exports before it connects: the WebSocket feed's series only with the feed on."""

from __future__ import annotations

from bridge.config import load_settings
from bridge.service import Bridge

# Every series of the feed: a 0 from a process without the feed reads as a feed that is down.
FEED_SERIES = (
    "pinecall_bridge_feed_lease_held",
    "pinecall_bridge_websocket_connected",
    "pinecall_bridge_websocket_reconnects_total",
    "pinecall_bridge_websocket_frames_total",
    "pinecall_bridge_websocket_backlog_events",
    'pinecall_bridge_kafka_client_restarts_total{client="feed_lease"}',
)


def exposition(**sections: dict[str, object]) -> str:
    settings = load_settings(webhook={"secrets": ["s"]}, **sections)
    return Bridge(settings).metrics.render().decode()


async def test_without_the_feed_none_of_its_series_is_exported() -> None:
    text = exposition(websocket={"enabled": False})
    assert [name for name in FEED_SERIES if name in text] == []
    assert 'pinecall_bridge_kafka_client_restarts_total{client="dedup_consumer"} 0.0' in text


async def test_with_the_feed_every_process_exports_its_series_from_the_start() -> None:
    text = exposition(websocket={"enabled": True}, pinecall={"api_key": "k"})
    assert [name for name in FEED_SERIES if name not in text] == []
    assert "pinecall_bridge_feed_lease_held 0.0" in text
    assert "pinecall_bridge_websocket_connected 0.0" in text
