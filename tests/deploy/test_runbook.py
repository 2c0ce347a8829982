"""deploy/README.md's runbooks, as the SRE paged at night reads them: one section per alert of the
rules and none for an alert that does not exist, and every command they give whole, so that it
runs as pasted once its placeholders are filled.

A command is a backquoted span starting with `pinecall-bridge ` or `kafka-`; a placeholder is
`<...>`. The bridge's commands are parsed by its own CLI parser; Kafka's tools are not in this
repository, so their commands are checked for what made them fail as written (tried by hand
against a Kafka 4.4 broker): the script's name and the `--bootstrap-server` every one needs.
Every setting and chart value they (and the rules' annotations) name is one that exists, and
every log line they quote is one the bridge's code spells.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex

import pytest

from bridge.cli import build_parser
from bridge.config import known_variables
from tests.deploy.test_deploy_files import alerts
from tests.deploy.test_metric_labels import code_strings
from tests.deploy.tools import CHART, DEPLOY, load_yaml

RUNBOOKS = (DEPLOY / "README.md").read_text().split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
SPANS = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", RUNBOOKS)]
BRIDGE = [s for s in SPANS if s.startswith("pinecall-bridge ")]
KAFKA = [s for s in SPANS if s.startswith("kafka-")]
PLACEHOLDER = re.compile(r"<[^>]*>")
# A value of the kind each option takes, for its placeholder.
SAMPLES = {"--since": "2h", "--until": "1h", "--call": "CA_8f4a2c", "--topic": "pinecall.events"}
# Kafka tool commands that are run, not options mentioned on their own.
ACTIONS = {"--describe", "--alter", "--execute", "--list"} | {
    "list",
    "describe",
    "describe-producers",
    "abort",
    "find-hanging",
}


def filled(command: str) -> list[str]:
    """The command's words, each placeholder replaced by a value for the option before it."""
    words = shlex.split(PLACEHOLDER.sub("PLACEHOLDER", command))
    return [
        SAMPLES.get(words[i - 1], "x") if word == "PLACEHOLDER" else word
        for i, word in enumerate(words)
    ]


def test_the_runbooks_hold_commands_of_both_kinds() -> None:
    # The extraction itself: a change of the doc's layout must not leave the checks below empty.
    assert len(BRIDGE) >= 10
    assert len(KAFKA) >= 8


def test_every_runbook_section_names_an_alert_of_the_rules() -> None:
    sections = re.findall(r"^### (\S+)$", RUNBOOKS, flags=re.MULTILINE)
    assert len(sections) == len(set(sections)), "a runbook section twice"
    assert set(sections) == {str(rule["alert"]) for rule in alerts()}


@pytest.mark.parametrize("command", BRIDGE)
def test_each_bridge_command_parses_as_written(command: str) -> None:
    try:
        build_parser().parse_args(filled(command)[1:])
    except SystemExit as exited:
        pytest.fail(f"`{command}` is refused by the CLI (exit {exited.code})")


@pytest.mark.parametrize("command", [c for c in BRIDGE if " tail " in f"{c} "])
def test_each_tail_reads_records_already_written(command: str) -> None:
    # Without either, tail prints only records written after it starts: nothing of the
    # incident the runbook sends the reader to look at.
    words = filled(command)
    if len(words) > 2:
        assert {"--from-beginning", "--since"} & set(words), command


@pytest.mark.parametrize("command", KAFKA)
def test_each_kafka_tool_command_is_whole(command: str) -> None:
    words = filled(command)
    assert re.fullmatch(r"kafka-[a-z-]+\.sh", words[0]), f"{command}: Kafka's scripts end in .sh"
    if ACTIONS & set(words) and "..." not in words:
        assert "--bootstrap-server" in words, f"{command}: every Kafka tool needs it"
        assert words[words.index("--bootstrap-server") + 1] == "x", (
            f"{command}: --bootstrap-server <broker>"
        )


# What an SRE is told to set: a bridge setting, or a chart value under one of its top-level keys.
SETTING = re.compile(r"\bBRIDGE_[A-Z_]+__[A-Z_]+\b")
CHART_VALUES = load_yaml(CHART / "values.yaml")
CHART_VALUE = re.compile(
    rf"\b(?:{'|'.join(k for k, v in CHART_VALUES.items() if isinstance(v, dict))})\.[A-Za-z0-9.]*\w"
)
# A log line quoted: three words or more of prose (letters, no digits, slashes or dots: not a
# URL, a metric's value or a setting's), not a command, `...`, `…` or `<...>` standing for what
# the line goes on with or puts in (a field's value after a colon).
COMMANDS = ("kubectl ", "helm ", "pinecall-bridge ", "kafka-")
LOG_LINE = re.compile(r"[A-Za-z][A-Za-z_',;:() -]*(?:(?:\.\.\.|…|<[^>]*>)[A-Za-z_',;:() -]*)*")
ELIDED = re.compile(r"\.\.\.|…|<[^>]*>")
# Prose quoted that is not the bridge's log: a dashboard panel's title (or its head), and what
# others print: the node's ENFILE and Kafka's consumer-groups tool on a group it does not know.
DASHBOARD = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
PANELS = [q["title"] for p in DASHBOARD["panels"] for q in [p, *p.get("panels", [])]]
NOT_LOGGED = {os.strerror(errno.ENFILE), "GroupIdNotFoundException: Group <group> not found"}


def unknown_names(text: str) -> list[str]:
    """The settings and chart values `text` names that neither the bridge nor the chart has."""
    unknown = sorted(set(SETTING.findall(text)) - known_variables())
    for path in sorted(set(CHART_VALUE.findall(text))):
        node = CHART_VALUES
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                unknown.append(path)
                break
            node = node[key]
    return unknown


def log_lines(spans: list[str]) -> list[str]:
    """The spans that quote a log line (see LOG_LINE)."""
    return [
        s
        for s in spans
        if LOG_LINE.fullmatch(s)
        and not s.startswith(COMMANDS)
        and s not in NOT_LOGGED
        and not any(title.startswith(s) for title in PANELS)
        and len(ELIDED.sub(" ", s).split()) >= 3
    ]


def unlogged(quoted: list[str]) -> list[str]:
    """The quoted lines some piece of which (between the elisions) is in no string of bridge/."""
    strings = code_strings()
    return [
        line
        for line in quoted
        if any(
            piece and not any(piece in s for s in strings)
            for piece in (p.strip(" :") for p in ELIDED.split(line))
        )
    ]


def test_every_setting_and_chart_value_a_runbook_names_exists() -> None:
    # What the SRE sets at night: a name the bridge does not read is silently ignored.
    annotations = " ".join(str(rule["annotations"]) for rule in alerts())
    assert len(SETTING.findall(RUNBOOKS)) >= 40
    assert len(CHART_VALUE.findall(RUNBOOKS)) >= 40
    assert unknown_names(RUNBOOKS + annotations) == []


def test_a_setting_or_chart_value_of_no_such_name_is_found() -> None:
    text = "raise `BRIDGE_DEDUP__SESSION_TIMEOUT_MS`, `BRIDGE_DEDUP__SESSION_TIMEOUT`, `config.sse"
    text += ".maxCalls` or `config.sse.maxCall`, `alerts.dedupLagMinutes`, `resources.limit.memory`"
    assert unknown_names(text) == [
        "BRIDGE_DEDUP__SESSION_TIMEOUT",
        "config.sse.maxCall",
        "resources.limit.memory",
    ]


def test_every_log_line_a_runbook_quotes_is_one_the_bridge_logs() -> None:
    # The SRE greps the pod's log for it: a line reworded in the code finds nothing, and reads
    # as "not this cause".
    quoted = log_lines(SPANS)
    assert len(quoted) >= 40
    assert unlogged(quoted) == []


def test_a_quoted_log_line_the_bridge_does_not_log_is_found() -> None:
    spans = [
        "dedup partition's committed offset ...",
        "webhook secrets not reloaded, the previous ones are kept: <rule>",
        "dedup partition could not be started; retrying",
        "dedup partition could not be begun",
        "webhook secrets were not reloaded ...",
        "Kafka is not ready yet (unreachable ...",
        "Pinecall API key not reloaded, the previous one is kept",
        "kubectl logs deploy/pinecall-bridge",
        "helm rollback",
        "pinecall-bridge webhooks show",
        "Too many open files in system",
        "Published by topic",
        "Open file descriptors by process",
        "Kafka unreachable",
    ]
    # Not a command, another program's line, a panel's title nor a span of two words.
    assert log_lines(spans) == spans[:7]
    assert unlogged(log_lines(spans)) == spans[3:6]
