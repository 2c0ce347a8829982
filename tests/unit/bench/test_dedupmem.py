"""bench.dedupmem: its command line."""

from __future__ import annotations

import sys

import pytest

from bench import dedupmem


def test_help_prints_the_options_and_measures_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, any argument but --steady ran the full measurement (a million ids) instead.
    def measured(*args: object, **kwargs: object) -> dict[str, float]:
        raise AssertionError("--help measured")

    monkeypatch.setattr(dedupmem, "steady", measured)
    monkeypatch.setattr(dedupmem, "SeenWindow", measured)
    monkeypatch.setattr(sys, "argv", ["dedupmem", "--help"])
    with pytest.raises(SystemExit) as stopped:
        dedupmem.main()
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bench.dedupmem" in out
    assert "--traced" in out
    assert "--steady N" in out
