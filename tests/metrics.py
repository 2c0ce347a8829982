"""One reader of a Prometheus sample for every test: a misspelt name fails instead of reading 0.

Also the one scraper of a /metrics endpoint, for the bridges a test runs as processes.
And the label values the code writes, for the tests that check the docs and dashboard name them.
"""

from __future__ import annotations

import difflib
from typing import get_args

import aiohttp
from aiokafka.errors import TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from bridge.config import DedupSettings
from bridge.connlimit import Listener
from bridge.ingest.topic import ingest_topic_findings
from bridge.metrics import Metrics
from bridge.normalise.shapes import UnrecognisedReason
from bridge.pipeline import TOO_LARGE, PublishFailure
from bridge.rejections import RejectReason
from bridge.routing import DropReason
from bridge.sink.durability import durability_problem
from bridge.sink.topicreads import NOT_YET_VISIBLE, unread_kind
from bridge.sources.calllog.follow import GIVE_UP_REASONS, REASONS
from bridge.sources.frames import FrameKind
from bridge.sources.reconnect import DisconnectReason
from bridge.sources.secretwatch import Label, Result

# The samples a family of each type exports, besides `_created` (off in the bridge; counted from
# the samples when on). A labelled metric without children yet exports no sample at all: its
# name is known from these.
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def sample(registry: CollectorRegistry | Metrics, name: str, **labels: str) -> float:
    """The value of sample `name` with exactly these labels; 0.0 while that series is absent.

    Fails the test when no metric in the registry exports a sample named `name`, or when that
    sample's series carry other label names than `labels`: either would read 0 for ever.
    """
    if isinstance(registry, Metrics):
        registry = registry.registry
    families = list(registry.collect())
    names = {f.name + suffix for f in families for suffix in _SUFFIXES.get(f.type, ("",))}
    names.update(s.name for f in families for s in f.samples)
    if name not in names:
        close = difflib.get_close_matches(name, sorted(names), n=3)
        raise AssertionError(f"no metric exports a sample named {name!r} (close: {close})")
    _check_label_names(families, name, labels)
    values = (s.value for f in families for s in f.samples if s.name == name and s.labels == labels)
    return float(next(values, 0.0))


def _check_label_names(families: list[Metric], name: str, labels: dict[str, str]) -> None:
    """Only checkable once a series exists: without one, the label names are not exported."""
    seen = {frozenset(s.labels) for f in families for s in f.samples if s.name == name}
    if seen and frozenset(labels) not in seen:
        expected = sorted(sorted(keys) for keys in seen)
        raise AssertionError(f"{name} has labels {expected}, not {sorted(labels)}")


async def exposition(session: aiohttp.ClientSession, url: str, within: float | None = None) -> str:
    """The text `url`/metrics answers; `within`: give up after that many seconds."""
    timeout = session.timeout if within is None else aiohttp.ClientTimeout(total=within)
    async with session.get(url + "/metrics", timeout=timeout) as response:
        return await response.text()


def series(text: str) -> dict[str, float]:
    """An exposition's samples as {'name{labels}': value}, labels in Prometheus text form."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def scrape(
    session: aiohttp.ClientSession, url: str, within: float | None = None
) -> dict[str, float]:
    """The samples `url`/metrics answers, as `series` reads them."""
    return series(await exposition(session, url, within))


def every_metric() -> Metrics:
    """A Metrics with every series a process can export registered (the feed's, registration's)."""
    metrics = Metrics()
    metrics.register_feed()
    metrics.register_registration()
    return metrics


def _topic_problems() -> set[str]:
    """Every `problem` of topic_problem, from the checks that name them (no one list holds them)."""
    worst = {"message.timestamp.type": "CreateTime", "retention.ms": "0", "retention.bytes": "1"}
    findings = ingest_topic_findings({**worst, "cleanup.policy": "compact"}, DedupSettings())
    errors = (None, TopicAuthorizationFailedError.errno, *NOT_YET_VISIBLE)
    durability = (durability_problem(*case) for case in ((1, "2"), (3, "3"), (3, "1")))
    return (
        {kind for kind, _ in findings}
        | {unread_kind(code) for code in errors}
        | {found[2] for found in durability if found is not None}
        | {"compacted"}  # bridge/service.py's, of an output topic
    )


def label_values() -> dict[str, dict[str, set[str]]]:
    """The values the code writes for each metric's labels, where it names them all, by metric and
    label."""
    listeners = set(get_args(Listener))
    closed: dict[str, dict[str, set[str]]] = {
        "pinecall_bridge_websocket_reconnects_total": {"reason": set(get_args(DisconnectReason))},
        "pinecall_bridge_sse_reconnects_total": {
            "reason": set(REASONS),
            "stream": {"call", "org_feed"},
        },
        "pinecall_bridge_sse_calls_given_up_total": {"reason": set(GIVE_UP_REASONS)},
        "pinecall_bridge_events_dead_lettered_total": {"reason": set(get_args(UnrecognisedReason))},
        "pinecall_bridge_events_dropped_total": {"reason": set(get_args(DropReason))},
        "pinecall_bridge_websocket_frames_total": {"kind": set(get_args(FrameKind))},
        "pinecall_bridge_events_rejected_total": {"reason": set(get_args(RejectReason))},
        "pinecall_bridge_secret_reloads_total": {
            "result": set(get_args(Result)),
            "secret": set(get_args(Label)),
        },
        "pinecall_bridge_topic_problem": {"problem": _topic_problems()},
        "pinecall_bridge_publish_failures_total": {
            "reason": {*get_args(PublishFailure), TOO_LARGE}
        },
        **{
            f"pinecall_bridge_http_connections_{name}": {"listener": set(listeners)}
            for name in ("timed_out_total", "open", "max", "refused_total")
        },
    }
    # The values created at 0 from the start (for increase()) are named by the code too.
    for family in every_metric().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label != "le":
                    closed.setdefault(name, {}).setdefault(label, set()).add(value)
    return closed
