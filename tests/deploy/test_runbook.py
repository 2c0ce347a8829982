"""deploy/README.md's runbooks, as the SRE paged at night reads them: one section per alert of the
rules and none for an alert that does not exist, and every command they give whole, so that it
runs as pasted once its placeholders are filled.

A command is a backquoted span starting with `pinecall-bridge ` or `kafka-`; a placeholder is
`<...>`. The bridge's commands are parsed by its own CLI parser; Kafka's tools are not in this
repository, so their commands are checked for what made them fail as written (tried by hand
against a Kafka 4.4 broker): the script's name and the `--bootstrap-server` every one needs.
"""

from __future__ import annotations

import re
import shlex

import pytest

from bridge.cli import build_parser
from tests.deploy.test_deploy_files import alerts
from tests.deploy.tools import DEPLOY

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
