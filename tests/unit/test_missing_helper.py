"""tests.missing.skip_or_fail: skipped locally, failed in CI, with the same message."""

import ast
from pathlib import Path

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


def test_no_integration_test_skips_but_through_skip_or_fail() -> None:
    # What an integration test lacks (a tool, root) is installed in CI: a bare pytest.skip
    # there would pass it unnoticed (the SCRAM rotation tests did, without ss).
    root = Path(__file__).parents[1] / "integration"
    bare = [
        f"{path.name}:{node.lineno}"
        for path in sorted(root.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.skip"
    ]
    assert bare == []
