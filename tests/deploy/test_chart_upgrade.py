"""`helm upgrade` from the previous release's chart (PREVIOUS_RELEASE, from git history)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_chart import leaf_paths
from tests.deploy.tools import CHART, SIGNED, Manifest, helm, template_args
from tests.previous_release import extract

# What Kubernetes refuses to change in place: `helm upgrade` fails on a live cluster if one moves.
IMMUTABLE = {
    "Deployment": [("spec", "selector")],
    "StatefulSet": [
        ("spec", "selector"),
        ("spec", "serviceName"),
        ("spec", "volumeClaimTemplates"),
    ],
    "Service": [("spec", "clusterIP"), ("spec", "type")],
    "PodDisruptionBudget": [("spec", "selector")],
    "Job": [("spec", "template")],
}
# Previous default keys this chart removed, each refused with what to set instead (README
# "Upgrading").
REMOVED = {"alerts.dedupRestoreP99Seconds": "alerts.dedupRestoreRemainingMinutes"}


@pytest.fixture(scope="module")
def previous_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = extract(tmp_path_factory.mktemp("previous-chart"), "helm")
    return tree / "helm" / "pinecall-bridge"


def rendered(chart: Path, values: Path | None) -> dict[tuple[str, str], Manifest]:
    text = helm(*template_args(SIGNED, values=values, chart=chart)).stdout
    return {(m["kind"], m["metadata"]["name"]): m for m in yaml.safe_load_all(text) if m}


def field(manifest: Manifest, path: tuple[str, ...]) -> Any:
    for key in path:
        manifest = manifest.get(key) or {}
    return manifest


@pytest.mark.parametrize("all_features", [False, True], ids=["defaults", "all-features"])
def test_an_upgrade_renames_nothing_and_moves_no_immutable_field(
    previous_chart: Path, all_features: bool
) -> None:
    # The previous release's values file, as the platform team has it.
    values = previous_chart / "ci" / "all-features-values.yaml" if all_features else None
    before, after = rendered(previous_chart, values), rendered(CHART, values)
    # A renamed or dropped object is deleted by the upgrade (a ServiceMonitor mid-rollout...).
    assert set(before) - set(after) == set()
    moved = [
        f"{kind}/{name} {'.'.join(path)}"
        for (kind, name), old in before.items()
        for path in IMMUTABLE.get(kind, [])
        if field(old, path) != field(after[kind, name], path)
    ]
    assert moved == []


def test_every_previous_default_validates_or_is_a_documented_removal(
    previous_chart: Path, tmp_path: Path
) -> None:
    old = yaml.safe_load((previous_chart / "values.yaml").read_text())
    assert set(REMOVED) <= set(leaf_paths(old))
    readme = (CHART.parents[1] / "README.md").read_text()
    for removed, instead in REMOVED.items():
        assert f"`{removed}`" in readme
        assert instead in readme
        section, key = removed.split(".")
        kept = {**old, section: {k: v for k, v in old[section].items() if k != key}}
        (tmp_path / "kept.yaml").write_text(yaml.safe_dump(kept))
        helm(*template_args(SIGNED, values=tmp_path / "kept.yaml"))
        refused = helm(*template_args(SIGNED, values=previous_chart / "values.yaml"), check=False)
        assert refused.returncode != 0
        assert f"{removed} was removed" in refused.stderr
        assert instead in refused.stderr


def test_reuse_values_of_the_previous_chart_is_refused_saying_how_to_upgrade(
    previous_chart: Path, tmp_path: Path
) -> None:
    # `helm upgrade --reuse-values` renders the new templates with the old chart's values.yaml.
    chart = shutil.copytree(CHART, tmp_path / "pinecall-bridge")
    shutil.copy(previous_chart / "values.yaml", chart / "values.yaml")
    refused = helm(*template_args(SIGNED, chart=chart), check=False)
    assert refused.returncode != 0
    assert "--reset-then-reuse-values" in refused.stderr, refused.stderr
