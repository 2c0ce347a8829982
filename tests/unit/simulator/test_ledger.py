from pathlib import Path

from bridge import jsoncodec
from bridge.simulator.ledger import Ledger, ledger_record

ENTRY = {"seq": 2, "ts": 1.0, "call": "CA_1", "agent": "a", "type": "user.transcript",
         "ephemeral": True, "data": {"text": "hi"}}  # fmt: skip


def test_a_record_says_what_the_bridge_must_publish() -> None:
    record = ledger_record(ENTRY, ("webhook", "websocket"))
    assert record == {
        "id": "CA_1:2",
        "call": "CA_1",
        "seq": 2,
        "type": "user.transcript",
        "ephemeral": True,
        "durable": False,
        "channels": ["webhook", "websocket"],
        "entry": ENTRY,
    }


def test_records_in_memory_and_in_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.jsonl"
    path.parent.mkdir()
    path.write_text("old run\n")
    ledger = Ledger(path)
    ledger.open()
    durable = {**ENTRY, "seq": 3, "type": "turn.user", "ephemeral": False}
    ledger.append(ledger_record(ENTRY, ["webhook"]))
    ledger.append(ledger_record(durable, ["webhook"]))
    lines = [jsoncodec.loads(line) for line in path.read_bytes().splitlines()]
    ledger.close()
    assert lines == ledger.records
    assert ledger.size == 2
    assert [r["seq"] for r in ledger.durable()] == [3]
    assert ledger.expected_ids() == {"CA_1:3"}


def test_records_can_be_left_out_of_memory() -> None:
    ledger = Ledger(keep=False)
    ledger.append(ledger_record(ENTRY, ["webhook"]))
    assert (ledger.size, ledger.records) == (1, [])


def test_an_alert_refused_at_every_attempt_is_refused_not_expected() -> None:
    line = {**ENTRY, "call": None, "seq": 1, "type": "monitor.fired", "ephemeral": False}
    ledger = Ledger()
    ledger.append(ledger_record({**ENTRY, "ephemeral": False}, ["webhook", "sse"]))
    taken = ledger_record(line, ["webhook"], event_id="sha256:aa")
    refused = ledger_record({**line, "seq": 2}, ["webhook"], event_id="sha256:bb")
    ledger.append({**taken, "delivered": True})
    ledger.append({**refused, "delivered": False})
    assert ledger.expected_ids() == {"CA_1:2", "sha256:aa"}
    assert ledger.refused_ids() == {"sha256:bb"}
    # The same body posted again and taken (the platform sends no id): expected after all.
    ledger.append({**refused, "seq": 3, "delivered": True})
    assert (ledger.expected_ids(), ledger.refused_ids()) == (
        {"CA_1:2", "sha256:aa", "sha256:bb"},
        set(),
    )
