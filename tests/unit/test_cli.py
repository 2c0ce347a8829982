import argparse
import gc
import hashlib
import hmac
import json
import os
import shlex
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bridge import jsoncodec
from bridge.cli import _settings_json, _settings_or_exit, main, sample_event
from bridge.gctuning import GEN0_THRESHOLD
from bridge.stopsignals import hold_until_handled
from bridge.tail import render as render_record
from bridge.workers.role import EXIT_NO_DOTENV, WorkerRole
from tests.descriptors import not_open, unnamed_file_holding
from tests.environ import without_bridge_variables
from tests.sockets import free_port, refusing_address

# `run` tunes the process's garbage collector (bridge/gctuning.py): put back after each test.
pytestmark = pytest.mark.usefixtures("gc_as_it_was")

NOWHERE = refusing_address()  # refuses every connection: Kafka, the bridge or Pinecall "down"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keep_logging: None) -> None:
    """No BRIDGE_* variable or .env of the caller's; the root logger, which most commands
    configure, as it was after each test."""
    without_bridge_variables(monkeypatch, tmp_path)


def exit_code(args: list[str]) -> object:
    """The code `main(args)` exits with, by SystemExit."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code


def test_check_valid_exits_0_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s3cr3t-value")
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert "s3cr3t-value" not in out + err
    assert "configuration is valid" in err
    # stdout is the settings as JSON and nothing else: `check | jq` works.
    assert jsoncodec.loads(out)["topics"]["events"] == "pinecall.events"


def test_check_fails_on_unknown_variables_and_run_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CI gate running `check` must catch a typo; `run` still starts, with a warning (that one
    # only: the secret is long enough not to be warned of).
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s3cr3t-value-long-enough")
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRET", "typo")
    assert exit_code(["check"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        "  - BRIDGE_WEBHOOK__SECRET is not a setting and is ignored"
        " (did you mean BRIDGE_WEBHOOK__SECRETS?)"
    ) in err
    started: list[object] = []
    monkeypatch.setattr("bridge.service.serve", lambda settings, dotenv: settings)
    monkeypatch.setattr("bridge.cli._run_loop", started.append)
    assert main(["run"]) == 0
    assert len(started) == 1
    warning, limit = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (limit["level"], limit["msg"]) == ("info", "open files limit")
    assert (warning["level"], warning["logger"]) == ("warning", "bridge.config")
    assert "did you mean BRIDGE_WEBHOOK__SECRETS?" in warning["msg"]


@pytest.mark.parametrize("command", ["check", "run"])
def test_the_warnings_are_of_the_dotenv_the_settings_were_read_from(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each warning read .env again: one changed meanwhile (a ConfigMap updated, a file edited)
    # gave warnings about other settings than those the bridge runs with, here about none.
    Path(".env").write_text(
        "BRIDGE_WEBHOOK__SECRETS=s3cr3t-value-long-enough\n"
        'BRIDGE_KAFKA={"linger_ms": 7}\nBRIDGE_KAFKA__LINGER_MS=3\n'
        'BRIDGE_SHUTDOWN={"drain_delay_seconds": 20, "grace_seconds": 21}\n'
    )
    loaded = _settings_or_exit

    def then_emptied(**kwargs: Any) -> Any:
        settings = loaded(**kwargs)
        Path(".env").write_text("")
        return settings

    monkeypatch.setattr("bridge.cli._settings_or_exit", then_emptied)
    served: list[Any] = []
    monkeypatch.setattr("bridge.service.serve", lambda *args: served.append(args))
    monkeypatch.setattr("bridge.cli._run_loop", lambda main: None)
    assert main([command]) == 0
    err = capsys.readouterr().err
    if command == "run":
        logged = [jsoncodec.loads(line) for line in err.splitlines()]
        err = "".join(f"warning: {e['msg']}\n" for e in logged if e["level"] == "warning")
    else:
        assert "BRIDGE_WEBHOOK__SECRETS: .env\n" in err
    assert (
        "warning: BRIDGE_KAFKA__LINGER_MS (in .env) and key 'linger_ms' of BRIDGE_KAFKA (in .env)"
        " both set this setting: BRIDGE_KAFKA__LINGER_MS (in .env) is read"
    ) in err
    assert "warning: BRIDGE_SHUTDOWN (JSON key drain_delay_seconds) (20) leaves a stop" in err
    if command == "run":  # for the secret files' directory, BRIDGE_SECRETS_DIR, were it in .env
        [(_, dotenv)] = served
        assert dotenv["bridge_webhook__secrets"] == "s3cr3t-value-long-enough"


@pytest.mark.parametrize(
    "command",
    [
        ["send", "--url", f"http://{NOWHERE}/x"],
        ["tail"],
        ["backfill", "--call", "CA_1"],
        ["redrive", "--since", "1h"],
        ["webhooks", "show"],
    ],
)
def test_every_command_that_reads_the_settings_warns_of_a_typo(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only `run` and `check` named it: the others quietly used the default.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", NOWHERE)
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVER", "typo")
    assert main(command) in (1, 2)  # Kafka, the bridge or Pinecall's API key is missing
    err = capsys.readouterr().err.splitlines()
    logged = [jsoncodec.loads(line) for line in err if line.startswith("{")]  # besides plain text
    warnings = [e for e in logged if e["logger"] == "bridge.config"]
    assert [(e["level"], e["msg"]) for e in warnings] == [
        (
            "warning",
            "BRIDGE_KAFKA__BOOTSTRAP_SERVER is not a setting and is ignored"
            " (did you mean BRIDGE_KAFKA__BOOTSTRAP_SERVERS?)",
        )
    ]


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_typo_is_named_before_the_problems_it_causes(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the misspelt secret: the hint was printed only once everything else was valid.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRET", "abc")
    assert exit_code([command]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [
        "pinecall-bridge: invalid configuration:",
        "  - BRIDGE_WEBHOOK__SECRET is not a setting and is ignored"
        " (did you mean BRIDGE_WEBHOOK__SECRETS?)",
        "  - BRIDGE_WEBHOOK__SECRETS is not set: set it (comma-separated) or, for local testing"
        " only, BRIDGE_WEBHOOK__ALLOW_UNSIGNED=true",
    ]


def test_check_reads_the_dotenv_file_for_unknown_variables_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Path(".env").write_text("BRIDGE_WEBHOOK__SECRETS=s\nBRIDGE_HTTP__PROT=8081\n")
    assert exit_code(["check"]) == 2
    assert (
        "BRIDGE_HTTP__PROT (in .env) is not a setting and is ignored"
        " (did you mean BRIDGE_HTTP__PORT?)"
    ) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("dotenv", "problem"),
    [
        ("BRIDGE_KAFKA__LINGER_MS=abc", "BRIDGE_KAFKA__LINGER_MS: Input should be a valid integer"),
        ("BRIDGE_KAFKA={bad", "BRIDGE_KAFKA__*: a value could not be parsed"),
        # Past Python's recursion limit every JSON read of it raised RecursionError: a traceback.
        (
            "BRIDGE_SECRETS_DIR=secrets\nBRIDGE_WEBHOOK=" + '{"a":' * 5000 + "1" + "}" * 5000,
            "BRIDGE_WEBHOOK: a JSON value nested too deep to read",
        ),
        (
            "BRIDGE_SECRETS_DIR=secrets\nBRIDGE_WEBHOOK__SECRETS=s",
            "BRIDGE_WEBHOOK__SECRETS: set both as a file in BRIDGE_SECRETS_DIR and in the .env",
        ),
    ],
)
def test_an_invalid_configuration_names_the_unknown_variables_of_the_dotenv_it_read(
    dotenv: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The failed load's read of .env is the one searched for typos: each kind of failure carries it.
    Path("secrets").mkdir()
    Path("secrets/BRIDGE_WEBHOOK__SECRETS").write_text("s3cr3t-value-long-enough")
    Path(".env").write_text(f"BRIDGE_HTTP__PROT=8081\n{dotenv}\n")
    assert exit_code(["run"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[1] == (
        "  - BRIDGE_HTTP__PROT (in .env) is not a setting and is ignored"
        " (did you mean BRIDGE_HTTP__PORT?)"
    )
    assert lines[2].startswith(f"  - {problem}"), lines


def test_check_and_run_warn_of_a_field_also_in_its_sections_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A field given by its own variable and by its section's JSON: one silently won.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s3cr3t-value-long-enough")
    monkeypatch.setenv("BRIDGE_KAFKA__LINGER_MS", "3")
    monkeypatch.setenv("BRIDGE_KAFKA", '{"linger_ms": 7}')
    warning = (
        "BRIDGE_KAFKA__LINGER_MS and key 'linger_ms' of BRIDGE_KAFKA both set this setting:"
        " BRIDGE_KAFKA__LINGER_MS is read, the other ignored; set it in one place"
    )
    assert main(["check"]) == 0
    assert f"warning: {warning}\n" in capsys.readouterr().err
    monkeypatch.setattr("bridge.service.serve", lambda settings, dotenv: settings)
    monkeypatch.setattr("bridge.cli._run_loop", lambda main: None)
    assert main(["run"]) == 0
    logged = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert ("warning", warning) in [(e["level"], e["msg"]) for e in logged]


@pytest.mark.parametrize("command", [["check"], ["run"], ["tail"]])
def test_a_dotenv_file_that_is_not_utf8_is_a_problem_not_a_traceback(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Windows PowerShell's `>` writes UTF-16: a copied .env is often that.
    Path(".env").write_text("BRIDGE_WEBHOOK__SECRETS=whsec-utf16-8b2e\n", encoding="utf-16")
    assert exit_code(command) == 2
    err = capsys.readouterr().err
    assert "  - .env cannot be read: it is not UTF-8 text (save it as UTF-8)\n" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["check"], ["run"]])
def test_a_dotenv_that_is_a_directory_exits_2_not_ignored(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    Path(".env").mkdir()
    (Path(".env") / ".env").write_text("BRIDGE_WEBHOOK__SECRETS=whsec-in-a-configmap-4c1d\n")
    assert exit_code(command) == 2
    err = capsys.readouterr().err
    assert "  - .env cannot be read: it is a directory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [None, b"{not json", b'{"bridge_http__port": 7001}'])
def test_a_worker_without_its_supervisors_dotenv_says_so_in_one_line_and_exits_3(
    content: bytes | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The descriptor its role names not open (not handed over) or damaged: it was a traceback.
    descriptor = not_open() if content is None else unnamed_file_holding(content)
    role = WorkerRole(
        index=1, count=2, runtime_dir=tmp_path, parent_pid=os.getppid(), dotenv_fd=descriptor
    )
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s3cr3t-value-long-enough")
    monkeypatch.setenv(*role.env().popitem())
    monkeypatch.setattr("bridge.cli._run_loop", lambda main: pytest.fail("the worker served"))
    assert exit_code(["run"]) == EXIT_NO_DOTENV
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"pinecall-bridge: worker 1: descriptor {descriptor} (the .env variables"
    )


def test_check_invalid_exits_2_listing_each_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "70000")
    monkeypatch.setenv("BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION", "0")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "hunter2")
    assert exit_code(["check"]) == 2
    err = capsys.readouterr().err
    for name in ("BRIDGE_HTTP__PORT", "BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION", "BRIDGE_WEBHOOK"):
        assert name in err
    assert "hunter2" not in err


WEBHOOK_SECRETS = ("whsec-old-4b1d", "whsec-new-9e2a")
SASL_PASSWORD = "sasl-pw-7c3f"
SSL_KEY_PASSWORD = "keypw-2a6b"
API_KEY = "pk-live-5d8e"
KNOWN_SECRETS = {
    "BRIDGE_WEBHOOK__SECRETS": ",".join(WEBHOOK_SECRETS),
    "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "BRIDGE_KAFKA__SASL_USERNAME": "bridge",
    "BRIDGE_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
    "BRIDGE_PINECALL__API_KEY": API_KEY,
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(
    ("mistake", "codes"),
    [
        ({}, (0, 0)),
        ({"BRIDGE_KAFKA__SSL_KEY_PASSWORD": SSL_KEY_PASSWORD}, (2, 2)),  # ignored without SSL
        ({"BRIDGE_PINECALL__API_URL": f"https://bridge:{API_KEY}@api.pinecall.io"}, (2, 2)),
        ({"BRIDGE_WEBSOCKET__URL": f"wss://{API_KEY}@api.pinecall.io/v1/ws"}, (2, 2)),
        ({"BRIDGE_PINECALL__PUBLIC_URL": f"https://pinecall:{API_KEY}@bridge.example"}, (2, 2)),
        ({"BRIDGE_KAFKA": json.dumps({"sasl_password": SASL_PASSWORD, "linger_ms": -1})}, (2, 2)),
        ({"BRIDGE_KAFKA": f'{{"sasl_password": "{SASL_PASSWORD}"'}, (2, 2)),  # not JSON
        # A section as JSON, its secret of the wrong type (None: the variable is unset).
        (
            {
                "BRIDGE_WEBHOOK__SECRETS": None,
                "BRIDGE_WEBHOOK": json.dumps({"secrets": {"k": WEBHOOK_SECRETS[0]}}),
            },
            (2, 2),
        ),
        (
            {
                "BRIDGE_PINECALL__API_KEY": None,
                "BRIDGE_PINECALL": json.dumps({"api_key": [API_KEY]}),
            },
            (2, 2),
        ),
        ({"BRIDGE_PINECALL__APIKEY": API_KEY}, (2, 0)),  # misspelt: `run` only warns of it
        # A `key:secret` pair pasted whole as the user name: `check` printed it in its JSON.
        ({"BRIDGE_KAFKA__SASL_USERNAME": f"bridge:{SASL_PASSWORD}"}, (0, 0)),
        # A secret pasted for a path: relative, or starting with `/` as one base64 secret in 64.
        ({"BRIDGE_SECRETS_DIR": SASL_PASSWORD}, (2, 2)),
        ({"BRIDGE_SECRETS_DIR": f"/{SASL_PASSWORD}"}, (2, 2)),
        ({"BRIDGE_SECRETS_DIR": f"/{SASL_PASSWORD}/{API_KEY}"}, (2, 2)),
        (
            {
                "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL",
                "BRIDGE_KAFKA__SASL_USERNAME": None,
                "BRIDGE_KAFKA__SASL_PASSWORD": None,
                "BRIDGE_KAFKA__SSL_CERTFILE": "/etc/hostname",
                "BRIDGE_KAFKA__SSL_KEYFILE": f"/{SSL_KEY_PASSWORD}",
            },
            (2, 2),
        ),
        (
            {
                "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "BRIDGE_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
                "BRIDGE_KAFKA__SASL_USERNAME": None,
                "BRIDGE_KAFKA__SASL_PASSWORD": None,
                "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE": f"/{API_KEY}",
            },
            (2, 2),
        ),
    ],
)
def test_no_secret_is_ever_printed_by_check_or_run(
    command: str,
    mistake: dict[str, str | None],
    codes: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Whatever goes wrong, what `check` and `run` print (a CI log, a pod's log) holds no secret.
    for name, value in {**KNOWN_SECRETS, **mistake}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr("bridge.service.serve", lambda settings, dotenv: settings)
    monkeypatch.setattr("bridge.cli._run_loop", lambda main: None)
    try:
        done: object = main([command])
    except SystemExit as exited:
        done = exited.code
    out, err = capsys.readouterr()
    assert done == codes[command == "run"], out + err
    assert out + err or command == "run", "check always says something"
    for secret in (*WEBHOOK_SECRETS, SASL_PASSWORD, SSL_KEY_PASSWORD, API_KEY):
        assert secret not in out + err


def test_check_refuses_inputs_larger_than_the_records_kafka_takes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 1 MiB body used to become a record over Kafka's 1 MiB: refused forever, retried forever.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_BODY_BYTES", "1048576")
    assert exit_code(["check"]) == 2
    assert "BRIDGE_WEBHOOK__MAX_BODY_BYTES (1048576) leaves no room" in capsys.readouterr().err
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("BRIDGE_KAFKA__MAX_BATCH_BYTES", "2000000")
    with pytest.raises(SystemExit):
        main(["check"])
    assert (
        "BRIDGE_KAFKA__MAX_BATCH_BYTES (2000000) must not exceed"
        " BRIDGE_KAFKA__MAX_REQUEST_BYTES (1048576)" in capsys.readouterr().err
    )


def test_check_refuses_windows_kept_longer_than_the_ttl(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pointless past the TTL (the gap reads as much as a full restore) and memory held: a CI gate
    # says so before a rollout does.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_DEDUP__KEEP_REVOKED_SECONDS", "3600")
    assert exit_code(["check"]) == 2
    assert (
        "BRIDGE_DEDUP__KEEP_REVOKED_SECONDS (3600) must not exceed BRIDGE_DEDUP__TTL_SECONDS (900)"
        in capsys.readouterr().err
    )


def test_check_accepts_limits_that_fit_and_prints_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_KAFKA__MAX_REQUEST_BYTES", "2097152")
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_BODY_BYTES", str(2097152 - 65536))
    monkeypatch.setenv("BRIDGE_WEBSOCKET__MAX_FRAME_BYTES", str(2097152 - 65536))
    monkeypatch.setenv("BRIDGE_SSE__MAX_EVENT_BYTES", "1500000")
    assert main(["check"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("record limits:")]
    # Every limit the record's size is refused by, the call logs' too (left out, a raised one
    # went unsaid).
    assert line.startswith(
        "record limits: webhook bodies up to 2031616 bytes, feed frames up to 2031616 and"
        " call-log entries up to 1500000 fit in Kafka records of up to 2097152 bytes"
    ), line


def test_check_prints_a_limit_past_64_bits_as_the_number_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Unbounded above, such a limit is taken by `run`; `check` said the configuration was
    # valid, then died of orjson's "Integer exceeds 64-bit range" (exit 1).
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES", str(10**20))
    assert main(["check"]) == 0
    printed = json.loads(capsys.readouterr().out)  # jsoncodec refuses such integers to read
    assert printed["webhook"]["max_in_flight_bytes"] == 10**20
    assert printed["topics"]["events"] == "pinecall.events"


def test_checks_json_past_64_bits_writes_a_float_that_is_no_number_as_orjson_does() -> None:
    # json's fallback wrote `Infinity`, which is no JSON; orjson (the settings otherwise) null.
    described = {"limit": 10**20, "seconds": float("inf"), "rates": [float("nan"), 1.5]}
    printed = _settings_json(described)
    assert printed == '{"limit":100000000000000000000,"seconds":null,"rates":[null,1.5]}'


def test_run_with_invalid_config_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TOPICS__EVENTS", "bad topic")
    assert exit_code(["run"]) == 2


def test_send_curl_is_correctly_signed(capsys: pytest.CaptureFixture[str]) -> None:
    body = '{"type":"call.ended","data":{"call_id":"CA_1"}}'
    assert main(["send", "--secret", "k", "--body", body, "--curl"]) == 0
    words = shlex.split(capsys.readouterr().out)
    signature = words[words.index("-H", words.index("-H") + 1) + 1]
    assert words[words.index("--data-raw") + 1] == body
    expected = hmac.new(b"k", body.encode(), hashlib.sha256).hexdigest()
    assert signature == f"X-Pinecall-Signature: sha256={expected}"


def curl_signature(out: str) -> str:
    """The signature header of the curl command `send --curl` printed."""
    words = shlex.split(out)
    return words[words.index("-H", words.index("-H") + 1) + 1]


def test_send_reads_the_secret_from_a_file_or_the_setting_not_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--secret` shows in `ps` to every user: the file, or the setting, keeps it off the line.
    body = '{"type":"call.ended","data":{"call_id":"CA_1"}}'
    file = tmp_path / "secret"
    file.write_text("from-a-file\n")
    expected = hmac.new(b"from-a-file", body.encode(), hashlib.sha256).hexdigest()
    assert main(["send", "--secret-file", str(file), "--body", body, "--curl"]) == 0
    assert curl_signature(capsys.readouterr().out) == f"X-Pinecall-Signature: sha256={expected}"
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "from-a-file, older")
    assert main(["send", "--body", body, "--curl"]) == 0
    assert curl_signature(capsys.readouterr().out) == f"X-Pinecall-Signature: sha256={expected}"


def test_send_signs_with_a_secret_file_less_its_bom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = '{"type":"call.ended","data":{"call_id":"CA_1"}}'
    file = tmp_path / "secret"
    file.write_text("from-notepad\r\n", encoding="utf-8-sig")
    expected = hmac.new(b"from-notepad", body.encode(), hashlib.sha256).hexdigest()
    assert main(["send", "--secret-file", str(file), "--body", body, "--curl"]) == 0
    assert curl_signature(capsys.readouterr().out) == f"X-Pinecall-Signature: sha256={expected}"


def test_an_unreadable_or_empty_secret_file_exits_2_and_both_flags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert exit_code(["send", "--secret-file", str(missing), "--curl"]) == 2
    assert f"--secret-file {str(missing)!r}: No such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").write_text(" \n")
    assert exit_code(["send", "--secret-file", str(tmp_path / "empty"), "--curl"]) == 2
    assert "is empty" in capsys.readouterr().err
    both = ["--secret", "s", "--secret-file", str(missing)]
    assert exit_code(["webhooks", "register", "--url", "u", *both]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("typed", ["whsec-0paste+d4f1", "/whsec-0paste+d4f1", "/wh/sec-0paste"])
def test_a_secret_typed_for_the_secret_files_path_is_not_echoed(
    typed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The secret itself where its file's path goes: relative, or starting with `/` (one standard
    # base64 secret in 64), it is no path under a directory that exists.
    assert exit_code(["send", "--secret-file", typed, "--curl"]) == 2
    err = capsys.readouterr().err
    assert "--secret-file given (not repeated" in err
    assert "0paste" not in err
    assert "/wh/" not in err


@pytest.mark.parametrize("text", ["old-secret,new-secret\n", "old-secret\nnew-secret\n"])
def test_a_secret_file_holding_a_list_is_refused_before_pinecall_is_asked(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
) -> None:
    # The mounted BRIDGE_WEBHOOK__SECRETS of a rotation (`old,new`) given as the secret: put, it
    # had Pinecall sign with a secret no bridge can hold (split at its comma), every webhook 401.
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "k")
    monkeypatch.setenv("BRIDGE_PINECALL__API_URL", f"http://{NOWHERE}")
    (tmp_path / "secret").write_text(text)
    register = ["webhooks", "register", "--url", "u", "--secret-file", str(tmp_path / "secret")]
    assert exit_code(register) == 2  # not 1: Pinecall (down here) is never asked
    err = capsys.readouterr().err
    assert "one secret, not a list" in err
    assert "ClientConnectorError" not in err
    assert "old-secret" not in err
    assert exit_code(["send", "--secret", "old-secret,new-secret", "--curl"]) == 2
    assert "one secret, not a list" in capsys.readouterr().err


def test_send_without_a_secret_names_its_own_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The serving refusal named only the variables: not the options on the command line itself.
    assert main(["send", "--curl"]) == 2
    err = capsys.readouterr().err
    assert "--secret-file PATH (or --secret), or set BRIDGE_WEBHOOK__SECRETS" in err
    assert "BRIDGE_WEBHOOK__ALLOW_UNSIGNED=true" in err
    # Unsigned allowed (a local bridge that checks nothing): sent as before.
    monkeypatch.setenv("BRIDGE_WEBHOOK__ALLOW_UNSIGNED", "true")
    assert main(["send", "--curl"]) == 0
    assert "X-Pinecall-Signature: sha256=" in capsys.readouterr().out


def test_send_reports_unreachable_bridge(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "--secret", "k", "--url", f"http://{NOWHERE}/x"]) == 1
    assert "could not reach" in capsys.readouterr().err


def test_sample_event_is_a_log_entry() -> None:
    event = sample_event()
    assert set(event) == {"seq", "ts", "call", "agent", "type", "ephemeral", "data"}
    assert jsoncodec.loads(jsoncodec.dumps(event)) == event


def test_backfill_takes_one_or_more_calls(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import build_parser

    args = build_parser().parse_args(["backfill", "--call", "CA_1", "--call", "CA_2"])
    assert args.call == ["CA_1", "CA_2"]
    assert exit_code(["backfill"]) == 2
    assert "--call" in capsys.readouterr().err


def test_backfill_since_takes_a_time_or_a_span(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import build_parser

    before = time.time()
    args = build_parser().parse_args(["backfill", "--since", "2h"])
    assert args.call is None
    assert before - 7_200 <= args.since <= time.time() - 7_200
    assert build_parser().parse_args(["backfill", "--since", "1764590400"]).since == 1764590400.0
    for wrong in (["--since", "yesterday"], ["--since", "2h", "--call", "CA_1"]):
        assert exit_code(["backfill", *wrong]) == 2
    err = capsys.readouterr().err
    assert "'yesterday' is not epoch seconds" in err
    assert "not allowed with argument" in err


def test_redrive_takes_a_time_range_reasons_and_channels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import build_parser

    reasons = ["--reason", "missing_type", "--reason", "invalid_data"]
    args = build_parser().parse_args(
        ["redrive", "--since", "2h", "--until", "1h", *reasons, "--channel", "sse", "--dry-run"]
    )
    assert args.since < args.until
    assert (args.reason, args.channel, args.dry_run) == (
        ["missing_type", "invalid_data"],
        ["sse"],
        True,
    )
    for wrong in ([], ["--since", "yesterday"]):
        assert exit_code(["redrive", *wrong]) == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: --since" in err
    assert "'yesterday' is not epoch seconds" in err


def test_redrive_selects_a_reason_only_an_older_version_wrote_and_warns_of_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge import redrive
    from bridge.deadletter import Selection

    asked: list[Selection] = []

    def run(settings: object, selection: Selection, console: object, *, dry_run: bool) -> int:
        asked.append(selection)
        return 0

    monkeypatch.setattr(redrive, "run_redrive", run)
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    reasons = ["--reason", "bad_schema_v1", "--reason", "invalid_data"]
    assert main(["redrive", "--since", "1h", *reasons, "--dry-run"]) == 0
    assert asked[0].reasons == {"bad_schema_v1", "invalid_data"}
    err = capsys.readouterr().err
    assert "warning: this version writes no dead letter with reason 'bad_schema_v1'" in err
    assert "it writes invalid_call_id, invalid_data, invalid_id, invalid_json, invalid_seq," in err
    # Only today's reasons: nothing to warn of.
    assert main(["redrive", "--since", "1h", "--reason", "invalid_data"]) == 0
    assert capsys.readouterr().err == ""


def test_redrive_until_before_since_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    assert main(["redrive", "--since", "1h", "--until", "2h"]) == 2
    assert "--until is before --since" in capsys.readouterr().err


def test_redrive_until_may_be_later_than_now() -> None:
    # The read ends at the topic's end anyway: "until tomorrow" is every dead letter since then.
    from bridge.cli import build_parser

    tomorrow = datetime.now(UTC).date() + timedelta(days=2)
    args = build_parser().parse_args(["redrive", "--since", "1h", "--until", str(tomorrow)])
    assert args.until > time.time()


def test_redrive_until_in_epoch_milliseconds_is_refused_as_such_not_named_since(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A dead letter's Kafka timestamp pasted as the end: the message must not send them to --since.
    assert exit_code(["redrive", "--since", "2h", "--until", "1764590400250"]) == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.startswith("pinecall-bridge redrive: error: argument --until:")
    assert "epoch milliseconds? Give seconds (1764590400.250)" in said
    assert "--since" not in said


def test_since_takes_a_compound_span_and_says_why_one_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import build_parser

    before = time.time()
    args = build_parser().parse_args(["redrive", "--since", "2h30m", "--until", "1h15m"])
    assert before - 9_000 <= args.since <= time.time() - 9_000
    assert before - 4_500 <= args.until <= time.time() - 4_500
    assert exit_code(["tail", "--since", "30m2h"]) == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.endswith(
        "argument --since: '30m2h' is not a span: its units go from the largest"
        " down, each once (h after m)"
    )


@pytest.fixture
def unreachable_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kafka tools' settings, Kafka at NOWHERE (refusing) and, for backfill,
    Pinecall's API key; the webhook secret is the test's to set or not."""
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", NOWHERE)
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "k")


@pytest.mark.parametrize(
    "command",
    [
        ["tail"],
        ["tail", "--everywhere"],  # reads the dedup group's offsets first
        ["backfill", "--call", "CA_1"],
        ["redrive", "--since", "1h"],
    ],
)
@pytest.mark.usefixtures("unreachable_kafka")
def test_kafka_unreachable_is_one_clear_line_not_a_traceback(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Kafka at {NOWHERE} (BRIDGE_KAFKA__BOOTSTRAP_SERVERS)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["tail", "--from-beginning", "--to-end"],
        ["backfill", "--call", "CA_1"],
        ["redrive", "--since", "1h"],
    ],
)
@pytest.mark.usefixtures("unreachable_kafka")
def test_the_kafka_tools_need_no_webhook_secret(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # An SRE's laptop has the Kafka settings (and for backfill Pinecall's key), not the secret:
    # the command gets as far as Kafka instead of exiting 2 for a setting it never reads.
    assert main(command) == 1
    assert f"cannot reach Kafka at {NOWHERE}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "runs"),
    [
        (["backfill", "--call", "CA_1"], "bridge.backfill.run_backfill"),
        (["redrive", "--since", "1h"], "bridge.redrive.run_redrive"),
    ],
)
def test_ctrl_c_ends_a_tool_with_one_line_and_exit_130(
    command: list[str],
    runs: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt  # what asyncio.run raises once Ctrl-C has cancelled its task

    monkeypatch.setattr(runs, interrupted)
    try:
        code = main(command)
    except KeyboardInterrupt:  # pytest would take it as its own Ctrl-C and stop the run
        pytest.fail("Ctrl-C ended the command with a traceback")
    assert code == 130
    assert capsys.readouterr().err.endswith(f"pinecall-bridge {command[0]}: interrupted\n")


def test_a_tool_as_pid_1_ends_on_a_stop_signal_that_came_during_its_start_up(
    as_pid_1: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Held for a `run` (bridge/stopsignals.py), it was never acted on: a `tail` or a `redrive`
    # in a container being deleted ran on until killed at the end of its grace period.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s3cr3t-value")
    hold_until_handled()
    signal.raise_signal(signal.SIGTERM)
    try:
        code = main(["check"])
    except KeyboardInterrupt:  # pytest would take it as its own Ctrl-C and stop the run
        pytest.fail("the stop signal ended the command with a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err.endswith("pinecall-bridge check: interrupted\n")
    assert "configuration is valid" not in err


@pytest.mark.parametrize("command", [["run"], ["check"]])
def test_what_serves_webhooks_still_needs_the_secret(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(command) == 2
    assert "BRIDGE_WEBHOOK__SECRETS is not set" in capsys.readouterr().err


def test_tail_passes_since_and_to_end_and_refuses_an_end_with_no_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[dict[str, Any]] = []

    async def tail(settings: Any, topics: list[str], wanted: Any, **options: Any) -> int:
        asked.append(options)
        return 0

    monkeypatch.setattr("bridge.tail.tail", tail)
    before = time.time()
    assert main(["tail", "--since", "15m", "--to-end"]) == 0
    [options] = asked
    assert before - 900 <= options["since"] <= time.time() - 900
    assert (options["to_end"], options["from_beginning"]) == (True, False)
    # From the end to the end prints nothing: it would read as "the event is nowhere".
    assert main(["tail", "--to-end"]) == 2
    assert "--to-end needs --from-beginning or --since" in capsys.readouterr().err
    assert exit_code(["tail", "--since", "15m", "--from-beginning"]) == 2
    assert len(asked) == 1


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_tail_refuses_a_limit_that_would_end_it_at_once(
    limit: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ending before any record prints nothing: it would read as "the event is nowhere".
    monkeypatch.setattr("bridge.tail.tail", lambda *args, **kwargs: pytest.fail("tail ran"))
    assert exit_code(["tail", "--from-beginning", "--limit", limit]) == 2
    assert f"argument --limit: {limit} is not 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--calls", "0", "0 is not 1 or more"),  # headless: forever, never a verdict
        ("--calls", "-3", "-3 is not 1 or more"),
        ("--rate", "0", "0 is not a finite number above 0"),
        ("--rate", "-1", "-1 is not a finite number above 0"),
        ("--rate", "nan", "nan is not a finite number above 0"),
        ("--rate", "fast", "'fast' is not a number"),
        ("--http-port", "-5", "-5 is not a port from 0 to 65535"),
        ("--simulator-port", "70000", "70000 is not a port from 0 to 65535"),
    ],
)
def test_demo_refuses_a_bad_number_before_starting_anything(
    option: str,
    value: str,
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Unchecked, the simulator refused them only once the bridge was up (or took 0 as "no
    # pacing", or a headless run never ended), and a port out of range was a traceback.
    monkeypatch.setattr("bridge.demo.runner.run_demo", lambda *args: pytest.fail("demo ran"))
    assert exit_code(["demo", "--headless", option, value]) == 2
    assert f"argument {option}: {said}" in capsys.readouterr().err


def test_demo_says_a_bad_setting_as_check_does_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its settings load once its simulator is up: a bad one was a ConfigError traceback, exit 1.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "whsec-check-needs-one-4e1a")
    monkeypatch.setenv("BRIDGE_KAFKA__LINGER_MS", "-1")
    monkeypatch.setenv("BRIDGE_KAFKA__LINGERMS", "5")  # unknown: named first, as by check
    assert exit_code(["check"]) == 2
    said_by_check = capsys.readouterr().err
    ports = ["--http-port", str(free_port()), "--simulator-port", str(free_port())]
    assert exit_code(["demo", "--headless", *ports]) == 2
    said = capsys.readouterr().err
    assert said == said_by_check
    assert said.startswith("pinecall-bridge: invalid configuration:\n  - BRIDGE_KAFKA__LINGERMS ")
    assert "  - BRIDGE_KAFKA__LINGER_MS: Input should be greater than or equal to 0\n" in said


def test_tail_everywhere_reads_the_ingest_every_output_and_the_dead_letter_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_TOPICS__EPHEMERAL", "pinecall.ephemeral")
    # A rule's topic is an output topic too: without it, an ingest copy bound there, decided,
    # with no output line beside it, read as "decided and none published".
    monkeypatch.setenv(
        "BRIDGE_ROUTING__RULES",
        '[{"match": "metrics.*", "topic": "pinecall.metrics"},'
        ' {"match": "call.*", "topic": "pinecall.events"},'
        ' {"match": "usage.*", "topic": "pinecall.metrics"}]',
    )
    asked: list[Any] = []

    async def tail(settings: Any, topics: list[str], wanted: Any, **options: Any) -> int:
        asked.append((topics, wanted))
        return 0

    monkeypatch.setattr("bridge.tail.tail", tail)
    assert main(["tail", "--everywhere", "--call", "CA_1", "--id", "CA_1:2"]) == 0
    [(topics, wanted)] = asked
    assert topics == [
        "pinecall.ingest",
        "pinecall.events",
        "pinecall.alerts",
        "pinecall.ephemeral",
        "pinecall.dlq",
        "pinecall.metrics",
    ]
    assert (wanted.call, wanted.event_id) == ("CA_1", "CA_1:2")


@pytest.mark.parametrize("action", [["show"], ["test"], ["delete"], ["register", "--url", "u"]])
def test_webhook_commands_need_the_api_key_before_asking_pinecall(
    action: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without it each went to Pinecall and came back with a 401.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s")
    monkeypatch.setenv("BRIDGE_PINECALL__API_URL", f"http://{NOWHERE}")
    assert main(["webhooks", *action]) == 2
    err = capsys.readouterr().err
    assert f"webhooks {action[0]} needs BRIDGE_PINECALL__API_KEY" in err


@pytest.mark.parametrize(
    "action", [["show"], ["test"], ["delete"], ["register", "--url", "u", "--secret", "s"]]
)
def test_webhook_commands_that_send_no_configured_secret_do_not_require_one(
    action: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pinecall's key is enough to look at, test or delete the webhook, or to register one with
    # a secret given: the command gets as far as Pinecall instead of exiting 2.
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "k")
    monkeypatch.setenv("BRIDGE_PINECALL__API_URL", f"http://{NOWHERE}")
    assert main(["webhooks", *action]) == 1
    err = capsys.readouterr().err
    assert "ClientConnectorError" in err
    assert "BRIDGE_WEBHOOK__SECRETS" not in err


def test_webhooks_register_takes_its_secret_from_a_file_without_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "k")
    monkeypatch.setenv("BRIDGE_PINECALL__API_URL", f"http://{NOWHERE}")
    (tmp_path / "secret").write_text("s3cr3t-in-a-file\n")
    register = ["webhooks", "register", "--url", "u", "--secret-file", str(tmp_path / "secret")]
    assert main(register) == 1  # as far as Pinecall, which is down
    err = capsys.readouterr().err
    assert "ClientConnectorError" in err
    assert "BRIDGE_WEBHOOK__SECRETS" not in err


def test_webhooks_register_without_a_secret_still_needs_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "k")
    assert exit_code(["webhooks", "register", "--url", "u"]) == 2
    assert "BRIDGE_WEBHOOK__SECRETS is not set" in capsys.readouterr().err


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    assert exit_code(["--version"]) == 0
    version = importlib.metadata.version("pinecall-bridge")
    assert capsys.readouterr().out == f"pinecall-bridge {version}\n"


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["run"], ["until SIGTERM", "unknown BRIDGE_* variables"]),
        (["check"], ["JSON on stdout", "variable no setting reads"]),
        (["send"], ["--url URL", "(default: http://127.0.0.1:8080/webhooks/pinecall)"]),
        (["send"], ["seen by anyone who can list processes (ps)", "--secret-file PATH"]),
        (["webhooks", "register"], ["seen by anyone who can list processes (ps)", "--secret-file"]),
        (["demo"], ["HTTP port (default: 8080)", "Pinecall's port (default: 8765)"]),
        # The README's exit codes: Ctrl-C's 130 was missing from both, backfill had none.
        (["backfill"], ["failed (or the ingest topic does not exist), 2 usage, 130 interrupted"]),
        (["redrive"], ["Exit 0 done, 1 Kafka failed", "2 usage, 130 interrupted (Ctrl-C)"]),
    ],
)
def test_help_describes_commands_and_defaults(
    command: list[str], said: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    for words in said:
        assert words in text, text


def unhelped(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Each subcommand, option or argument under `parser` that its --help shows without a
    description or help text, by its path of command names."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                command = action.choices[choice.dest]
                if not choice.help:
                    missing.append(f"{path} {choice.dest}: no one-line help")
                if not command.description:
                    missing.append(f"{path} {choice.dest}: no description of its own --help")
                missing += unhelped(command, f"{path} {choice.dest}")
        elif not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
    return missing


def test_every_command_and_option_has_help() -> None:
    from bridge.cli import build_parser
    from bridge.simulator.command import build_parser as simulator_parser

    # `simulate` hands its arguments to the simulator's own parser: walked as well.
    assert unhelped(build_parser(), "pinecall-bridge") == []
    assert unhelped(simulator_parser(), "pinecall-bridge simulate") == []


def test_check_says_where_each_secret_comes_from_without_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "BRIDGE_WEBHOOK__SECRETS").write_text("s3cr3t-file\n")
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "s3cr3t-env")
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert "s3cr3t" not in out + err
    file = tmp_path / "secrets" / "BRIDGE_WEBHOOK__SECRETS"
    assert f"BRIDGE_WEBHOOK__SECRETS: file {file}\n" in err
    assert "BRIDGE_PINECALL__API_KEY: environment\n" in err
    assert "BRIDGE_KAFKA__SASL_PASSWORD: unset\n" in err


@pytest.mark.parametrize(("secrets", "warned"), [("s", True), ("0123456789abcdef", False)])
def test_check_and_run_warn_of_a_short_webhook_secret(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secrets: str,
    warned: bool,
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", secrets)
    said = "BRIDGE_WEBHOOK__SECRETS: the secret is shorter than 16 characters: anyone who can"
    assert main(["check"]) == 0  # a warning, not a problem: local testing uses short secrets
    err = capsys.readouterr().err
    assert (f"warning: {said}" in err) is warned, err
    monkeypatch.setattr("bridge.service.serve", lambda settings, dotenv: settings)
    monkeypatch.setattr("bridge.cli._run_loop", lambda main: None)
    assert main(["run"]) == 0
    logged = [jsoncodec.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"], e["msg"].startswith(said)) for e in logged] == [
        ("info", "bridge.connlimit", False)  # the open files limit
    ] + ([("warning", "bridge.config", True)] if warned else [])


def test_check_warns_when_the_dedup_window_outgrows_the_memory_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{2 * 1024**3}\n")
    monkeypatch.setattr("bridge.dedup.memoryfit.CGROUP_ROOT", cgroup)
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "a-long-enough-secret-value")
    assert main(["check"]) == 0  # a warning, never a refusal
    [line] = [x for x in capsys.readouterr().err.splitlines() if "dedup window" in x]
    assert line.startswith("warning: the dedup window's worst case (one pod owning all 12 ingest")
    assert "against a limit of 2,048 MiB" in line
    assert (
        "BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION (chart: config.dedup.maxEntriesPerPartition)"
        in line
    )
    assert "to at most 620756" in line
    assert "to at least 3,133 MiB" in line

    monkeypatch.setenv("BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION", "620756")
    assert main(["check"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if "dedup window" in x]
    assert line.startswith("dedup memory: the dedup window's worst case")
    # All 12 restored at once hold 12 restores' buffers, not 4: the same cap no longer fits.
    monkeypatch.setenv("BRIDGE_DEDUP__RESTORE_CONCURRENCY", "12")
    assert main(["check"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if "dedup window" in x]
    assert "to at most 609572" in line


@pytest.mark.parametrize("own_process", [False, True])
def test_check_sizes_the_dedup_window_for_a_worker_per_cpu(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    own_process: bool,
) -> None:
    # BRIDGE_HTTP__WORKERS=0 on 4 CPUs is 4 processes (3 and the dedup stage's own): `check`
    # counted 1 (or 2) and said fits where `run` warned that the pod outgrows its limit.
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{2 * 1024**3}\n")
    monkeypatch.setattr("bridge.dedup.memoryfit.CGROUP_ROOT", cgroup)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(4)), raising=False)
    monkeypatch.setattr("bridge.workers.cpus.read_cpu_max", lambda root: None)
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "a-long-enough-secret-value")
    monkeypatch.setenv("BRIDGE_HTTP__WORKERS", "0")
    monkeypatch.setenv("BRIDGE_DEDUP__OWN_PROCESS", str(own_process).lower())
    # Fits one process's reserve (256 MiB) in 2 GiB, not four's.
    monkeypatch.setenv("BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION", "600000")
    assert main(["check"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if "dedup window" in x]
    assert line.startswith("warning: the dedup window's worst case"), line
    assert "1,024 MiB for the processes" in line, line  # 256 MiB each


def test_run_freezes_what_start_up_allocated_and_collects_gen0_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Worker processes go through `run` too: the setting is made before the role is read.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "s3cr3t-value-long-enough")
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr("bridge.service.serve", lambda settings, dotenv: settings)
    monkeypatch.setattr("bridge.cli._run_loop", lambda main: None)
    assert main(["run"]) == 0
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)
    # The modules imported by then are thousands of objects; the collector walks none again.
    assert gc.get_freeze_count() > 10_000
    assert gc.isenabled()


def test_the_demo_shows_a_character_the_terminal_cannot_show_escaped_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo shows callers' words as tail does: on a terminal that is not UTF-8 (LANG=
    en_US.ISO-8859-1) the first emoji ended it, exit 1, with UnicodeEncodeError."""
    from bridge.demo import runner

    async def shows_an_emoji(_: runner.DemoOptions, console: Console) -> int:
        console.print(render_record("t", None, b"\xf0\x9f\x98\x80"), highlight=False)
        return 0

    monkeypatch.setattr(runner, "run_demo", shows_an_emoji)
    reader, writer = os.pipe()
    with open(writer, "w", encoding="latin-1") as latin1, open(reader, "rb") as shown:
        monkeypatch.setattr(sys, "stdout", latin1)
        code = main(["demo", "--headless"])
        latin1.close()
        assert shown.read() == b"t not a CloudEvent: \\U0001f600\n"
    assert code == 0


def test_check_says_which_http_parser_run_serves_with_and_warns_unless_llhttp(
    both_http_parsers: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `run`'s `listening` line (http_parser) and its WARNING: the pure-Python parser answers
    # some malformed requests differently, which a CI gate running `check` should see.
    monkeypatch.delenv("AIOHTTP_NO_EXTENSIONS", raising=False)
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "a-long-enough-secret-value")
    assert main(["check"]) == 0  # a warning, never a refusal
    err = capsys.readouterr().err.splitlines()
    assert f"http parser: {both_http_parsers}" in err
    warned = [line for line in err if "C HTTP parser is not in use" in line]
    if both_http_parsers == "llhttp":
        assert warned == []
    else:
        assert [line.startswith("warning: ") for line in warned] == [True]
        assert "http_parser=python: aiohttp did not take its C extension" in warned[0]
