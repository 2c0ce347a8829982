"""tests/deploy: the Kubernetes artefacts, checked with the tools their users run.

They need helm, promtool/prometheus and hadolint (`make deploy-tools`, a step of `make test`):
without one a test is skipped locally and fails in CI. The Prometheus test also needs a Kafka
broker, the session's (KAFKA_BOOTSTRAP's, else one on a free port stopped at the session's end),
so it is marked `integration` too.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deploy: checks the Dockerfile, Helm chart and deploy/ with their real tools"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.deploy)
