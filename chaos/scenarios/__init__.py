"""The scenarios of the fault matrix, by name, in the order `make chaos` runs them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from chaos.harness import Context, Outcome
from chaos.scenarios.broker_stop import broker_stop
from chaos.scenarios.calllog import calllog
from chaos.scenarios.cluster import cluster
from chaos.scenarios.feed import feed
from chaos.scenarios.network import network, resets
from chaos.scenarios.pod import pod, pod_dedup_process
from chaos.scenarios.replicas import replicas
from chaos.scenarios.slow_clients import slow_clients

Scenario = Callable[[Context], Awaitable[Outcome]]

SCENARIOS: dict[str, Scenario] = {
    "broker-stop": broker_stop,
    "network": network,
    "resets": resets,
    "replicas": replicas,
    "pod": pod,
    "pod-dedup-process": pod_dedup_process,
    "feed": feed,
    "slow-clients": slow_clients,
    "cluster": cluster,
    "calllog": calllog,
}
