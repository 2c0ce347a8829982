"""Paths, the external tools (helm, promtool, prometheus, hadolint) and chart rendering."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.missing import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pinecall-bridge"
ALL_ON = CHART / "ci" / "all-features-values.yaml"
DEPLOY = REPO / "deploy"
RELEASE = "pinecall-bridge"  # fullname = pinecall-bridge: the names deploy/ files use
# The dedup group, which the chart requires: the one releases ran with before it was required
# (deploy/'s files name it).
GROUP = "config.dedup.group=pinecall-bridge"
# The least a render needs (the chart refuses to render without them): a webhook secret, a group.
SIGNED = f"secrets.existingSecret=pinecall-bridge-secrets,{GROUP}"

Manifest = dict[str, Any]

# Kafka Exporter's consumer-group metrics (the dashboard's downstream consumers row, the optional
# PinecallBridgeDownstreamLagHigh): another exporter's, so never in the bridge's /metrics.
KAFKA_EXPORTER_METRIC = re.compile(r"\bkafka_consumergroup_[a-z_]+\b")


# `make deploy-tools` installs prometheus and promtool only with apt-get as root.
_PROMETHEUS = (
    "`sudo apt-get install prometheus` (Debian/Ubuntu), or prometheus and promtool from "
    "https://prometheus.io/download/ on PATH"
)
HOW_TO_GET = {
    "prometheus": _PROMETHEUS,
    "promtool": _PROMETHEUS,
    "kcat": "`make kcat` installs it (Debian's package, as root)",
}


def find_tool(name: str) -> Path:
    """The tool's path; a test without it is skipped locally and fails in CI (`CI` is set)."""
    candidates = {
        "helm": [os.environ.get("HELM", ""), str(REPO / ".cache" / "bin" / "helm")],
        "hadolint": [str(Path(sys.executable).parent / "hadolint")],
    }.get(name, [])
    for candidate in [*candidates, shutil.which(name) or ""]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    message = f"{name} is not installed: {HOW_TO_GET.get(name, '`make deploy-tools` installs it')}"
    return skip_or_fail(message)


def run(*args: str | Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the assertion shows its output."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, **kwargs
    )
    if check:
        assert done.returncode == 0, (
            f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(find_tool("helm"), *args, check=check)


def template_args(*sets: str, values: Path | None = None, chart: Path = CHART) -> list[str | Path]:
    args: list[str | Path] = ["template", RELEASE, chart, "--namespace", "pinecall"]
    if values is not None:
        args += ["-f", values]
    for item in sets:
        args += ["--set", item]
    return args


def render_text(*sets: str, values: Path | None = None, show_only: str | None = None) -> str:
    args = template_args(*sets, values=values)
    if show_only is not None:
        args += ["--show-only", show_only]
    return helm(*args).stdout


def render(*sets: str, values: Path | None = None) -> list[Manifest]:
    """`helm template` as a list of manifests (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(render_text(*sets, values=values)) if doc]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, nested mappings merged key by key (as helm merges values)."""
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kafka_exporter_only(expr: str) -> bool:
    """An expression over Kafka Exporter's consumer-group metrics and no bridge metric."""
    return bool(KAFKA_EXPORTER_METRIC.search(expr)) and "pinecall_bridge_" not in expr
