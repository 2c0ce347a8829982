import signal
import socket
import threading
from pathlib import Path

import pytest

from bridge import jsoncodec
from bridge.cli import main as bridge_main
from bridge.simulator.command import build_parser, main, settings
from tests.sockets import refusing_address

pytestmark = pytest.mark.usefixtures("keep_logging")  # the command configures the root logger


def test_options_become_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--port", "0", "--api-key", "k", "--token-ttl", "30", "--signature", "bare",
         "--ws-heartbeat", "0", "--ws-documented", "0.5", "--calls", "3", "--rate", "50",
         "--channel", "webhook", "--duplicates", "0.1", "--reorder", "0.2", "--seed", "9",
         "--ledger", str(tmp_path / "l.jsonl"), "--max-attempts", "3", "--no-records",
         "--alerts", "0.3"]
    )  # fmt: skip
    config, spec = settings(args)
    assert (config.port, config.api_key, config.token_ttl, config.signature) == (0, "k", 30, "bare")
    assert config.ws_heartbeat is None
    assert config.ws_documented_ratio == 0.5
    assert (config.max_attempts, config.keep_records) == (3, False)
    assert config.ledger_path == tmp_path / "l.jsonl"
    assert (spec.calls, spec.rate, spec.channel, spec.seed) == (3, 50, "webhook", 9)
    assert (spec.duplicates, spec.reorder, spec.alerts) == (0.1, 0.2, 0.3)


def test_defaults_match_the_documented_ones() -> None:
    config, spec = settings(build_parser().parse_args([]))
    assert (config.port, config.api_key, config.signature) == (8765, "sim-api-key", "prefixed")
    assert (config.max_attempts, config.delivery_timeout) == (2, 5.0)  # Pinecall's delivery
    assert (spec.calls, spec.channel, spec.alerts) == (20, "both", 0.0)


def test_bad_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--duplicates", "2"])
    assert exited.value.code == 2
    assert "duplicates" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--start-delay", "nan"),  # slept on for ever: the traffic never came, nothing said
        ("--start-delay", "inf"),
        ("--start-delay", "-1"),
        ("--token-ttl", "inf"),  # sent as JSON's non-standard `Infinity`
        ("--delivery-timeout", "inf"),  # aiohttp's OverflowError at every delivery
        ("--ws-heartbeat", "inf"),  # aiohttp's OverflowError at every feed connection
    ],
)
def test_a_float_flag_that_is_nan_infinite_or_negative_exits_2(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([flag, value])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


def test_a_start_delay_or_heartbeat_of_0_is_taken() -> None:
    args = build_parser().parse_args(["--start-delay", "0", "--ws-heartbeat", "0", "--rate", "0"])
    assert (args.start_delay, args.ws_heartbeat, args.rate) == (0.0, 0.0, 0.0)


def test_exit_when_done_prints_a_summary_and_writes_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    code = bridge_main(
        ["simulate", "--port", "0", "--calls", "2", "--seed", "5", "--exit-when-done",
         "--ledger", str(ledger), "--webhook-url", f"http://{refusing_address()}/hook",
         "--webhook-secret", "s", "--max-attempts", "1", "--log-level", "WARNING"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    events = len(ledger.read_bytes().splitlines())
    assert events > 0
    assert f"events generated   {events}" in out
    assert f"0 ok, {events} failed" in out
    assert "seed               5" in out
    assert jsoncodec.loads(ledger.read_bytes().splitlines()[0])["seq"] == 1


def test_waiting_in_vain_for_a_subscriber_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--port", "0", "--calls", "1", "--subscribers", "1", "--subscriber-timeout",
                 "0.1", "--exit-when-done", "--log-level", "ERROR"])  # fmt: skip
    assert code == 1
    assert "no WebSocket subscriber" in capsys.readouterr().err


def test_a_taken_port_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--log-level", "ERROR"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"pinecall-bridge simulate: cannot listen on 127.0.0.1:{port}: "), line
    assert line.endswith("; --port picks another"), line


def test_sigterm_stops_a_serving_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    timer = threading.Timer(0.5, signal.raise_signal, [signal.SIGTERM])
    timer.start()
    try:
        assert main(["--port", "0", "--calls", "0", "--log-level", "ERROR"]) == 0
    finally:
        timer.cancel()
    assert "events generated   0" in capsys.readouterr().out


def test_the_sse_channel_and_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["--channel", "sse", "--sse-ping", "0.5", "--sse-buffer", "8", "--feed-subscribers", "2"]
    )
    config, spec = settings(args)
    assert (config.sse_ping_interval, config.sse_reader_buffer) == (0.5, 8)
    assert (spec.channel, spec.webhook, spec.websocket) == ("sse", False, False)
    assert spec.feed_subscribers == 2
    with pytest.raises(SystemExit):
        main(["--sse-buffer", "0"])
    assert "sse_reader_buffer" in capsys.readouterr().err


def test_an_sse_run_summarises_its_call_logs(capsys: pytest.CaptureFixture[str]) -> None:
    code = bridge_main(
        ["simulate", "--port", "0", "--calls", "2", "--seed", "5", "--channel", "sse",
         "--exit-when-done", "--log-level", "WARNING"]
    )  # fmt: skip
    assert code == 0
    assert "call logs (sse)    0 streams, 0 entries streamed" in capsys.readouterr().out
