"""The load's account of its own event-loop delay, subtracted from a measured answer time."""

from __future__ import annotations

from chaos.load import Attempt, WebhookLoad


def test_own_delay_counts_the_lag_inside_the_attempt_only() -> None:
    load = WebhookLoad(url=lambda: "http://x", rate=1, count=1, salt=0)
    load.lags = [(9.0, 3.0), (12.0, 2.0), (15.5, 1.0), (30.0, 5.0)]
    attempt = Attempt("CA_x:1", 503, started=10.0, elapsed=5.5, retry_after="5")
    # 9.0 woke before it started; 12.0 counts whole; 15.5 ends inside (+0.1 s grace); 30 after.
    assert load.own_delay(attempt) == 3.0
    # A lag that began before the attempt counts only from its start.
    early = Attempt("CA_x:2", 503, started=11.0, elapsed=1.5, retry_after="5")
    assert load.own_delay(early) == 1.0
