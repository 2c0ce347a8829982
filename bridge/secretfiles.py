"""The secret settings read as files of `BRIDGE_SECRETS_DIR` (a mounted Kubernetes Secret)."""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from pydantic_settings import (
    DotEnvSettingsSource,
    EnvSettingsSource,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsError,
)

from bridge.configerror import ConfigError
from bridge.redaction import shown_path

# A directory (a mounted Kubernetes Secret) holding secret settings as files named like their
# variables: kept out of the environment, which `kubectl describe`, /proc and children all see.
SECRETS_DIR_VARIABLE = "BRIDGE_SECRETS_DIR"
SECRET_VARIABLES = (
    "BRIDGE_WEBHOOK__SECRETS",
    "BRIDGE_PINECALL__API_KEY",
    "BRIDGE_KAFKA__SASL_PASSWORD",
    "BRIDGE_KAFKA__SSL_KEY_PASSWORD",
)


def has_control_character(text: str) -> bool:
    """Whether `text` holds a control character (Unicode Cc: a line break, tab, NUL...)."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def named_path(path: str | Path) -> str:
    """A path setting's value as its error may quote it (`shown_path`): only a real path's."""
    return shown_path(str(path), os.path.lexists)


def _secrets_dir(
    environ: Mapping[str, str | None], dotenv: Mapping[str, str | None]
) -> Path | None:
    """BRIDGE_SECRETS_DIR (`environ` and `dotenv` in lower case), checked; None when unset."""
    key = SECRETS_DIR_VARIABLE.lower()
    value = environ.get(key) or dotenv.get(key)
    if not value:
        return None
    directory = Path(value)
    try:
        is_dir = directory.is_dir()
    except OSError as exc:  # is_dir() answers False only to a missing path
        raise ConfigError(
            [f"{SECRETS_DIR_VARIABLE}: {named_path(value)} cannot be read: {exc.strerror}"]
        ) from None
    if not is_dir:
        raise ConfigError(
            [
                f"{SECRETS_DIR_VARIABLE}: {named_path(value)} is no directory (missing, or not"
                " mounted)"
            ]
        )
    return directory


def secret_files(directory: Path) -> dict[str, Path]:
    """The secret files of `directory`, by variable; any other entry there is a ConfigError."""
    try:
        # Hidden entries are the kubelet's (..data, ..<time>): the visible names link into them.
        entries = sorted(e for e in directory.iterdir() if not e.name.startswith("."))
    except OSError as exc:
        raise ConfigError(
            [f"{SECRETS_DIR_VARIABLE}: {directory} cannot be listed: {exc.strerror}"]
        ) from None
    found, problems = {}, []
    for entry in entries:
        name = entry.name.upper()
        if name not in SECRET_VARIABLES:
            problems.append(
                f"{SECRETS_DIR_VARIABLE}: {entry} is not one of the secret settings read from"
                f" files ({', '.join(SECRET_VARIABLES)}); set other settings in the environment"
            )
        elif not entry.is_file():
            problems.append(f"{SECRETS_DIR_VARIABLE}: {entry} is not a file")
        else:
            found[name] = entry
    if problems:
        raise ConfigError(problems)
    return found


def secret_text(content: bytes) -> str:
    """A secret file's `content` as read_secret reads it (UnicodeDecodeError if not UTF-8)."""
    # -sig: a leading BOM (Notepad's, PowerShell 5's UTF-8) is no part of the secret, as it is
    # none of a `.env` line; kept, a webhook secret would fail every signature. Line ends are
    # read as Path.read_text reads them (\r\n and \r as \n).
    return io.TextIOWrapper(io.BytesIO(content), encoding="utf-8-sig").read()


def read_secret(path: Path, setting: str = SECRETS_DIR_VARIABLE, shown: str | None = None) -> str:
    """A secret file's text, as the variable would hold it: its validators strip line ends.
    A file that cannot be read is a ConfigError naming `setting` and the path (or `shown` in
    its place), never content."""
    try:
        return secret_text(path.read_bytes())
    except (OSError, UnicodeDecodeError) as exc:
        # The path and the reason only: the bytes may be the secret.
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        where = str(path) if shown is None else shown
        raise ConfigError(
            [f"{setting}: the secret file {where} could not be read: {reason}"]
        ) from None


# RFC 6750's b64token, the only token OAUTHBEARER carries (RFC 7628): Kafka refuses any other.
_BEARER_TOKEN = re.compile(r"[-A-Za-z0-9._~+/]+=*")


def read_token(path: Path, setting: str) -> str:
    """The bearer token a token file holds (surrounding whitespace removed), or a ConfigError
    naming `setting` and why, never the content: unreadable, empty, or no bearer token."""
    # The path is the user's setting: a token pasted in its place is quoted by no error.
    token = read_secret(path, setting, named_path(path)).strip()
    if not token:
        raise ConfigError([f"{setting}: the token file {path} is empty"])
    if not _BEARER_TOKEN.fullmatch(token):
        raise ConfigError(
            [
                f"{setting}: the token file {path} holds no bearer token (one line of letters,"
                " digits and -._~+/, then any = padding: a JWT, say)"
            ]
        )
    return token


class _SecretFiles(NestedSecretsSettingsSource):
    """pydantic-settings' secrets directory limited to the secret settings, read unstripped."""

    @classmethod
    def load_secrets(cls, path: Path) -> dict[str, str]:
        # The library strips all whitespace; a password may end in a space, so the same
        # validators as for the variable take the line end off.
        return {name: read_secret(file) for name, file in secret_files(path).items()}


def secret_file(
    name: str, environ: Mapping[str, str], dotenv: Mapping[str, str | None]
) -> Path | None:
    """The file secret setting `name` is read from, or None when it comes from no file."""
    lower_env = {key.lower(): value for key, value in environ.items()}
    lower_dotenv = {key.lower(): value for key, value in dotenv.items()}
    directory = _secrets_dir(lower_env, lower_dotenv)
    return secret_files(directory).get(name) if directory is not None else None


def _in_section(name: str, variables: Mapping[str, str | None]) -> bool:
    """Whether the section of secret `name` is given whole as JSON (`BRIDGE_WEBHOOK='{...}'`)
    with that field in it: pydantic-settings would read it, and the file never."""
    section, _, field = name.lower().partition("__")
    value = variables.get(section)
    if not value:
        return False
    try:
        parsed = json.loads(value)  # the stdlib's, as pydantic-settings reads it
    except ValueError:  # not JSON: load_settings names the variable
        return False
    return isinstance(parsed, dict) and any(str(key).lower() == field for key in parsed)


def secret_origins(environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> dict[str, str]:
    """Where each secret setting comes from (a file's path, environment, .env, unset), no value."""
    lower_env = {name.lower(): value for name, value in environ.items()}
    lower_dotenv = {name.lower(): value for name, value in dotenv.items()}
    directory = _secrets_dir(lower_env, lower_dotenv)
    files = secret_files(directory) if directory is not None else {}
    origins = {}
    for name in SECRET_VARIABLES:
        if name in files:
            origins[name] = f"file {files[name]}"
        elif name.lower() in lower_env:
            # Empty is unset, and still hides a value in .env: the environment is read first.
            origins[name] = "environment" if lower_env[name.lower()] else "unset"
        elif lower_dotenv.get(name.lower()):
            origins[name] = ".env"
        else:
            origins[name] = "unset"
    return origins


def with_secret_files(
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
    file_secret_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The settings' sources: those given, then the secret files when BRIDGE_SECRETS_DIR is set."""
    assert isinstance(env_settings, EnvSettingsSource)
    assert isinstance(dotenv_settings, DotEnvSettingsSource)
    directory = _secrets_dir(env_settings.env_vars, dotenv_settings.env_vars)
    if directory is None:
        return init_settings, env_settings, dotenv_settings
    try:
        files = _SecretFiles(file_secret_settings, secrets_dir=directory)
    except SettingsError as exc:
        # The library's limits on the directory (16 MiB, its entries), which it checks before any
        # file is read: its words name no content. Left to _load, they read as a parse error.
        raise ConfigError([f"{SECRETS_DIR_VARIABLE}: {directory} is refused: {exc}"]) from None
    except OSError as exc:
        # The library looks at every entry as it sizes the directory: a name too long, a
        # permission refused. Named as the directory's other problems are, not as any file.
        entry = directory if exc.filename is None else exc.filename
        raise ConfigError(
            [f"{SECRETS_DIR_VARIABLE}: {named_path(entry)} cannot be read: {exc.strerror}"]
        ) from None
    # Empty is unset for these settings: an empty variable is no second value, and left in, its ""
    # would win over the file (an earlier source wins).
    for source in (env_settings, dotenv_settings):
        source.env_vars = {
            key: value
            for key, value in source.env_vars.items()
            if value or key not in files.env_vars
        }
    # Both would be a secret with two values, one of them stale after a rotation: refuse.
    twice = [
        f"{name}: set both as a file in {SECRETS_DIR_VARIABLE} and {where}; set it in one place"
        for name in SECRET_VARIABLES
        if name.lower() in files.env_vars
        and (where := _elsewhere(name, env_settings.env_vars, dotenv_settings.env_vars))
    ]
    if twice:
        raise ConfigError(twice)
    return init_settings, env_settings, dotenv_settings, files


def _elsewhere(
    name: str, environ: Mapping[str, str | None], dotenv: Mapping[str, str | None]
) -> str:
    """Where else than its file secret `name` is set, in words; "" when nowhere."""
    section = name.split("__")[0]
    for variables, place in ((environ, "the environment"), (dotenv, "the .env file")):
        if name.lower() in variables:
            return f"in {place}"
        if _in_section(name, variables):
            field = name.split("__")[1].lower()
            return f"in {place}, as the key {field!r} of the JSON in {section}"
    return ""
