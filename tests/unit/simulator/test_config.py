from typing import Any

import pytest

from bridge.simulator import Channel, SimulatorConfig, TrafficSpec


def test_defaults_are_valid() -> None:
    config = SimulatorConfig()
    assert config.api_key == "sim-api-key"
    assert config.token_ttl == 300.0
    assert (config.max_attempts, config.retry_base, config.delivery_timeout) == (2, 0.0, 5.0)
    assert config.delivery_concurrency == 64
    assert TrafficSpec().channel == "both"


@pytest.mark.parametrize(
    "change",
    [
        {"port": 70000},
        {"api_key": ""},
        {"ws_path": "v1/ws"},
        {"token_ttl": 0},
        {"ws_garbage": 1.5},
        {"ws_documented_ratio": 0.6, "ws_legacy_ratio": 0.6},
        {"max_attempts": 0},
        {"ws_refuse_subscriptions": -1},
        {"delivery_concurrency": 0},
        {"retry_base": -1},
        {"retry_base": float("nan")},
        {"api_latency": float("nan")},
        {"ws_heartbeat": 0},
    ],
)
def test_bad_simulator_settings_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        SimulatorConfig(**change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"calls": -1},
        {"concurrency": 0},
        {"subscribers": -1},
        {"rate": -1},
        {"rate": float("nan")},  # was taken as "as fast as possible"
        {"channel": "pigeon"},
        {"duplicates": 2},
        {"reorder": -0.1},
        {"alerts": 1.5},
    ],
)
def test_bad_traffic_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        TrafficSpec(**change)  # type: ignore[arg-type]


def test_channel_flags() -> None:
    assert (TrafficSpec(channel="both").webhook, TrafficSpec(channel="both").websocket) == (
        True,
        True,
    )
    assert not TrafficSpec(channel="webhook").websocket
    assert not TrafficSpec(channel="websocket").webhook


@pytest.mark.parametrize(
    ("channel", "webhook", "websocket"),
    [
        ("both", True, True),
        ("webhook", True, False),
        ("websocket", False, True),
        ("sse", False, False),  # the call logs alone, as the platform carries call events
        ("all", True, True),  # the logs are served whatever the channel
    ],
)
def test_channels_choose_the_pushes(channel: Channel, webhook: bool, websocket: bool) -> None:
    spec = TrafficSpec(channel=channel)
    assert (spec.webhook, spec.websocket) == (webhook, websocket)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sse_ping_interval", 0.0),
        ("sse_retry_ms", -1),
        ("sse_reader_buffer", 0),
        ("sse_retain_calls", 0),
    ],
)
def test_bad_sse_settings_are_refused(field: str, value: float) -> None:
    change: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**change)


def test_feed_subscribers_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="feed_subscribers"):
        TrafficSpec(feed_subscribers=-1)
