"""Every bridge series the alert rules and the dashboard select, by name, label and value, is one
the bridge's code can emit: a label it never has, or a value it never writes, selects nothing and
the alert stays silent for ever. Static: the registry's label names, the code's string constants."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from functools import cache

from prometheus_client.metrics import MetricWrapperBase

from bridge.metrics import Metrics
from bridge.workers.merge import WORKER_LABEL
from tests.deploy.prometheus import RULES
from tests.deploy.tools import DEPLOY, REPO, load_yaml
from tests.metrics import label_values

DASHBOARD = DEPLOY / "grafana" / "pinecall-bridge.json"
# Added by the scrape (Kubernetes service discovery, Prometheus) or a pod of several workers.
TARGET_LABELS = {"namespace", "pod", "job", "instance", WORKER_LABEL}
SELECTOR = re.compile(r"\b(pinecall_bridge_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"""(\w+)\s*(=~|!~|!=|=)\s*(?:"([^"]*)"|`([^`]*)`)""")
GROUPING = re.compile(r"\b(by|on|without|ignoring)\s*\(([^)]*)\)")
LITERALS = re.compile(r"[a-z0-9_]+(?:\|[a-z0-9_]+)*")
# Functions that read a range as a counter: a drop is taken for a restart from 0.
COUNTER_FUNCTIONS = re.compile(r"\b(rate|irate|increase|resets)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
# Counters by Prometheus' naming convention, for series of other exporters (kube-state-metrics',
# cAdvisor's, Kafka Exporter's), whose types are not known here.
COUNTER_NAMED = re.compile(r".+_(total|count|sum|bucket)")


def series_labels() -> dict[str, frozenset[str]]:
    """Each series name the bridge exports (any process, the feed's too), with its label names."""
    metrics = Metrics()
    metrics.register_feed()
    metrics.register_registration()
    found: dict[str, frozenset[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, labels, kind = metric._name, frozenset(metric._labelnames), metric._type
        if kind == "counter":
            found[f"{name}_total"] = labels
        elif kind == "histogram":
            found[f"{name}_bucket"] = labels | {"le"}
            found[f"{name}_sum"] = found[f"{name}_count"] = labels
        else:
            found[name] = labels
    return found


def counter_series() -> frozenset[str]:
    """Each series name of the bridge's counters and histograms (any process), process_* too."""
    metrics = Metrics()
    metrics.register_feed()
    metrics.register_registration()
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return frozenset(names)


@cache
def code_strings() -> frozenset[str]:
    """Every string constant in bridge/: where any label value the code writes is spelt."""
    strings: set[str] = set()
    for path in (REPO / "bridge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    return frozenset(strings)


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard target and query variable."""
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["definition"]


def inner(expr: str, start: int) -> str:
    """The parenthesised argument starting at `start` (an opening parenthesis)."""
    assert expr[start] == "(", f"not an argument at {start}: {expr}"
    depth = 0
    for at in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[at], 0)
        if depth == 0:
            return expr[start + 1 : at]
    raise AssertionError(f"unbalanced: {expr}")


def selector_problems(where: str, expr: str, known: dict[str, frozenset[str]]) -> Iterator[str]:
    strings = code_strings()
    for found in SELECTOR.finditer(expr):
        name, braces = found.group(1), found.group(2) or ""
        if name not in known:
            yield f"{where}: no such series {name}"
            continue
        for label, op, quoted, raw in MATCHER.findall(braces):
            if label not in known[name] | TARGET_LABELS:
                yield f"{where}: {name} has no label {label!r} (it has {sorted(known[name])})"
            value = quoted if quoted else raw
            # A value or alternation of plain values the bridge writes: spelt in its code.
            if label in known[name] and op in ("=", "=~") and LITERALS.fullmatch(value):
                for one in value.split("|"):
                    if one not in strings:
                        yield f"{where}: {name}{{{label}={one!r}}}: the bridge never writes it"


def grouping_problems(where: str, expr: str, known: dict[str, frozenset[str]]) -> Iterator[str]:
    """`sum by (l) (x)`: every bridge series in x has l; `on (l)`: some series in expr has it."""
    for found in GROUPING.finditer(expr):
        keyword, labels = found.group(1), [s.strip() for s in found.group(2).split(",") if s]
        if keyword in ("by", "without"):
            scope = inner(expr, expr.index("(", found.end()))
            names = [n for n in SELECTOR.findall(scope) if n[0] in known]
            for label in set(labels) - TARGET_LABELS:
                lacking = [n for n, _ in names if label not in known[n]]
                if lacking:
                    yield f"{where}: {keyword} ({label}) over {lacking}, which have no {label!r}"
        else:
            names = [n for n, _ in SELECTOR.findall(expr) if n in known]
            if not names:
                continue  # kube-state-metrics' and cAdvisor's: not the bridge's to check
            have = set().union(*(known[n] for n in names))
            for label in set(labels) - TARGET_LABELS - have:
                yield f"{where}: {keyword} ({label}): no bridge series here has {label!r}"


def test_every_series_selected_has_those_labels_and_values() -> None:
    known = series_labels()
    problems = [
        problem
        for where, expr in queries()
        for problem in [
            *selector_problems(where, expr, known),
            *grouping_problems(where, expr, known),
        ]
    ]
    assert not problems, "\n".join(problems)


def test_rate_and_increase_read_only_counters() -> None:
    """rate() reads a gauge's fall as a restart from 0: Kafka Exporter's offsets moved back read
    as a burst. A bridge series by its type, another exporter's by Prometheus' naming."""
    known, counters = series_labels(), counter_series()
    wrong = [
        f"{where}: {function}({name}) of a gauge"
        for where, expr in queries()
        for function, name in COUNTER_FUNCTIONS.findall(expr)
        if (
            name not in counters
            if name in known or name.startswith("process_")
            else not COUNTER_NAMED.fullmatch(name)
        )
    ]
    assert not wrong, "\n".join(wrong)


def grouped(expr: str) -> Iterator[tuple[str, str]]:
    """(series, label) for each bridge series `sum by (label) (...)` and its kin group in expr."""
    for found in GROUPING.finditer(expr):
        if found.group(1) == "by":
            scope = inner(expr, expr.index("(", found.end()))
            for name, _ in SELECTOR.findall(scope):
                for label in found.group(2).split(","):
                    yield name, label.strip()


def test_a_panel_description_naming_values_of_a_label_it_groups_by_names_them_all() -> None:
    """Transactions by outcome named committed and aborted, not unknown: a reader of the panel
    took the list for all its legend can show. Descriptions naming none are not checked."""
    vocabulary = label_values()
    partial: set[str] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        words = set(re.findall(r"\w+", panel.get("description", "")))
        for target in panel.get("targets", []):
            for name, label in grouped(target["expr"]):
                values = vocabulary.get(name, {}).get(label, set())
                if values & words and not values <= words:
                    partial.add(f"{panel['title']}: {name} {label} {sorted(values - words)}")
    assert not partial, "panel descriptions leave out label values:\n" + "\n".join(sorted(partial))
