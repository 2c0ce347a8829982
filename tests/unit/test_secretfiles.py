import os
from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.redaction import UNSHOWN_PATH
from bridge.secretfiles import has_control_character, secret_origins
from tests.environ import settings_problems as problems
from tests.environ import without_bridge_variables


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    without_bridge_variables(monkeypatch, tmp_path)


def secrets_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, files: dict[str, str]) -> Path:
    """`files` written in a directory named by BRIDGE_SECRETS_DIR."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(directory))
    return directory


def test_secret_settings_are_read_from_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets_dir(
        monkeypatch,
        tmp_path,
        {
            "BRIDGE_WEBHOOK__SECRETS": "old,new\n",
            "BRIDGE_PINECALL__API_KEY": "key\n",
            "BRIDGE_KAFKA__SASL_PASSWORD": " pass word \r\n",
        },
    )
    monkeypatch.setenv("BRIDGE_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_USERNAME", "bridge")
    s = load_settings()
    assert [x.get_secret_value() for x in s.webhook.secrets] == ["old", "new"]
    assert s.pinecall.api_key is not None
    assert s.pinecall.api_key.get_secret_value() == "key"
    # The variable's validators: the line end goes, a password's own spaces stay.
    password = s.kafka.sasl_password
    assert password is not None
    assert password.get_secret_value() == " pass word "


def test_a_secret_file_loses_the_bom_a_windows_editor_starts_it_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Kept, U+FEFF was part of the webhook secret: every genuine signature refused, check valid.
    bom = "\ufeff"
    secrets_dir(
        monkeypatch,
        tmp_path,
        {"BRIDGE_WEBHOOK__SECRETS": f"{bom}whsec-a,b\r\n", "BRIDGE_PINECALL__API_KEY": f"{bom}key"},
    )
    s = load_settings()
    assert [x.get_secret_value() for x in s.webhook.secrets] == ["whsec-a", "b"]
    assert s.pinecall.api_key is not None
    assert s.pinecall.api_key.get_secret_value() == "key"


def test_a_kubernetes_secret_volume_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The kubelet's layout: each file a link into ..data, itself a link to a timestamped directory
    # (hidden entries, swapped on rotation), which holds the real files.
    directory = tmp_path / "secrets"
    (directory / "..2026_12_04").mkdir(parents=True)
    (directory / "..2026_12_04" / "BRIDGE_WEBHOOK__SECRETS").write_text("mounted\n")
    (directory / "..data").symlink_to("..2026_12_04")
    (directory / "BRIDGE_WEBHOOK__SECRETS").symlink_to("..data/BRIDGE_WEBHOOK__SECRETS")
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(directory))
    assert [x.get_secret_value() for x in load_settings().webhook.secrets] == ["mounted"]


def test_a_secret_in_a_file_and_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets_dir(monkeypatch, tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "from-file"})
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "from-env")
    (problem,) = problems()
    assert problem.startswith("BRIDGE_WEBHOOK__SECRETS: set both as a file")
    assert "environment" in problem
    assert "from-" not in problem


def test_a_secret_in_a_file_and_in_dotenv_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets_dir(monkeypatch, tmp_path, {"BRIDGE_PINECALL__API_KEY": "from-file"})
    Path(".env").write_text("BRIDGE_WEBHOOK__SECRETS=x\nBRIDGE_PINECALL__API_KEY=from-env\n")
    (problem,) = problems()
    assert problem.startswith("BRIDGE_PINECALL__API_KEY: set both as a file")
    assert ".env file" in problem


def test_a_missing_secrets_dir_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path / "not-mounted"))
    assert problems() == [
        f"BRIDGE_SECRETS_DIR: {str(tmp_path / 'not-mounted')!r} is no directory"
        " (missing, or not mounted)"
    ]


@pytest.mark.parametrize("pasted", ["s3cret+0paste", "/s3cret+0paste", "/s3cret/0paste="])
def test_a_secret_given_for_the_secrets_dir_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    # The rule of the other path settings: a value that is no path under a directory found here
    # may be a secret pasted in place of its path (a leading `/` alone is no proof of a path).
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", pasted)
    assert problems() == [
        f"BRIDGE_SECRETS_DIR: {UNSHOWN_PATH} is no directory (missing, or not mounted)"
    ]


def test_a_secrets_dir_that_cannot_be_looked_at_is_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # is_dir() raises for all but a missing path: a name too long here (as root, no EACCES).
    directory = str(tmp_path / ("x" * 300))
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", directory)
    assert problems() == [f"BRIDGE_SECRETS_DIR: {directory!r} cannot be read: File name too long"]


def test_a_secret_file_that_cannot_be_looked_at_is_named_with_the_secrets_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A directory whose path fits PATH_MAX (4096 bytes, its NUL included) and a secret's file
    # in it whose does not: the directory is listed, the file's stat raises (as root, no
    # EACCES). The settings' load once said ".env cannot be read", then named the file alone.
    deep = tmp_path
    while len(str(deep)) < 3800:
        deep /= "d" * 200
    deep /= "e" * (4090 - len(str(deep)) - 1)
    deep.mkdir(parents=True)
    directory = os.open(deep, os.O_RDONLY)
    try:
        os.close(os.open("BRIDGE_WEBHOOK__SECRETS", os.O_WRONLY | os.O_CREAT, dir_fd=directory))
    finally:
        os.close(directory)
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(deep))
    secret = f"{deep}/BRIDGE_WEBHOOK__SECRETS"
    assert problems() == [f"BRIDGE_SECRETS_DIR: {secret!r} cannot be read: File name too long"]


def test_an_unreadable_secret_file_is_named_without_its_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = secrets_dir(monkeypatch, tmp_path, {})
    # Bytes that are no UTF-8 fail the read as an unreadable file does, whoever runs the tests.
    (directory / "BRIDGE_WEBHOOK__SECRETS").write_bytes(b"s3cret\xff\n")
    (problem,) = problems()
    assert problem == (
        f"BRIDGE_SECRETS_DIR: the secret file {directory / 'BRIDGE_WEBHOOK__SECRETS'}"
        " could not be read: not UTF-8 text"
    )


def test_a_secrets_dir_over_the_librarys_size_limit_is_named_not_a_parse_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = secrets_dir(monkeypatch, tmp_path, {})
    with (directory / "BRIDGE_WEBHOOK__SECRETS").open("wb") as file:
        file.truncate(16 * 1024 * 1024 + 1)  # sparse: the size is what is checked
    assert problems() == [
        f"BRIDGE_SECRETS_DIR: {directory} is refused: secrets_dir size is above 16777216 bytes"
    ]


def test_a_file_that_is_no_secret_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Only the four secrets: any other setting is visible configuration, in the environment.
    directory = secrets_dir(
        monkeypatch, tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "x", "BRIDGE_HTTP__PORT": "1"}
    )
    (problem,) = problems()
    assert problem.startswith(f"BRIDGE_SECRETS_DIR: {directory / 'BRIDGE_HTTP__PORT'} is not")


def test_secret_origins_name_the_source_never_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = secrets_dir(monkeypatch, tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "s3cret"})
    environ = {"BRIDGE_SECRETS_DIR": str(directory), "BRIDGE_PINECALL__API_KEY": "k3y"}
    origins = secret_origins(environ, {"BRIDGE_KAFKA__SASL_PASSWORD": "pa55"})
    assert origins == {
        "BRIDGE_WEBHOOK__SECRETS": f"file {directory / 'BRIDGE_WEBHOOK__SECRETS'}",
        "BRIDGE_PINECALL__API_KEY": "environment",
        "BRIDGE_KAFKA__SASL_PASSWORD": ".env",
        "BRIDGE_KAFKA__SSL_KEY_PASSWORD": "unset",
    }


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_an_empty_variable_is_unset_and_the_file_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    # Empty is unset for the secret settings (e.g. a chart or compose file that always sets it):
    # neither "set twice" nor the "" hiding the file.
    secrets_dir(monkeypatch, tmp_path, {"BRIDGE_PINECALL__API_KEY": "from-file\n"})
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    if where == "environment":
        monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "")
    else:
        Path(".env").write_text("BRIDGE_PINECALL__API_KEY=\n")
    key = load_settings().pinecall.api_key
    assert key is not None
    assert key.get_secret_value() == "from-file"


def test_an_empty_variable_with_a_value_in_dotenv_and_a_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets_dir(monkeypatch, tmp_path, {"BRIDGE_PINECALL__API_KEY": "from-file"})
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "")
    Path(".env").write_text("BRIDGE_WEBHOOK__SECRETS=x\nBRIDGE_PINECALL__API_KEY=from-env\n")
    (problem,) = problems()
    assert problem.startswith("BRIDGE_PINECALL__API_KEY: set both as a file")
    assert ".env file" in problem


def test_secret_origins_of_empty_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    directory = secrets_dir(monkeypatch, tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "s3cret"})
    environ = {
        "BRIDGE_SECRETS_DIR": str(directory),
        "BRIDGE_WEBHOOK__SECRETS": "",
        "BRIDGE_PINECALL__API_KEY": "",
    }
    origins = secret_origins(environ, {"BRIDGE_PINECALL__API_KEY": "k3y"})
    # The empty variable hides .env's value, as the settings read it (load_settings: no key).
    assert origins["BRIDGE_PINECALL__API_KEY"] == "unset"
    assert origins["BRIDGE_WEBHOOK__SECRETS"] == f"file {directory / 'BRIDGE_WEBHOOK__SECRETS'}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BRIDGE_WEBHOOK", '{"secrets": "from-env"}'),
        ("BRIDGE_WEBHOOK", '{"Secrets": "from-env", "max_age_seconds": 0}'),
        ("BRIDGE_WEBHOOK", '{"secrets": ""}'),
    ],
)
def test_a_secret_in_a_file_and_in_its_sections_json_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    # The section's JSON would win over the file (an earlier source), unseen.
    secrets_dir(monkeypatch, tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "from-file"})
    monkeypatch.setenv(variable, value)
    (problem,) = problems()
    assert problem == (
        "BRIDGE_WEBHOOK__SECRETS: set both as a file in BRIDGE_SECRETS_DIR and in the"
        " environment, as the key 'secrets' of the JSON in BRIDGE_WEBHOOK; set it in one place"
    )


def test_a_secret_in_a_file_and_in_its_sections_json_in_dotenv_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets_dir(
        monkeypatch,
        tmp_path,
        {"BRIDGE_WEBHOOK__SECRETS": "from-file", "BRIDGE_PINECALL__API_KEY": "from-file"},
    )
    Path(".env").write_text('BRIDGE_PINECALL=\'{"api_key": "from-env"}\'\n')
    (problem,) = problems()
    assert problem.startswith("BRIDGE_PINECALL__API_KEY: set both as a file")
    assert "the .env file, as the key 'api_key' of the JSON in BRIDGE_PINECALL" in problem
    assert "from-" not in problem


def test_a_section_json_without_the_secret_goes_with_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets_dir(monkeypatch, tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "from-file"})
    monkeypatch.setenv("BRIDGE_WEBHOOK", '{"max_age_seconds": 0}')
    assert [x.get_secret_value() for x in load_settings().webhook.secrets] == ["from-file"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3cret-with,comma and space", False),
        ("é-ü-中-\u200b", False),  # a format character (Cf) is no control character
        ("old\nnew", True),
        ("old\r\nnew", True),
        ("tab\there", True),
        ("nul\x00", True),
        ("c1\x85", True),  # NEL: a C1 control, a line break to some readers
    ],
)
def test_has_control_character(text: str, expected: bool) -> None:
    assert has_control_character(text) is expected
