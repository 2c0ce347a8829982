import random

from bridge.simulator.alerts import plan_alert
from bridge.simulator.script import generate_calls

SCRIPT = generate_calls(1, 1)[0]
DAY = "2026-12-06"
# The data keys and value types of pinecall-runtime 0.10 wire/events.py's alert models, which
# refuse any other key: MonitorFired, SpendUnusual, CreditsExhausted.
PLATFORM_DATA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "monitor.fired": {
        "monitor": str, "name": str, "metric": str, "above": bool, "threshold": float,
        "value": float, "window_days": int, "agent": (str, type(None)), "env": str, "day": str,
    },
    "spend.unusual": {
        "org": str, "day": str, "today_usd": float, "usual_usd": float, "multiple": float,
    },
    "credits.exhausted": {"org": str, "quota": str, "used": float, "limit": int},
}  # fmt: skip


def test_no_alert_unless_drawn() -> None:
    assert plan_alert(random.Random(1), SCRIPT, probability=0.0, duplicates=1.0, day=DAY) is None


def test_alerts_are_the_platforms_types_and_seeded() -> None:
    plans = [
        plan_alert(random.Random(seed), SCRIPT, probability=1.0, duplicates=0.0, day=DAY)
        for seed in range(200)
    ]
    again = [
        plan_alert(random.Random(seed), SCRIPT, probability=1.0, duplicates=0.0, day=DAY)
        for seed in range(200)
    ]
    assert plans == again
    kinds = {plan.type for plan in plans if plan is not None}
    assert kinds == {"monitor.fired", "spend.unusual", "credits.exhausted"}
    assert all(plan is not None and plan.copies == 1 for plan in plans)


def test_alert_data_has_the_platforms_keys_and_types_and_no_call() -> None:
    plans = [
        plan_alert(random.Random(seed), SCRIPT, probability=1.0, duplicates=0.0, day=DAY)
        for seed in range(200)
    ]
    for plan in plans:
        assert plan is not None
        fields = PLATFORM_DATA[plan.type]
        assert set(plan.data) == set(fields), plan.type
        assert all(isinstance(plan.data[key], kind) for key, kind in fields.items()), plan.data
        assert plan.data.get("day", DAY) == DAY


def test_a_duplicate_is_a_second_copy() -> None:
    plan = plan_alert(random.Random(3), SCRIPT, probability=1.0, duplicates=1.0, day=DAY)
    assert plan is not None
    assert plan.copies == 2


def test_the_probability_does_not_shift_the_other_draws() -> None:
    sure = plan_alert(random.Random(5), SCRIPT, probability=1.0, duplicates=0.5, day=DAY)
    likely = plan_alert(random.Random(5), SCRIPT, probability=0.999, duplicates=0.5, day=DAY)
    assert sure == likely
