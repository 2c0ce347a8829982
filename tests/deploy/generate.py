"""deploy/ is generated from the chart, so the two cannot drift.

    python -m tests.deploy.generate          # (make deploy-generate) rewrite deploy/'s files
    python -m tests.deploy.generate --check  # exit 1 if deploy/ differs (the tests do this)

The chart (helm/pinecall-bridge) is the one source: the dashboard is files/dashboard.json as the
chart's ConfigMap carries it, the alert rules are the PrometheusRule's spec, and the Strimzi
resources are rendered with config.topics.create=false. Helm's own labels and the namespace are
dropped, so the files apply anywhere; comments in the templates are kept.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.deploy.tools import DEPLOY, RELEASE, SIGNED, render, render_text

GENERATED = (
    "# Generated from helm/pinecall-bridge by `make deploy-generate`: edit the chart, not this.\n"
)
SETS = (
    SIGNED,
    "grafanaDashboard.enabled=true",
    "prometheusRule.enabled=true",
    # Off in the chart by default; in deploy/'s file it is harmless without Kafka Exporter.
    "prometheusRule.downstreamLag.enabled=true",
    # The rules then know the scrape job's name (PinecallBridgeMetricsAbsent): deploy/'s file
    # assumes a job named pinecall-bridge, as its README says.
    "serviceMonitor.enabled=true",
    "strimzi.enabled=true",
    "config.topics.create=false",
)
# Lines that tie a manifest to one Helm release or namespace.
_HELM_ONLY = re.compile(
    r"^\s*(# Source: .*|helm\.sh/chart: .*|app\.kubernetes\.io/(managed-by|instance|version): .*"
    r"|namespace: .*)$"
)


def _portable(text: str) -> str:
    lines = [line for line in text.splitlines() if not _HELM_ONLY.match(line)]
    return "\n".join(lines).strip().removeprefix("---").strip() + "\n"


def rules(values: Path | None = None, interval: str | None = None) -> str:
    """The PrometheusRule's spec as a plain Prometheus rules file (`groups:` at the top);
    `values`: a values file over deploy/'s settings (a test's shorter windows), `interval`: the
    scrape interval they are read at (the chart refuses ranges of fewer than two scrapes)."""
    scrape: tuple[str, ...] = ()
    if interval is not None:
        # The chart's 10 s scrapeTimeout is refused over a shorter interval.
        scrape = (f"serviceMonitor.interval={interval}", f"serviceMonitor.scrapeTimeout={interval}")
    text = render_text(*SETS, *scrape, values=values, show_only="templates/prometheusrule.yaml")
    spec = text.split("\nspec:\n", 1)[1]
    return "".join(line.removeprefix("  ") + "\n" for line in spec.splitlines())


def expected() -> dict[str, str]:
    """deploy/'s generated files, by path relative to deploy/."""
    dashboard = next(
        m for m in render(*SETS) if m["kind"] == "ConfigMap" and "pinecall-bridge.json" in m["data"]
    )["data"]["pinecall-bridge.json"]
    json.loads(dashboard)  # it must stay valid JSON
    show = {
        "topics": "templates/strimzi-topics.yaml",
        "user": "templates/strimzi-user.yaml",
    }
    text = {key: render_text(*SETS, show_only=path) for key, path in show.items()}
    return {
        "grafana/pinecall-bridge.json": dashboard + "\n",
        "prometheus/pinecall-bridge.rules.yaml": GENERATED
        + f'# Thresholds: the chart\'s `alerts` values; job/deployment "{RELEASE}".\n'
        + rules(),
        "strimzi/kafka-topics.yaml": GENERATED + _portable(text["topics"]),
        "strimzi/kafka-user.yaml": GENERATED + _portable(text["user"]),
    }


def differences() -> list[str]:
    return [
        name
        for name, content in expected().items()
        if not (DEPLOY / name).is_file() or (DEPLOY / name).read_text() != content
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = differences()
        for name in stale:
            print(f"deploy/{name} differs from the chart: run `make deploy-generate`")
        return 1 if stale else 0
    for name, content in expected().items():
        path = DEPLOY / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote deploy/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
