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


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("2h30m", 9_000),
        ("1d2h", 93_600),
        ("1w1d1h1m1s", 694_861),
        ("1h 30m", 5_400),  # quoted on the command line
        ("2H30M", 9_000),
        ("1.5h30m", 7_200),
    ],
)
def test_a_compound_span_counts_its_sum_back(text: str, back: float) -> None:
    assert parse_since(text, NOW) == NOW - back


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("30m2h", r"not a span: its units go from the largest down, each once \(h after m\)"),
        ("1d2h1d", r"each once \(d after h\)"),
        ("1h1h", r"each once \(h again\)"),
        ("-2h", "not a span: a span counts back from now and has no sign"),
        ("+1h30m", "has no sign"),
        ("2h30", r"not a span: its last number has no unit \(s, m, h, d, w\)"),
        ("2h30x", r"is not epoch seconds, an ISO-8601 time .* or a span back from now"),
        ("h", "is not epoch seconds"),
    ],
)
def test_a_wrong_span_is_refused_with_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_since(text, NOW)


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
    # Not bare "not": the future's refusal ("there is nothing to read") has it too.
    with pytest.raises(ValueError, match=r"is not\b"):
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


@pytest.mark.parametrize("future", [False, True])
def test_epoch_milliseconds_are_named_as_such_not_the_future(future: bool) -> None:
    # A Kafka record's timestamp (kcat's %T) pasted as is: the error says what to give instead,
    # naming no option (it parses `--until` too).
    with pytest.raises(ValueError, match=r"epoch milliseconds\? Give seconds \(1764590400\.250\)$"):
        parse_since("1764590400250", NOW, future=future)
