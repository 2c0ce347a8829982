"""The cap on open HTTP connections: the decision, the cap fitted to the open-files limit."""

from __future__ import annotations

import resource

import pytest

from bridge import connlimit
from bridge.config import ConfigError, load_settings
from bridge.connlimit import (
    REFUSAL,
    REFUSING_MAX,
    ConnectionCap,
    Listener,
    admission,
    fitted_calls,
    fitted_limit,
    raise_open_files_limit,
)
from bridge.metrics import Metrics
from tests.metrics import sample
from tests.rawhttp import parse_response

OPEN = "pinecall_bridge_http_connections_open"
REFUSED = "pinecall_bridge_http_connections_refused_total"
MAX = "pinecall_bridge_http_connections_max"


def test_a_connection_under_the_cap_is_served() -> None:
    assert admission(0, 0, 1) == "serve"
    assert admission(9, REFUSING_MAX, 10) == "serve"


def test_one_past_the_cap_is_refused_until_too_many_are_being_refused() -> None:
    assert admission(10, 0, 10) == "refuse"
    assert admission(10, REFUSING_MAX - 1, 10) == "refuse"
    assert admission(10, REFUSING_MAX, 10) == "close"
    assert admission(11, 0, 10) == "refuse"  # a lowered cap: more are open than it allows


def test_gap_pages_and_restores_count_only_past_the_defaults_reserved_for_them() -> None:
    assert connlimit.beyond_reserved(8, 4, 1) == 0  # the defaults: within RESERVED_FDS
    assert connlimit.beyond_reserved(0, 0, 1) == 0  # neither here
    assert connlimit.beyond_reserved(1000, 4, 1) == 992
    assert connlimit.beyond_reserved(8, 1000, 1) == 996 * connlimit.RESTORE_CONNECTIONS


def test_a_restore_may_connect_to_every_broker_the_bootstrap_list_names() -> None:
    # Three were counted for any cluster: 1,000 restores against six brokers took 2,988
    # descriptors more than the reserve held. One name (a load balancer) still counts as three.
    assert connlimit.beyond_reserved(8, 1000, 6) == 996 * 6
    assert connlimit.beyond_reserved(8, 1000, 1) == connlimit.beyond_reserved(8, 1000, 3)
    assert connlimit.beyond_reserved(8, 4, 6) == 0  # the default restores: within RESERVED_FDS


def test_the_cap_fits_the_open_files_limit() -> None:
    assert fitted_limit(1000, None, 256) == 1000  # unlimited
    assert fitted_limit(1000, 1_048_576, 256) == 1000
    assert fitted_limit(1000, 1024, 256) == 1024 - 256 - REFUSING_MAX
    assert fitted_limit(1000, 100, 256) == 1  # never 0: the probes must get in
    assert fitted_limit(1000, 1024, 256, refusing=0) == 1024 - 256  # no port: no refusals


def test_followers_leave_the_webhook_port_its_cap_or_half_of_what_they_share() -> None:
    assert fitted_calls(100_000, 4096, None, 256, REFUSING_MAX) == 100_000  # unlimited
    assert fitted_calls(500, 4096, 1_048_576, 256, REFUSING_MAX) == 500  # both fit
    # 100,000 under 20,000 left the port one connection: now the port keeps its 4096.
    assert fitted_calls(100_000, 4096, 20_000, 256, REFUSING_MAX) == 20_000 - 320 - 4096
    # A cap larger than half of what is left: each gets half.
    assert fitted_calls(500, 4096, 1024, 256, REFUSING_MAX) == (1024 - 320) // 2
    assert fitted_calls(500, 0, 600, 256, 0) == 600 - 256  # no port: the followers take it all
    assert fitted_calls(500, 4096, 100, 256, REFUSING_MAX) == 1  # never 0


def capped(metrics: Metrics, limit: int, listener: Listener = "webhook") -> ConnectionCap:
    return ConnectionCap(
        limit,
        listener,
        metrics.http_connections_max,
        metrics.http_connections_open,
        metrics.http_connections_refused,
    )


def test_the_cap_counts_served_and_refused_connections() -> None:
    metrics = Metrics()
    cap = capped(metrics, 2)
    assert sample(metrics, MAX, listener="webhook") == 2
    # From the start, for increase().
    assert sample(metrics, REFUSED, listener="webhook", how="answered") == 0
    assert sample(metrics, REFUSED, listener="webhook", how="closed") == 0
    assert [cap.admit(), cap.admit(), cap.admit()] == ["serve", "serve", "refuse"]
    assert sample(metrics, OPEN, listener="webhook") == 2
    assert sample(metrics, REFUSED, listener="webhook", how="answered") == 1
    cap.release("refuse")
    assert cap.refusing == 0
    cap.release("serve")
    assert sample(metrics, OPEN, listener="webhook") == 1
    assert cap.admit() == "serve"  # a freed place is taken again
    assert sample(metrics, OPEN, listener="webhook") == 2


def test_each_listeners_cap_counts_in_its_own_series() -> None:
    metrics = Metrics()
    webhook, admin = capped(metrics, 1), capped(metrics, 1, "admin")
    assert [admin.admit(), admin.admit()] == ["serve", "refuse"]
    assert webhook.admit() == "serve"  # the admin port's connections take no webhook place
    assert sample(metrics, OPEN, listener="admin") == 1
    assert sample(metrics, REFUSED, listener="admin", how="answered") == 1
    assert sample(metrics, REFUSED, listener="webhook", how="answered") == 0


def test_past_the_refusals_a_connection_is_closed_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connlimit, "REFUSING_MAX", 1)
    metrics = Metrics()
    cap = capped(metrics, 1)
    assert [cap.admit(), cap.admit(), cap.admit()] == ["serve", "refuse", "close"]
    cap.release("close")  # nothing was held for it
    assert (cap.open, cap.refusing) == (1, 1)
    assert sample(metrics, REFUSED, listener="webhook", how="closed") == 1


def test_the_refusal_is_a_complete_503_asking_for_a_retry_and_a_new_connection() -> None:
    response = parse_response(REFUSAL)
    assert response is not None
    assert response.status == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body)


class FakeLimits:
    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.mark.parametrize(
    ("soft", "hard", "refuse", "after"),
    [
        (1024, 524_288, False, (524_288, 524_288)),
        (1024, 524_288, True, (1024, 524_288)),  # refused: left as it was, said as it is
        (4096, 4096, False, (4096, 4096)),
        (1024, resource.RLIM_INFINITY, False, (None, None)),
    ],
)
def test_the_soft_open_files_limit_is_raised_to_the_hard_one(
    monkeypatch: pytest.MonkeyPatch,
    soft: int,
    hard: int,
    refuse: bool,
    after: tuple[int | None, int | None],
) -> None:
    fake = FakeLimits(soft, hard, refuse=refuse)
    monkeypatch.setattr(resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(resource, "setrlimit", fake.setrlimit)
    assert raise_open_files_limit() == after
    assert connlimit.open_files_limit() == after[0]


def test_max_connections_is_validated() -> None:
    settings = load_settings(http={"max_connections": 5}, webhook={"allow_unsigned": True})
    assert settings.http.max_connections == 5
    with pytest.raises(ConfigError, match=r"BRIDGE_HTTP__MAX_CONNECTIONS: .*greater than or equal"):
        load_settings(http={"max_connections": 0}, webhook={"allow_unsigned": True})
