"""One clean environment for the tests that load the bridge's settings in-process, or that set
the proxy variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_settings


def without_bridge_variables(monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    """Unset the caller's BRIDGE_* variables and work in `cwd`, so that no .env is read."""
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(cwd)


def proxied_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """Only `variables` among the proxy variables, as a pod's env sets them; none without any."""
    # Every `*_proxy`, in any case: urllib's getproxies (so websockets and the bridge) reads them
    # all, WSS_PROXY and SOCKS_PROXY too.
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def settings_problems() -> list[str]:
    """What load_settings refuses the environment for, as it stands."""
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return caught.value.problems
