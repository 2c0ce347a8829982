"""One reader of a Prometheus sample for every test: a misspelt name fails instead of reading 0.

Also the one scraper of a /metrics endpoint, for the bridges a test runs as processes.
"""

from __future__ import annotations

import difflib

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from bridge.metrics import Metrics

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
