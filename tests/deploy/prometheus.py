"""A real Prometheus (Debian's `prometheus`) scraping a bridge with the alert rules loaded, and
its HTTP API."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.deploy.tools import DEPLOY, RELEASE, find_tool
from tests.polling import until
from tests.sockets import free_port

RULES = DEPLOY / "prometheus" / "pinecall-bridge.rules.yaml"
# PrometheusServer's scrape (and rule evaluation) interval unless given another.
SCRAPE_INTERVAL = "1s"


@dataclass
class Scraped:
    prometheus: str
    exposition: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.prometheus + path, params=params) as response:
            return await response.json()

    async def query(self, expr: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self.get("/api/v1/query", query=expr)
        return answer

    async def alerts(self, namespace: str) -> dict[str, str]:
        """The state ("pending" or "firing") of each alert active in `namespace`, by name."""
        found = (await self.get("/api/v1/alerts"))["data"]["alerts"]
        return {
            a["labels"]["alertname"]: a["state"]
            for a in found
            if a["labels"].get("namespace") == namespace
        }


async def scalar(scraped: Scraped, expr: str) -> float | None:
    """The value of a one-series query, None when it has no result."""
    result = (await scraped.query(expr))["data"]["result"]
    assert len(result) <= 1, f"{expr}: {result}"
    return float(result[0]["value"][1]) if result else None


class PrometheusServer:
    """Prometheus on a free port, scraping bridges every `interval` with `rules` loaded.

    `bridges`: each one's port, by the namespace it is labelled with (a pod of its own).
    """

    def __init__(
        self,
        workdir: Path,
        bridges: Mapping[str, int],
        rules: Path = RULES,
        interval: str = SCRAPE_INTERVAL,
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": RELEASE,
                    # The labels Kubernetes service discovery would add.
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{bridge_port}"],
                            "labels": {"namespace": namespace, "pod": "pinecall-bridge-0"},
                        }
                        for namespace, bridge_port in bridges.items()
                    ],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = self._log_path.open("w")
        self._process = subprocess.Popen(
            [
                find_tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self._log_path.read_text()

    def check_alive(self) -> None:
        assert self._process.poll() is None, f"prometheus exited:\n{self.log()}"

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)
        self._log.close()


async def until_scraping(scraped: Scraped, server: PrometheusServer, targets: int) -> None:
    """Return once Prometheus has scraped each of its `targets` up: traffic sent before its first
    scrape is one sample of counters already moved, no rate() at all."""

    async def scraping() -> bool:
        server.check_alive()
        try:
            return await scalar(scraped, "count(up == 1)") == targets
        except aiohttp.ClientError:  # not listening yet
            return False

    await until(scraping, 60, 0.2, lambda: f"Prometheus scraping:\n{server.log()}")
