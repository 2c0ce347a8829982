"""bridge/schema/asyncapi.yaml: valid for the AsyncAPI project's own parser (@asyncapi/parser,
pinned in tools/asyncapi/package-lock.json; needs Node.js), and true to the bridge's topics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import DedupSettings, TopicSettings
from bridge.normalise import Unrecognised
from bridge.sources.calllog.eventstream import Event, TooLarge
from bridge.sources.calllog.follow import CallFollow, Publish
from bridge.sources.reconnect import ReconnectPolicy
from tests.missing import skip_or_fail
from tests.schema.contract import DOCUMENT

VALIDATE = Path(__file__).resolve().parents[2] / "tools" / "asyncapi" / "validate.sh"
NODE_MISSING = 3  # validate.sh's exit code when Node.js or npm is missing
# validate.sh installs the parser (npm ci) when `make asyncapi` has not, or the lock changed:
# through the developer's proxy, if any, which the autouse fixture clears for other tests.
pytestmark = pytest.mark.developer_proxy


BROKEN = {
    "bad action": (
        ("action: receive", "action: consume"),
        '"action" property must be equal to one of',
    ),
    "bad binding": (
        ("partitions: 12", "partitions: twelve"),
        '"partitions" property type must be integer',
    ),
    "dangling $ref into the JSON Schema": (
        ("#/$defs/binaryHeaders", "#/$defs/noSuchHeaders"),
        "does not exist",
    ),
}


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    """The parser's verdict; without Node.js skipped locally and failed in CI."""
    done = subprocess.run(
        [str(VALIDATE), *map(str, paths)], capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode == NODE_MISSING:
        skip_or_fail(done.stderr.strip())
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done


def verdicts(output: str) -> dict[str, str]:
    """validate.sh's report per file: its "valid: FILE" / "invalid: FILE" line and diagnostics."""
    reports: dict[str, str] = {}
    for block in re.split(r"^(?=(?:in)?valid: )", output, flags=re.MULTILINE):
        if block:
            reports[block.split(": ", 1)[1].splitlines()[0]] = block
    return reports


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The document and a broken copy per BROKEN case, through the parser in one run (it is slow
    to start): report per case id, "document" for the real one."""
    files = {"document": DOCUMENT}
    text = DOCUMENT.read_text()
    for case, ((old, new), _) in BROKEN.items():
        assert old in text, case
        folder = tmp_path_factory.mktemp("broken")
        shutil.copy(DOCUMENT.parent / "pinecall-cloudevent.schema.json", folder)
        files[case] = folder / "asyncapi.yaml"
        files[case].write_text(text.replace(old, new))
    done = validate(*files.values())
    assert done.returncode == 1, "an invalid file fails the run"
    reports = verdicts(done.stdout)
    return {case: reports[str(path)] for case, path in files.items()}


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


def test_the_asyncapi_parser_accepts_the_document(parsed: dict[str, str]) -> None:
    report = parsed["document"]
    assert report.startswith("valid: "), report
    assert " error " not in report, report


@pytest.mark.parametrize("case", BROKEN)
def test_the_parser_rejects_a_broken_copy(parsed: dict[str, str], case: str) -> None:
    report = parsed[case]
    assert report.startswith("invalid: "), report
    assert BROKEN[case][1] in report, report


def test_every_topic_the_bridge_writes_is_a_channel() -> None:
    doc = document()
    channels = doc["channels"]
    defaults = TopicSettings()
    addresses = {c["address"]: name for name, c in channels.items()}
    for topic in (
        defaults.events,
        defaults.alerts,
        defaults.dlq,
        defaults.ingest,
        defaults.feed_lease,
    ):
        assert topic in addresses, f"{topic} has no channel"
    assert "pinecall.ephemeral" in addresses, "ephemeral (an example name: no default)"
    assert channels["routed"]["address"] is None, "routing rules' topics: any name"
    internal = {name for name, c in channels.items() if {"name": "internal"} in c.get("tags", [])}
    assert internal == {"ingest", "feedLease"}
    for name, channel in channels.items():
        if name in internal:
            assert "INTERNAL, not for consumers" in channel["description"]
        else:
            assert {"name": "output"} in channel["tags"], name
            assert channel["x-consumer"]["isolation.level"] == "read_committed", name
            assert "read_committed" in channel["description"], name
        if channel["address"] is not None:
            assert channel["bindings"]["kafka"]["topic"] == channel["address"]
    kafka = {n: c["bindings"]["kafka"] for n, c in channels.items() if "bindings" in c}
    assert kafka["ingest"]["partitions"] == defaults.ingest_partitions
    retention = kafka["ingest"]["topicConfiguration"]["retention.ms"]
    assert retention == DedupSettings().ingest_retention_ms()
    assert kafka["feedLease"]["partitions"] == 1
    assert kafka["events"]["partitions"] == defaults.partitions
    # The exactly-once stage reads the ingest topic read_committed, as its group.
    dedup = doc["operations"]["deduplicate"]
    assert dedup["x-isolation-level"] == "read_committed"
    assert dedup["bindings"]["kafka"]["groupId"]["default"] == "pinecall-bridge"
    # Every channel but the empty feed lease is written by an operation of the bridge.
    written = {
        op["channel"]["$ref"].rsplit("/", 1)[1]
        for op in doc["operations"].values()
        if op["action"] == "send"
    }
    assert written == set(channels) - {"feedLease"}


@pytest.mark.parametrize(
    "entry",
    [
        TooLarge("call.summary", "3", 2_000_000, has_id=False, sha256="a" * 64),
        Event("turn.user", "{" + "x" * 2_000, "3", has_id=False),
    ],
    ids=["too_large", "cut_invalid_json"],
)
def test_every_key_of_a_call_log_entrys_note_is_named_where_dead_letters_are_described(
    entry: Event | TooLarge,
) -> None:
    # A consumer of the dead letters reads their shape here: the "sha256" of an entry without an
    # id (and a cut text's "truncated") went unnamed.
    follow = CallFollow("CA_1", 2, ReconnectPolicy(0.5, 30, 60), max_note_bytes=1_000)
    step = follow.step(entry)
    assert isinstance(step, Publish)
    assert isinstance(step.item, Unrecognised)
    keys = set(step.item.item)
    doc = document()
    channel = doc["channels"]["deadLetters"]["description"]
    payload = doc["components"]["messages"]["deadLetter"]["payload"]["description"]
    for text in (channel, payload):
        shapes = [set(re.findall(r'"(\w+)"', shape)) for shape in re.findall(r"\{[^}]*\}", text)]
        assert any(keys <= shape for shape in shapes), (keys, shapes)


def test_the_payload_is_the_json_schema_file_not_a_copy() -> None:
    messages = document()["components"]["messages"]
    structured = [m for m in messages.values() if m.get("x-cloudevents-mode") == "structured"]
    binary = [m for m in messages.values() if m.get("x-cloudevents-mode") == "binary"]
    assert structured
    assert binary
    for message in structured:
        assert message["payload"] == {"$ref": "./pinecall-cloudevent.schema.json"}
        assert message["headers"] == {
            "$ref": "./pinecall-cloudevent.schema.json#/$defs/structuredHeaders"
        }
    for message in binary:
        assert message["payload"] == {"$ref": "./pinecall-cloudevent.schema.json#/properties/data"}
        assert message["headers"] == {
            "$ref": "./pinecall-cloudevent.schema.json#/$defs/binaryHeaders"
        }
    assert (DOCUMENT.parent / "pinecall-cloudevent.schema.json").is_file()
