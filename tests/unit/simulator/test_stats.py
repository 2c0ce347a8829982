from bridge.simulator.stats import Stats
from bridge.simulator.summary import render


def test_delivery_outcomes_and_increases() -> None:
    stats = Stats()
    before = stats.as_dict()
    stats.count_delivery("ok", retried=True)
    stats.count_delivery("rejected", retried=False)
    stats.count_delivery("failed", retried=True)
    stats.count_delivery("cancelled", retried=False)
    grown = stats.since(before)
    assert (grown["deliveries_ok"], grown["deliveries_rejected"]) == (1, 1)
    assert (grown["deliveries_failed"], grown["deliveries_cancelled"]) == (1, 1)
    assert grown["deliveries_retried"] == 2
    assert grown["frames_sent"] == 0


def test_the_summary_names_the_numbers() -> None:
    stats = Stats(events_generated=12, events_durable=9, events_ephemeral=3, deliveries_ok=8,
                  deliveries_failed=1, deliveries_retried=2)  # fmt: skip
    text = render(stats.as_dict(), seed=42)
    assert "12 (9 durable, 3 ephemeral)" in text
    assert "8 ok, 1 failed" in text
    assert "2 retried" in text
    assert "seed               42" in text
