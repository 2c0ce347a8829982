"""`python -m chaos`'s arguments."""

from __future__ import annotations

import pkgutil
import subprocess
from pathlib import Path

import pytest

import chaos.scenarios
from chaos.__main__ import commit, parser
from chaos.scenarios import SCENARIOS
from chaos.scenarios.pod import pod, pod_dedup_process


def test_every_scenario_module_is_registered() -> None:
    # A scenario written but not listed would never run, in `make chaos` or with `--only`.
    modules = {module.name for module in pkgutil.iter_modules(chaos.scenarios.__path__)}
    registered = {scenario.__module__.rsplit(".", 1)[1] for scenario in SCENARIOS.values()}
    assert registered == modules


def test_only_pod_selects_the_pod_scenario_alone() -> None:
    assert parser().parse_args(["--only", "pod"]).only == ["pod"]
    assert SCENARIOS["pod"] is pod


def test_only_pod_dedup_process_selects_the_pod_with_its_dedup_process_alone() -> None:
    assert parser().parse_args(["--only", "pod-dedup-process"]).only == ["pod-dedup-process"]
    assert SCENARIOS["pod-dedup-process"] is pod_dedup_process


def test_base_port_is_off_unless_given() -> None:
    assert parser().parse_args([]).base_port is None
    assert parser().parse_args(["--only", "cluster", "--base-port", "30000"]).base_port == 30000


@pytest.mark.parametrize("given", ["80", "65531", "3e4", "x"])
def test_a_base_port_without_room_for_the_cluster_is_refused(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parser().parse_args(["--base-port", given])
    assert refused.value.code == 2
    assert "--base-port" in capsys.readouterr().err


def test_the_highest_base_port_leaves_the_cluster_its_six_ports() -> None:
    assert parser().parse_args(["--base-port", "65530"]).base_port == 65530


def test_a_row_is_uncommitted_for_changed_code_not_for_the_document_it_rewrites(
    tmp_path: Path,
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    doc, code = tmp_path / "docs" / "reliability.md", tmp_path / "bridge.py"
    doc.parent.mkdir()
    doc.write_text("rows\n")
    code.write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    doc.write_text("rows of an earlier --only run\n")
    assert not commit(tmp_path, written=doc).endswith("+uncommitted")
    code.write_text("x = 2\n")
    assert commit(tmp_path, written=doc).endswith("+uncommitted")
