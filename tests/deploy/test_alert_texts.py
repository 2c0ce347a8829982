"""Every alert's summary and description state the numbers its expr and `for` use.

The chart's rules are rendered with unusual `alerts.*` values: a text that hard-codes a default
(PinecallBridgeDedupFetchesUnanswered said "more than 120s" for `> 120 + 60`) names a number the
rule no longer uses, and a rule that follows a value under a text that does not is caught too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.connlimit import ADMIN_MAX_CONNECTIONS
from bridge.workers.pod import ASK_TIMEOUT_SECONDS
from tests.deploy.tools import CHART, SIGNED, load_yaml, one, render

SETS = (SIGNED, "prometheusRule.enabled=true", "prometheusRule.downstreamLag.enabled=true")

# Unusual numbers no text states for another reason (5, 10, 15, 30, 60, 64, 503...). Whole
# minutes, so the rules' ranges and `for`s stay readable as minutes; every value a different one.
_MINUTES = [7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97]
_RATIOS = [0.07, 0.11, 0.13, 0.17, 0.19, 0.23, 0.29, 0.31]
_AMOUNTS = [77, 7777, 101, 103, 107, 109, 113, 127, 8887, 131, 137]

# HTTP statuses and status classes the texts name (a webhook's answer): no measure.
HTTP_STATUSES = {"200", "404", "405", "503", "2xx", "4xx", "5xx"}
# Numbers a text states that no expr holds, each a fact of the bridge's, not a threshold.
NOT_FROM_THE_RULE = {
    # The admin port's connection cap, and a worker's time to answer the pod's scrape.
    "PinecallBridgeAdminConnectionsRefused": {str(ADMIN_MAX_CONNECTIONS)},
    "PinecallBridgeWorkerUnreachable": {f"{ASK_TIMEOUT_SECONDS:g} s"},
    # The [2h:15m] subquery's steps: "3 of the last 8 quarter hours".
    "PinecallBridgeWebhooksUnrouted": {"8"},
    # A crash loop's exit status.
    "PinecallBridgePodRestarting": {"1"},
}

# A number in a text, with its unit if it has one: "77s", "7 minutes", "7%", "99th", "10000
# records"; anything else glued to it ("10k", "500ms", "1h30m") is kept as its unit, so that a
# number the check cannot read fails it rather than going unchecked.
_NUMBER = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)"
    r"(?:(%)|\s?(s|m|h)\b|\s(seconds?|minutes?|hours?)\b|(st|nd|rd|th)\b|([\w.]*\w))?"
)
_RANGE = re.compile(r"\[(\d+)([smh])(?::(\d+)([smh]))?\]")
_THRESHOLD = re.compile(r"(?:>=?|<=?|==)\s*(\d+(?:\.\d+)?(?:\s*[-+*]\s*\d+(?:\.\d+)?)*)")
_QUANTILE = re.compile(r"histogram_quantile\(\s*(\d+(?:\.\d+)?)")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "second": 1, "seconds": 1}
_SECONDS |= {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600}
# A fraction of the rule's: "7%" of 0.07, the "99th" percentile of histogram_quantile(0.99, ...).
_HUNDREDTHS = {"%", "st", "nd", "rd", "th"}


def unusual_values() -> dict[str, Any]:
    """A distinct unusual number for every numeric `alerts.*` value the schema lists."""
    schema = load_yaml(CHART / "values.schema.json")["properties"]["alerts"]["properties"]
    minutes, ratios, amounts = iter(_MINUTES), iter(_RATIOS), iter(_AMOUNTS)
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        if spec.get("type") not in ("number", "integer"):
            continue
        if key.endswith("Ratio"):
            values[key] = next(ratios)
        elif key.endswith("Minutes"):
            values[key] = next(minutes)
        else:
            values[key] = next(amounts)
    # Halved for its window: stays whole.
    values["adminConnectionsRefusedMinutes"] = 46
    return values


def alert_rules(values: Path | None = None) -> dict[str, dict[str, Any]]:
    groups = one(render(*SETS, values=values), "PrometheusRule")["spec"]["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _arithmetic(text: str) -> float:
    """`120 + 60` or `600`, as PromQL reads a scalar threshold (no brackets)."""
    terms = [sum_term.split("*") for sum_term in text.replace("-", "+-").split("+")]
    return sum(math.prod(float(factor) for factor in term) for term in terms)


def rule_numbers(rule: dict[str, Any]) -> tuple[set[float], set[float]]:
    """The expr's thresholds as compared, and its ranges and `for` in seconds."""
    expr = rule["expr"]
    thresholds = {_arithmetic(match) for match in _THRESHOLD.findall(expr)}
    thresholds |= {float(quantile) for quantile in _QUANTILE.findall(expr)}
    durations: set[float] = set()
    for amount, unit, step, step_unit in _RANGE.findall(expr):
        durations.add(float(amount) * _SECONDS[unit])
        if step:
            durations.add(float(step) * _SECONDS[step_unit])
    if "for" in rule:
        ((amount, unit),) = re.findall(r"^(\d+)([smh])$", rule["for"])
        durations.add(float(amount) * _SECONDS[unit])
    return thresholds, durations


def stated(text: str) -> list[tuple[str, float, str]]:
    """The numbers a text states outside Prometheus' templating: (as written, number, unit)."""
    text = re.sub(r"\{\{.*?\}\}", " ", text)
    found = []
    for match in _NUMBER.finditer(text):
        number, *units = match.groups()
        found.append((match.group(0), float(number), next((u for u in units if u), "")))
    return found


def _close(number: float, candidates: set[float]) -> bool:
    return any(math.isclose(number, c, rel_tol=1e-9, abs_tol=1e-12) for c in candidates)


def unused_numbers(name: str, rule: dict[str, Any]) -> list[str]:
    """The numbers the rule's texts state that its expr and `for` do not use."""
    thresholds, durations = rule_numbers(rule)
    exempt = NOT_FROM_THE_RULE.get(name, set())
    wrong = []
    for key in ("summary", "description"):
        for written, number, unit in stated(rule["annotations"].get(key, "")):
            if written in exempt or written in HTTP_STATUSES:
                continue
            if unit in _HUNDREDTHS:
                ok = _close(number / 100, thresholds)
            elif unit in _SECONDS:
                seconds = number * _SECONDS[unit]
                ok = _close(seconds, durations | thresholds)
            elif unit:  # "10k", "500ms": a unit this check cannot read
                ok = False
            else:
                # A count (records, times), or minutes named before ("in the last 5").
                ok = _close(number, thresholds) or _close(number * 60, durations)
            if not ok:
                wrong.append(f"{key}: {written!r}")
    return wrong


@pytest.fixture(scope="module")
def unusual(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    values = tmp_path_factory.mktemp("alerts") / "unusual.yaml"
    values.write_text(yaml.safe_dump({"alerts": unusual_values()}))
    return alert_rules(values)


@pytest.fixture(scope="module")
def defaults() -> dict[str, dict[str, Any]]:
    return alert_rules()


@pytest.mark.parametrize("which", ["defaults", "unusual"])
def test_alert_texts_state_only_numbers_their_rule_uses(
    which: str, request: pytest.FixtureRequest
) -> None:
    rules: dict[str, dict[str, Any]] = request.getfixturevalue(which)
    wrong = {name: unused for name, rule in rules.items() if (unused := unused_numbers(name, rule))}
    assert not wrong, wrong


def test_alert_texts_follow_the_values_their_rule_follows(
    defaults: dict[str, dict[str, Any]], unusual: dict[str, dict[str, Any]]
) -> None:
    # A rule whose threshold or duration moved with the values but whose texts did not: they
    # state no number at all, or still the default's.
    assert defaults.keys() == unusual.keys()
    frozen = [
        name
        for name, rule in defaults.items()
        if rule_numbers(rule) != rule_numbers(unusual[name])
        and rule["annotations"]["description"] == unusual[name]["annotations"]["description"]
    ]
    assert not frozen, frozen


def test_the_numbers_check_catches_a_default_left_in_a_text() -> None:
    rule: dict[str, Any] = {
        "expr": "max(last_over_time(x[2m])) > 77 + 180",
        "annotations": {"summary": "", "description": "none answered for more than 77s"},
    }
    assert unused_numbers("PinecallBridgeDedupFetchesUnanswered", rule) == ["description: '77s'"]
    rule["annotations"]["description"] = "none answered for more than 257s (for 2 minutes)"
    assert unused_numbers("PinecallBridgeDedupFetchesUnanswered", rule) == []


@pytest.mark.parametrize(
    ("description", "unread"),
    [
        ("more than 10k records", "10k"),
        ("slower than 500ms", "500ms"),
        ("for 1h30m", "1h30m"),
        ("the 95th percentile", "95th"),  # the expr's is the 99th
        ("for 90 seconds", "90 seconds"),  # not 90 minutes: the `for` is 90s
    ],
)
def test_the_numbers_check_fails_a_number_it_cannot_match(description: str, unread: str) -> None:
    rule: dict[str, Any] = {
        "expr": "histogram_quantile(0.99, rate(x_bucket[5m])) > 7",
        "for": "90m",
        "annotations": {"summary": "", "description": description},
    }
    assert unused_numbers("PinecallBridgePublishLatencyHigh", rule) == [f"description: {unread!r}"]


def test_the_numbers_check_reads_percentiles_and_seconds_in_words() -> None:
    rule: dict[str, Any] = {
        "expr": "histogram_quantile(0.99, rate(x_bucket[5m])) > 7",
        "for": "90s",
        "annotations": {"summary": "", "description": "the 99th percentile for 90 seconds"},
    }
    assert unused_numbers("PinecallBridgePublishLatencyHigh", rule) == []
