"""tests.missing.skip_or_fail: skipped locally, failed in CI, with the same message."""

import pytest

from tests.missing import skip_or_fail


def test_without_ci_the_test_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^helm is not installed$"):
        skip_or_fail("helm is not installed")


def test_an_empty_ci_is_not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("helm is not installed")


def test_in_ci_the_test_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"^helm is not installed$"):
        skip_or_fail("helm is not installed")
