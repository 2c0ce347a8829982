"""The Makefile: targets honour KAFKA_PORT, and the demo's HTTP_PORT and SIMULATOR_PORT."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def recipe(target: str, venv: Path, *variables: str) -> str:
    """The commands `make <target> KAFKA_PORT=29999 [VAR=value...]` would run, printed, none run."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / ".installed").touch()  # newer than pyproject.toml: no install is printed
    # Continuation lines joined: one command a line.
    return make("-n", target, "KAFKA_PORT=29999", f"VENV={venv}", *variables).replace("\\\n", " ")


def make(*args: str) -> str:
    """The stdout of `make <args>` in the repository, run as a newcomer's shell would run it."""
    # Run from `make test`, the outer make's flags (-j's jobserver, -s) must not reach this one;
    # nor the caller's own ports, which `?=` would take over the defaults.
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "HTTP_PORT", "SIMULATOR_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in outer}
    done = subprocess.run(
        ["make", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


@pytest.mark.parametrize(
    ("target", "client", "variable"),
    [
        ("run", "pinecall-bridge demo", "BRIDGE_KAFKA__BOOTSTRAP_SERVERS"),
        ("demo-headless", "pinecall-bridge demo --headless", "BRIDGE_KAFKA__BOOTSTRAP_SERVERS"),
        ("bridge", "pinecall-bridge run", "BRIDGE_KAFKA__BOOTSTRAP_SERVERS"),
        ("integration", "bin/pytest -m integration", "KAFKA_BOOTSTRAP"),
        ("test", "bin/pytest", "KAFKA_BOOTSTRAP"),
    ],
)
def test_a_target_reads_the_broker_on_kafka_port(
    target: str, client: str, variable: str, tmp_path: Path
) -> None:
    commands = recipe(target, tmp_path / "venv")
    lines = [line for line in commands.splitlines() if client in line]
    assert lines, commands
    for line in lines:
        assert f"{variable}=127.0.0.1:29999" in line, line


@pytest.mark.parametrize("target", ["run", "demo-headless"])
@pytest.mark.parametrize(
    ("variables", "options"),
    [
        ((), "--http-port 8080 --simulator-port 8765"),
        (("HTTP_PORT=29998", "SIMULATOR_PORT=29997"), "--http-port 29998 --simulator-port 29997"),
    ],
    ids=["defaults", "chosen"],
)
def test_the_demo_runs_on_the_ports_given(
    target: str, variables: tuple[str, ...], options: str, tmp_path: Path
) -> None:
    commands = recipe(target, tmp_path / "venv", *variables)
    lines = [line for line in commands.splitlines() if "pinecall-bridge demo" in line]
    assert lines, commands
    for line in lines:
        assert line.rstrip().endswith(options), line


def test_make_help_lists_every_target_once_in_one_column() -> None:
    shown = make("help")
    rows = [re.fullmatch(r"  make (\S+) +(\S.*)", line) for line in shown.splitlines()]
    assert all(rows), shown
    documented = re.findall(r"^([a-z-]+):.*## ", (REPO / "Makefile").read_text(), re.M)
    assert [row[1] for row in rows if row] == documented
    # Every description starts in one column, after the longest target's name too.
    assert len({row.start(2) for row in rows if row}) == 1, shown


@pytest.mark.parametrize(
    ("target", "client"),
    [
        ("run", "pinecall-bridge demo"),
        ("demo-headless", "pinecall-bridge demo --headless"),
        ("bridge", "pinecall-bridge run"),
    ],
)
def test_a_demo_target_stops_the_broker_it_started(
    target: str, client: str, tmp_path: Path
) -> None:
    # `demo-headless` and `bridge` started the broker as a prerequisite and left it running:
    # tools/run-demo.sh starts it and stops it again only when it was not running before.
    commands = recipe(target, tmp_path / "venv")
    assert "kafka.sh up" not in commands, commands
    lines = [line for line in commands.splitlines() if client in line]
    assert lines, commands
    assert all("tools/run-demo.sh " in line for line in lines), lines
    # make passes its SIGTERM to its recipe's shell only, which dies without passing it on: the
    # script must be that process (`exec`), or it and the bridge run on, orphaned.
    assert all(re.search(r"(^|\s)exec tools/run-demo\.sh ", line) for line in lines), lines


def test_make_help_and_the_readme_give_make_chaos_one_duration() -> None:
    # The help said ~25 min while the README said ~28 min.
    help_row = next(line for line in make("help").splitlines() if "make chaos " in line)
    readme_row = next(
        line for line in (REPO / "README.md").read_text().splitlines() if "| `make chaos` |" in line
    )
    duration = re.search(r"\((~?[^;)]*(?:min|hour)[^;)]*);", help_row)
    assert duration is not None, help_row
    assert f"on demand, {duration[1]}," in readme_row, (duration[1], readme_row)


def test_make_help_and_the_readme_name_the_same_targets() -> None:
    # `make lint`, `typecheck`, `helm`, `prometheus`, `kcat`, `iptables` and `asyncapi` were in
    # `make help` but nowhere in the README, which says `make help` lists every target.
    shown = {line.split()[1] for line in make("help").splitlines()}
    named = set(re.findall(r"`make ([a-z-]+)", (REPO / "README.md").read_text()))
    assert shown - named == set(), "in `make help`, not in the README"
    assert named - shown == set(), "in the README, not in `make help`"


def test_make_clean_stops_every_local_broker_before_removing_their_data() -> None:
    # It stopped KAFKA_PORT's broker only: a `make kafka-cluster-up` cluster ran on, and its
    # data (.cache/kafka-cluster) stayed; a `make kafka-compat` broker lost its data dir running.
    commands = make("-n", "clean", "KAFKA_PORT=29999").splitlines()
    removal = next(i for i, line in enumerate(commands) if line.startswith("rm -rf "))
    stops = commands[:removal]
    assert "tools/kafka/kafka.sh down" in stops, commands
    assert "tools/kafka/cluster.sh down" in stops, commands
    assert any(line.endswith("KAFKA_PORT=9292 tools/kafka/kafka.sh down") for line in stops)
    removed = commands[removal].split()[2:]
    assert {".cache/kafka-data", ".cache/kafka-cluster"} <= set(removed), commands
