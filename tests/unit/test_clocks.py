from bridge.clocks import SKEW_ALLOWANCE_SECONDS, beyond_allowance, broker_offset


def test_an_append_time_between_send_and_ack_is_no_offset() -> None:
    assert broker_offset(100.0, 100.2, 100.1) == 0.0
    assert broker_offset(100.0, 100.2, 100.0) == 0.0
    assert broker_offset(100.0, 100.2, 100.2) == 0.0


def test_an_append_time_outside_send_and_ack_bounds_the_offset_either_way() -> None:
    # A replica 10 minutes ahead of the broker: the broker stamps before our send.
    assert broker_offset(1000.0, 1000.5, 400.0) == -600.0
    # A replica whose clock stepped back 2 minutes: the broker stamps after our ack.
    assert broker_offset(1000.0, 1000.5, 1120.5) == 120.0


def test_only_an_offset_past_the_allowance_is_beyond_it() -> None:
    assert not beyond_allowance(SKEW_ALLOWANCE_SECONDS)
    assert not beyond_allowance(-SKEW_ALLOWANCE_SECONDS)
    assert beyond_allowance(SKEW_ALLOWANCE_SECONDS + 0.001)
    assert beyond_allowance(-SKEW_ALLOWANCE_SECONDS - 0.001)
