from pathlib import Path

from bridge import jsoncodec
from bridge.simulator.ledger import Ledger, ledger_record

ENTRY = {"seq": 2, "ts": 1.0, "call": "CA_1", "agent": "a", "type": "user.transcript",
         "ephemeral": True, "data": {"text": "hi"}}  # fmt: skip


def test_a_record_says_what_the_bridge_must_publish() -> None:
    record = ledger_record(ENTRY, ("webhook", "websocket"))
    assert record == {
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
    durable = {**ENTRY, "seq": 3, "type": "message.received", "ephemeral": False}
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
