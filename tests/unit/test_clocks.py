from bridge.clocks import (
    RATE_TOLERANCE,
    SKEW_ALLOWANCE_SECONDS,
    BrokerClock,
    beyond_allowance,
    broker_offset,
    broker_passed,
    look_back_from,
)


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


def test_the_broker_clock_is_unknown_until_a_record_is_read() -> None:
    assert BrokerClock().floor(50.0) is None


def test_the_broker_clock_carries_the_freshest_append_time_forward_a_little_slow() -> None:
    clock = BrokerClock()
    clock.saw(1000.0, ticks=10.0)  # read at once
    clock.saw(900.0, ticks=20.0)  # a backlog's record, read late: bounds nothing higher
    floor = clock.floor(110.0)
    assert floor == 1000.0 + 100.0 * (1 - RATE_TOLERANCE)
    assert 1099.9 < floor < 1100.0  # never past the broker's now, whichever clock is faster


def test_a_stamp_is_the_floor_in_whole_milliseconds_and_none_before_a_read() -> None:
    clock = BrokerClock()
    assert clock.stamp(1000.0, 5.0) is None
    clock.saw(1000.0007, ticks=0.0)
    # Cut, not rounded: 1000000.7 ms rounded up would be past what the broker's clock passed.
    assert clock.stamp(1000.0, 0.0) == 1_000_000
    floor = clock.floor(12.0)
    assert floor is not None
    assert clock.stamp(1012.0, 12.0) == int(floor * 1000)
    assert clock.stamp(1000.0 + 7200.0, 12.0) == int(floor * 1000)  # ours 2 h ahead: the floor


def test_a_stamp_is_at_most_the_allowance_past_our_clock() -> None:
    # Appended by a broker 2 h ahead, stepped back since (or another broker than the output
    # partition's leader): the floor alone would be refused as past message.timestamp.after.max.ms.
    clock = BrokerClock()
    clock.saw(1000.0 + 7200.0, ticks=0.0)
    assert clock.stamp(1000.0, 0.0) == int((1000.0 + SKEW_ALLOWANCE_SECONDS) * 1000)


def test_the_broker_time_passed_is_the_earlier_clock_less_the_allowance() -> None:
    # Ours 10 minutes ahead of the broker's, or 10 minutes behind it: the earlier counts.
    assert broker_passed(1600.0, 1000.0) == 1000.0 - SKEW_ALLOWANCE_SECONDS
    assert broker_passed(400.0, 1000.0) == 400.0 - SKEW_ALLOWANCE_SECONDS
    assert broker_passed(1000.0, None) is None
    assert look_back_from(1600.0, 1000.0) == 1000.0 - SKEW_ALLOWANCE_SECONDS
    assert look_back_from(1000.0, None) == 1000.0 - SKEW_ALLOWANCE_SECONDS


def test_a_look_back_counts_the_ttl_from_the_earlier_clock_less_the_allowance() -> None:
    ttl = 3600.0
    clock = BrokerClock()
    # No record read: our clock alone, an allowance early.
    assert clock.look_back(ttl, 1000.0, 5.0) == 1000.0 - SKEW_ALLOWANCE_SECONDS - ttl
    clock.saw(1000.0, ticks=0.0)  # the floor stands at 1000 at tick 0
    # The floor ahead of our clock (ours 10 minutes behind): ours counts.
    assert clock.look_back(ttl, 400.0, 0.0) == 400.0 - SKEW_ALLOWANCE_SECONDS - ttl
    # The floor behind our clock (ours 10 minutes ahead): the floor counts.
    assert clock.look_back(ttl, 1600.0, 0.0) == 1000.0 - SKEW_ALLOWANCE_SECONDS - ttl
    # The allowance alone between the two clocks agreeing and the look-back's end.
    assert clock.look_back(0.0, 1000.0, 0.0) == 1000.0 - SKEW_ALLOWANCE_SECONDS
    # The floor is read at the ticks given, carried forward as floor() does.
    floor = clock.floor(100.0)
    assert floor is not None
    assert clock.look_back(ttl, 2000.0, 100.0) == floor - SKEW_ALLOWANCE_SECONDS - ttl
