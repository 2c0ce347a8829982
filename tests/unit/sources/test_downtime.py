from bridge.sources.downtime import Downtime


def counted() -> tuple[Downtime, list[float]]:
    added: list[float] = []
    return Downtime(added.append), added


def test_a_gap_is_counted_as_it_passes_and_ends_when_up() -> None:
    downtime, added = counted()
    downtime.down(100.0)
    downtime.tally(130.0)  # a long outage shows while it lasts
    downtime.tally(160.0)
    downtime.up(165.0)
    downtime.tally(200.0)  # up: nothing more
    assert added == [30.0, 30.0, 5.0]


def test_the_earliest_start_of_a_gap_stands() -> None:
    downtime, added = counted()
    downtime.down(10.0)
    downtime.down(15.0)  # still down: a later start does not shorten the gap
    downtime.up(20.0)
    assert added == [10.0]


def test_a_refused_connection_counts_from_when_it_opened() -> None:
    downtime, added = counted()
    downtime.down(0.0)
    downtime.up(4.0)  # opened
    downtime.down(4.0)  # refused: it delivered nothing since it opened
    downtime.up(9.0)
    assert sum(added) == 9.0


def test_nothing_is_counted_while_never_down() -> None:
    downtime, added = counted()
    downtime.tally(5.0)
    downtime.up(6.0)
    assert added == []
