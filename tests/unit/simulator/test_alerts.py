import random

from bridge.simulator.alerts import plan_alert
from bridge.simulator.script import generate_calls

SCRIPT = generate_calls(1, 1)[0]


def test_no_alert_unless_drawn() -> None:
    assert plan_alert(random.Random(1), SCRIPT, probability=0.0, duplicates=1.0) is None


def test_alerts_are_the_platforms_types_and_seeded() -> None:
    plans = [
        plan_alert(random.Random(seed), SCRIPT, probability=1.0, duplicates=0.0)
        for seed in range(200)
    ]
    again = [
        plan_alert(random.Random(seed), SCRIPT, probability=1.0, duplicates=0.0)
        for seed in range(200)
    ]
    assert plans == again
    kinds = {plan.type for plan in plans if plan is not None}
    assert kinds == {"monitor.fired", "spend.unusual", "credits.exhausted"}
    fired = [plan for plan in plans if plan is not None and plan.type == "monitor.fired"]
    assert all(plan.data["call"] == SCRIPT.call for plan in fired)
    assert all(plan is not None and plan.copies == 1 for plan in plans)


def test_a_duplicate_is_a_second_copy() -> None:
    plan = plan_alert(random.Random(3), SCRIPT, probability=1.0, duplicates=1.0)
    assert plan is not None
    assert plan.copies == 2


def test_the_probability_does_not_shift_the_other_draws() -> None:
    sure = plan_alert(random.Random(5), SCRIPT, probability=1.0, duplicates=0.5)
    likely = plan_alert(random.Random(5), SCRIPT, probability=0.999, duplicates=0.5)
    assert sure == likely
