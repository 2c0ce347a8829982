"""The pod's /metrics from its workers' own: one exposition, each sample labelled `worker`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bridge.metrics import WORKERS_UNREACHABLE, WORKERS_UNREACHABLE_HELP

WORKER_LABEL = "worker"


class _Families(Collector):
    """Hands generate_latest the merged families, which renders them as the bridge's own."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def merge(expositions: Mapping[str, str | None]) -> bytes:
    """Every worker's samples with `worker="<key>"` added, each family's HELP and TYPE once.

    A worker whose exposition is None (no answer) or unreadable is left out and counted in the
    one pod-level sample of `pinecall_bridge_workers_unreachable`, which has no worker label.
    """
    families: dict[str, Metric] = {}
    left_out = 0
    for worker, text in expositions.items():
        try:
            parsed = list(text_string_to_metric_families(text)) if text is not None else None
        except ValueError:
            parsed = None
        if parsed is None:
            left_out += 1
            continue
        for family in parsed:
            if family.name == WORKERS_UNREACHABLE:  # each worker's own is 0: the pod's is below
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: worker})
                for sample in family.samples
            )
    pod = Metric(WORKERS_UNREACHABLE, WORKERS_UNREACHABLE_HELP, "gauge")
    pod.add_sample(WORKERS_UNREACHABLE, {}, float(left_out))
    families[WORKERS_UNREACHABLE] = pod
    return generate_latest(_Families(families.values()))
