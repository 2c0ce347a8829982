import pytest

from bridge.simulator.retry import backoff, judge


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "ok"), (204, "ok"), (None, "retry"), (500, "retry"), (503, "retry"),
     (400, "final"), (401, "final"), (404, "final"), (413, "final"), (302, "final")],
)  # fmt: skip
def test_judge(status: int | None, verdict: str) -> None:
    assert judge(status) == verdict


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(0.2, n, 1.0) for n in (1, 2, 3, 4)] == pytest.approx([0.2, 0.4, 0.8, 1.0])
