from bridge.config import RoutingRule, TopicSettings
from bridge.normalise import Event
from bridge.routing import (
    FOUND_RECHECK_SECONDS,
    MISSING_RECHECK_SECONDS,
    Drop,
    Route,
    Router,
    record_key,
    stage_output,
)


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


def test_the_stage_writes_its_configured_topics_without_looking_them_up() -> None:
    assert stage_output("pinecall.events", {"pinecall.events"}, None, 100.0, 100.0) == "write"


def test_the_stage_writes_an_unconfigured_topic_found_to_exist() -> None:
    # Another pod's routing during a rolling update: the event goes where its receiver routed it.
    assert stage_output("old.events", {"pinecall.events"}, 0.0, None, 0.0) == "write"
    assert stage_output("old.events", {"pinecall.events"}, None, None, 0.0) == "look_up"


def test_the_stage_looks_a_topic_found_to_exist_up_again() -> None:
    # Deleted since (its rule removed after the rollout): written for ever, it failed every
    # transaction, or was made again where brokers auto-create topics.
    later = 50.0 + FOUND_RECHECK_SECONDS
    assert stage_output("old.events", {"pinecall.events"}, 50.0, None, later - 0.1) == "write"
    assert stage_output("old.events", {"pinecall.events"}, 50.0, None, later) == "look_up"


def test_the_stage_skips_a_missing_topic_then_looks_it_up_again() -> None:
    configured = {"pinecall.events"}
    assert stage_output("gone", configured, None, 50.0, 50.0) == "skip"
    later = 50.0 + MISSING_RECHECK_SECONDS
    assert stage_output("gone", configured, None, 50.0, later - 0.1) == "skip"
    assert stage_output("gone", configured, None, 50.0, later) == "look_up"
