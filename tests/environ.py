"""One clean environment for the tests that load the bridge's settings in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def without_bridge_variables(monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    """Unset the caller's BRIDGE_* variables and work in `cwd`, so that no .env is read."""
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(cwd)
