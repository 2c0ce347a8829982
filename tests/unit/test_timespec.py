from datetime import UTC, datetime

import pytest

from bridge.timespec import parse_since

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "back"),
    [("90s", 90), ("30m", 1_800), ("2h", 7_200), ("1.5h", 5_400), ("7d", 604_800), ("1W", 604_800)],
)
def test_a_span_counts_back_from_now(text: str, back: float) -> None:
    assert parse_since(text, NOW) == NOW - back


def test_epoch_seconds() -> None:
    assert parse_since("1764590400", NOW) == 1_764_590_400.0
    assert parse_since(" 1764590400.25 ", NOW) == 1_764_590_400.25


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2026-12-01T09:00:00Z", datetime(2026, 12, 1, 9, tzinfo=UTC)),
        ("2026-12-01T09:00:00+01:00", datetime(2026, 12, 1, 8, tzinfo=UTC)),
        ("2026-12-01T09:00", datetime(2026, 12, 1, 9, tzinfo=UTC)),  # no zone: UTC
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("20261201", datetime(2026, 12, 1, tzinfo=UTC)),  # the basic format, not 1970
    ],
)
def test_iso_8601_is_utc_unless_it_says(text: str, when: datetime) -> None:
    assert parse_since(text, NOW) == when.timestamp()


@pytest.mark.parametrize("text", ["", "yesterday", "1e9", "nan", "-5", "2h ago", "9" * 400])
def test_what_is_not_a_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_since(text, NOW)


def test_the_future_is_refused() -> None:
    with pytest.raises(ValueError, match="future"):
        parse_since("2026-12-02", NOW)


@pytest.mark.parametrize("text", ["1960-01-01", "1969-12-31T23:59:59Z", "3000w"])
def test_a_time_before_1970_is_1970(text: str) -> None:
    # Every record is newer; as a negative time, Kafka's offsets-for-times lookup is refused.
    assert parse_since(text, NOW) == 0.0


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2026-12-01T09:00:00z", datetime(2026, 12, 1, 9, tzinfo=UTC)),
        ("2026-12-01t09:00:00.5z", datetime(2026, 12, 1, 9, 0, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_a_lower_case_z_is_utc_as_rfc_3339_allows(text: str, when: datetime) -> None:
    assert parse_since(text, NOW) == when.timestamp()


def test_epoch_milliseconds_are_named_as_such_not_the_future() -> None:
    # A Kafka record's timestamp (kcat's %T) pasted as is: the error says what to give instead.
    with pytest.raises(
        ValueError, match=r"epoch milliseconds\? --since takes seconds \(1764590400\.250\)"
    ):
        parse_since("1764590400250", NOW)
