from bridge.sources.reconnect import AUTH_MIN_DELAY, ReconnectPolicy


def top(low: float, high: float) -> float:
    """Jitter at its ceiling, so the exponential schedule is visible."""
    return high


def test_exponential_with_cap() -> None:
    policy = ReconnectPolicy(0.5, 30, 60, rand=top)
    delays = [policy.next_delay("connect_error", None) for _ in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_full_jitter_stays_within_the_ceiling() -> None:
    seen: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        seen.append((low, high))
        return (low + high) / 2

    policy = ReconnectPolicy(0.5, 30, 60, rand=record)
    assert policy.next_delay("closed", 1.0) == 0.25
    assert seen == [(0.0, 0.5)]


def test_stable_connection_resets_the_backoff() -> None:
    policy = ReconnectPolicy(0.5, 30, 60, rand=top)
    for _ in range(5):
        policy.next_delay("closed", 1.0)
    assert policy.next_delay("closed", 61.0) == 0.5
    assert policy.next_delay("closed", 2.0) == 1.0


def test_auth_failures_never_hammer() -> None:
    policy = ReconnectPolicy(0.5, 30, 60, rand=lambda low, high: 0.0)
    delays = [policy.next_delay("auth", None) for _ in range(8)]
    assert delays[0] == AUTH_MIN_DELAY
    assert delays == sorted(delays)
    assert delays[-1] == 30
    # A connection that opened clears the auth streak.
    assert policy.next_delay("closed", 1.0) == 0.0


def test_reconnects_forever_past_any_number_of_attempts() -> None:
    # 2.0**1024 raised OverflowError at the 1,025th consecutive attempt and killed the reader.
    policy = ReconnectPolicy(0.5, 30, 60, rand=top)
    delays = [policy.next_delay("connect_error", None) for _ in range(5000)]
    assert delays[-1] == 30
    assert policy.attempt == 5000


def test_refused_subscriptions_never_hammer() -> None:
    # The connection opens each time (connected_for is set), and the platform refuses the
    # subscription at once: a streak of refusals, not a fresh start each time.
    policy = ReconnectPolicy(0.5, 30, 60, rand=lambda low, high: 0.0)
    delays = [policy.next_delay("subscribe_refused", 0.01) for _ in range(8)]
    assert delays[0] == AUTH_MIN_DELAY
    assert delays == sorted(delays)
    assert delays[-1] == 30


def test_a_stable_connection_closed_for_its_token_reconnects_at_once_every_time() -> None:
    # Pinecall closes a feed whose token expired with 4001: each hourly expiry waited 5 s more
    # (5, 10, ... up to the cap), the feed unread meanwhile.
    policy = ReconnectPolicy(0.5, 30, 60, rand=top)
    assert [policy.next_delay("auth", 3600.0) for _ in range(8)] == [0.5] * 8
    # A refusal right after it is a streak again.
    assert policy.next_delay("auth", None) == AUTH_MIN_DELAY


def test_refusal_streaks_that_began_together_do_not_retry_together() -> None:
    # A refusal's wait was its floor alone (5, 10, ... s, then the cap every time): after a
    # platform outage every feed's token requests came back at the same instants, for good.
    seen: list[tuple[float, float]] = []

    def highest(low: float, high: float) -> float:
        seen.append((low, high))
        return high

    policy = ReconnectPolicy(0.5, 30, 60, rand=highest)
    delays = [policy.next_delay("token_error", None) for _ in range(8)]
    # Each floor less up to a fifth of it (never under the first's 5 s); past it, the full jitter.
    assert delays == [AUTH_MIN_DELAY, 8, 12, 16, 20, 24, 30, 30]
    assert (0.0, 6.0) in seen  # the cap's fifth: never above the cap
