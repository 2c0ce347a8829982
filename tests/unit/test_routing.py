from bridge.config import RoutingRule, TopicSettings
from bridge.normalise import Event
from bridge.routing import Drop, Route, Router, record_key


def event(**over: object) -> Event:
    fields: dict[str, object] = {
        "id": "i",
        "type": "call.started",
        "data": {},
        "channel": "webhook",
        "received_at": 0.0,
    }
    fields.update(over)
    return Event(**fields)  # type: ignore[arg-type]


ROUTER = Router(TopicSettings(), [])


def test_call_events_go_to_events_keyed_by_call() -> None:
    assert ROUTER.route(event(call="CA_1", agent="a")) == Route("pinecall.events", b"CA_1")


def test_no_call_goes_to_alerts() -> None:
    assert ROUTER.route(event(type="monitor.fired", org="o1")) == Route("pinecall.alerts", b"o1")
    assert ROUTER.route(event(type="agent.registered", agent="a1", org="o1")) == Route(
        "pinecall.alerts", b"@a1"
    )


def test_no_key_at_all() -> None:
    assert record_key(event()) is None


def test_ephemeral_dropped_unless_topic() -> None:
    assert ROUTER.route(event(call="c", ephemeral=True)) == Drop("ephemeral")
    router = Router(TopicSettings(ephemeral="pinecall.ephemeral"), [])
    assert router.route(event(call="c", ephemeral=True)) == Route("pinecall.ephemeral", b"c")


def test_markers_always_dropped() -> None:
    router = Router(TopicSettings(ephemeral="pinecall.ephemeral"), [])
    assert router.route(event(call="c", marker=True, ephemeral=True)) == Drop("marker")


def test_rules_first_match_wins() -> None:
    router = Router(
        TopicSettings(),
        [
            RoutingRule(match="metrics.*", topic="pinecall.metrics"),
            RoutingRule(match="*", topic="pinecall.all"),
        ],
    )
    assert router.route(event(type="metrics.llm", call="c")) == Route("pinecall.metrics", b"c")
    assert router.route(event(type="call.ended", call="c")) == Route("pinecall.all", b"c")
    assert router.topics() == [
        "pinecall.events",
        "pinecall.alerts",
        "pinecall.dlq",
        "pinecall.metrics",
        "pinecall.all",
    ]
