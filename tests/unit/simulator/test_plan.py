import random

from bridge.simulator import TrafficSpec
from bridge.simulator.plan import plan_event


def test_clean_traffic_sends_each_event_once_on_both_channels() -> None:
    plan = plan_event(random.Random(1), TrafficSpec(), ephemeral=False)
    assert plan.channels == ("webhook", "websocket", "sse")  # the call log has it too
    assert (plan.webhook_copies, plan.websocket_copies) == (1, 1)
    assert not plan.websocket_after_webhook
    assert plan.shape == "log-entry"


def test_certain_duplicates_and_reorder() -> None:
    plan = plan_event(random.Random(1), TrafficSpec(duplicates=1, reorder=1), ephemeral=False)
    assert (plan.webhook_copies, plan.websocket_copies) == (2, 2)
    assert plan.websocket_after_webhook


def test_one_channel_only() -> None:
    webhook = plan_event(
        random.Random(1), TrafficSpec(channel="webhook", reorder=1), ephemeral=False
    )
    assert (webhook.channels, webhook.websocket_copies) == (("webhook", "sse"), 0)
    assert not webhook.websocket_after_webhook
    websocket = plan_event(random.Random(1), TrafficSpec(channel="websocket"), ephemeral=False)
    assert (websocket.channels, websocket.webhook_copies) == (("websocket", "sse"), 0)
    logs = plan_event(random.Random(1), TrafficSpec(channel="sse"), ephemeral=False)
    assert (logs.channels, logs.webhook_copies, logs.websocket_copies) == (("sse",), 0, 0)


def test_other_shapes_only_for_durable_events() -> None:
    spec = TrafficSpec()
    documented = plan_event(random.Random(1), spec, ephemeral=False, documented_ratio=1.0)
    legacy = plan_event(random.Random(1), spec, ephemeral=False, legacy_ratio=1.0)
    interim = plan_event(random.Random(1), spec, ephemeral=True, documented_ratio=1.0)
    assert (documented.shape, legacy.shape, interim.shape) == ("documented", "legacy", "log-entry")


def test_the_same_generator_state_gives_the_same_plans() -> None:
    spec = TrafficSpec(duplicates=0.5, reorder=0.5)
    first, second = random.Random(9), random.Random(9)
    plans = [plan_event(first, spec, ephemeral=False) for _ in range(50)]
    assert plans == [plan_event(second, spec, ephemeral=False) for _ in range(50)]
    assert len({(p.webhook_copies, p.websocket_after_webhook) for p in plans}) > 1
