from bridge.ingest.progress import PartitionProgress, call_and_seq, is_terminal


def headers(kind: str, *, binary: bool = False, channel: str = "sse") -> list[tuple[str, bytes]]:
    base = [
        ("pinecall-ingest-id", b"x"),
        ("pinecall-ingest-channel", channel.encode()),
        ("content-type", b"application/json"),
    ]
    if binary:
        base.append(("ce_type", kind.encode()))
    return [*base, ("pinecall-id", b"x"), ("pinecall-type", kind.encode())]


def test_call_and_seq_reads_call_log_ids_only() -> None:
    assert call_and_seq("CA_1:12") == ("CA_1", 12)
    assert call_and_seq("CA:with:colons:3") == ("CA:with:colons", 3)
    for other in ("@agent:3", "sha256:abc", "dlq:abc", "CA_1:", ":3", "CA_1:-1", "CA_1:\u0661"):
        assert call_and_seq(other) is None, other


def test_terminal_in_either_mode() -> None:
    assert is_terminal(headers("call.score"))
    assert is_terminal(headers("call.score", binary=True))
    assert not is_terminal(headers("call.summary"))
    assert not is_terminal([("pinecall-ingest-id", b"CA_1:1")])


def test_progress_keeps_the_highest_seq_and_the_end() -> None:
    progress = PartitionProgress()
    progress.observe("CA_1:1", headers("call.started"))
    progress.observe("CA_1:3", headers("turn.user"))
    progress.observe("CA_1:2", headers("turn.agent"))  # a late copy
    progress.observe("CA_2:5", headers("call.score"))
    progress.observe("CA_2:4", headers("call.summary"))
    progress.observe("CA_3:9", headers("turn.user"))
    progress.observe("CA_3:10", headers("call.score"))
    progress.observe("@agent:7", headers("agent.registered"))
    progress.observe("sha256:ff", headers("monitor.fired"))
    assert progress.live() == {"CA_1": 3}
    assert progress.ended() == {"CA_2", "CA_3"}


def test_only_the_call_log_moves_the_resume_point() -> None:
    progress = PartitionProgress()
    for seq in range(1, 31):
        progress.observe(f"CA_1:{seq}", headers("turn.user"))
    # The feed carried 31-36 but lost 34: resuming after 36 would never read it.
    for seq in (31, 32, 33, 35, 36):
        progress.observe(f"CA_1:{seq}", headers("turn.user", channel="websocket"))
    progress.observe("CA_2:3", headers("turn.user"))
    progress.observe("CA_2:9", headers("call.score", channel="webhook"))
    progress.observe("CA_3:1", headers("turn.user", channel="websocket"))
    progress.observe("CA_4:1", [("pinecall-ingest-id", b"x"), ("pinecall-type", b"turn.user")])
    assert progress.live() == {"CA_1": 30, "CA_2": 3}
    assert progress.ended() == set()
