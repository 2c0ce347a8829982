"""The chart's `config` values and the bridge's settings are one set: every setting is reachable,
with the bridge's default, and what the chart renders configures the bridge as the values say."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from bridge.config import Settings
from tests.deploy.tools import (
    ALL_ON,
    CHART,
    GROUP,
    SIGNED,
    Manifest,
    load_yaml,
    merged,
    one,
    render,
)
from tests.integration.certs import make_certs

# Settings the chart takes from Secrets (env) or mounts as files, never from `config`.
SECRET_SETTINGS = {
    "webhook.secrets": "secrets.webhookSecrets",
    "kafka.sasl_password": "secrets.kafkaSaslPassword",
    "kafka.ssl_key_password": "secrets.kafkaSslKeyPassword",
    "pinecall.api_key": "secrets.pinecallApiKey",
    "kafka.ssl_cafile": "kafkaTls.ca",
    "kafka.ssl_certfile": "kafkaTls.cert",
    "kafka.ssl_keyfile": "kafkaTls.key",
    "kafka.sasl_oauth_token_file": "serviceAccount.kafkaOauthAudience",  # a projected token
}
# Settings the chart sets per pod (the downward API), never from `config`: they must differ.
POD_SETTINGS = {"dedup.instance_id": "metadata.name"}
POD_NAME = "pinecall-bridge-7f9c5d8b4-x2kqz"
# Where the chart's default is deliberately not the bridge's.
CHART_DEFAULT_DIFFERS = {
    "kafka.bootstrap_servers",  # 127.0.0.1 means nothing in a pod
    "dedup.max_entries_per_partition",  # the chart's every window must fit its memory limit
    # The chart's probes and scrapes need a port a full webhook port cannot refuse; the bridge
    # alone keeps one port unless told, opening no listener nobody asked for.
    "http.admin_port",
    # Required of the chart: one default for every release made two releases one deployment.
    "dedup.group",
}
TLS_DIR = "/etc/pinecall-bridge/kafka-tls"


def camel(snake: str) -> str:
    first, *rest = snake.split("_")
    return first + "".join(word.title() for word in rest)


def bridge_settings() -> dict[str, Any]:
    """`section.field` -> the bridge's pydantic field, for every setting."""
    fields = {}
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        for name, field in model.model_fields.items():
            fields[f"{section}.{name}"] = field
    return fields


def is_secret_or_file(field: Any) -> bool:
    text = str(field.annotation)
    return "SecretStr" in text or "Path" in text


def plain(value: Any) -> Any:
    """A default as YAML would hold it."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    assert not isinstance(value, SecretStr | Path), "secrets and files are not in `config`"
    return value


def test_values_expose_every_bridge_setting_with_its_default() -> None:
    fields = bridge_settings()
    config: dict[str, dict[str, Any]] = load_yaml(CHART / "values.yaml")["config"]
    in_values = {f"{s}.{k}" for s, section in config.items() for k in section}
    by_camel = {f"{s}.{camel(k)}": f"{s}.{k}" for s, k in (n.split(".") for n in fields)}
    secret = {name for name, field in fields.items() if is_secret_or_file(field)}
    assert secret == set(SECRET_SETTINGS), "a secret/file setting must map to secrets/kafkaTls"
    missing = {by_camel[c] for c in by_camel if c not in in_values} - secret - set(POD_SETTINGS)
    assert not missing, f"bridge settings the chart cannot set: {sorted(missing)}"
    unknown = {c for c in in_values if c not in by_camel}
    assert not unknown, f"chart values that are no bridge setting: {sorted(unknown)}"
    per_pod = {c for c in in_values if by_camel.get(c) in POD_SETTINGS}
    assert not per_pod, f"per-pod settings must not be in `config`: {sorted(per_pod)}"
    wrong = {}
    for camel_name, name in by_camel.items():
        if name in secret or name in CHART_DEFAULT_DIFFERS or name in POD_SETTINGS:
            continue
        section, key = camel_name.split(".")
        default = plain(fields[name].get_default(call_default_factory=True))
        if config[section][key] != default:
            wrong[camel_name] = (config[section][key], default)
    assert not wrong, f"chart defaults that are not the bridge's (chart, bridge): {wrong}"


def environment(manifests: list[Manifest], files: Path) -> dict[str, str]:
    """The container's BRIDGE_* environment as Kubernetes would build it from the manifests."""
    env = dict(one(manifests, "ConfigMap", "pinecall-bridge")["data"])
    secrets = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "Secret"}
    (bridge,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    for item in bridge.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        field = item.get("valueFrom", {}).get("fieldRef")
        if field is not None:  # the downward API: the pod's own name
            assert field == {"fieldPath": "metadata.name"}
            env[item["name"]] = POD_NAME
        elif ref is None:
            env[item["name"]] = item["value"]
        elif ref["name"] in secrets:  # the chart's own Secret: its real value
            env[item["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
        else:  # a Secret someone else manages
            env[item["name"]] = f"from-{ref['name']}-{ref['key']}"
    files.mkdir(exist_ok=True)
    volumes = one(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]
    for volume in volumes:  # the secret settings as files, where the kubelet would put them
        if volume["name"] == "secrets":
            mounted_secrets = files / "secrets"
            mounted_secrets.mkdir()
            env["BRIDGE_SECRETS_DIR"] = str(mounted_secrets)
            for source in volume["projected"]["sources"]:
                name, (item,) = source["secret"]["name"], source["secret"]["items"]
                text = (
                    base64.b64decode(secrets[name][item["key"]]).decode()
                    if name in secrets
                    else f"from-{name}-{item['key']}"
                )
                (mounted_secrets / item["path"]).write_text(text)
    certs = make_certs(files / "made")  # the bridge loads them as it validates its settings
    mounted = {"ca.crt": certs.ca, "client.crt": certs.client_cert, "client.key": certs.client_key}
    for name, value in env.items():
        if value.startswith(TLS_DIR):  # the mounted TLS files: present, as in the pod
            env[name] = str(files / Path(value).name)
            Path(env[name]).write_bytes(mounted[Path(value).name].read_bytes())
    return env


@pytest.mark.parametrize("variant", ["defaults", "all-features", "all-features-as-variables"])
def test_rendered_environment_configures_the_bridge_as_the_values_say(
    variant: str, tmp_path: Path
) -> None:
    values: dict[str, Any] = load_yaml(CHART / "values.yaml")
    if variant == "defaults":
        # As long as a secret `check` warns of none: the chart's own values must warn of nothing.
        manifests = render("secrets.webhookSecrets.value=s3cret-of-sixteen-chars", GROUP)
        values = merged(values, {"config": {"dedup": {"group": GROUP.split("=")[1]}}})
    else:
        as_variables = ["secrets.asFiles=false"] if variant.endswith("as-variables") else []
        manifests = render(*as_variables, values=ALL_ON)
        values = merged(values, load_yaml(ALL_ON))
    env = environment(manifests, tmp_path / "tls")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check"],
        env=clean | env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "warning:" not in done.stderr  # what `check` warns of, the chart's values never ask
    effective = json.loads(done.stdout)
    for section, fields in values["config"].items():
        for key, value in fields.items():
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
            got = effective[section][snake]
            if isinstance(value, str) and isinstance(got, list):
                value = [part.strip() for part in value.split(",")]
            assert got == value, f"config.{section}.{key}: values say {value!r}, bridge has {got!r}"
    assert effective["dedup"]["instance_id"] == POD_NAME  # a pod's name is a valid instance id
    if variant != "defaults":
        assert effective["kafka"]["ssl_cafile"] == str(tmp_path / "tls" / "ca.crt")
        assert effective["kafka"]["sasl_password"] == "**********"
    # Where the chart put the secrets, as `check` tells: files by default, else variables.
    origin = "environment" if variant.endswith("as-variables") else "file "
    assert f"BRIDGE_WEBHOOK__SECRETS: {origin}" in done.stderr


def test_a_whole_number_past_int64_is_rendered_as_the_number_it_is(tmp_path: Path) -> None:
    # A values file's numbers reach the templates as float64: int64 of 1e19 (and of any whole
    # number from 2**63) rendered -9223372036854775808, which the bridge then took or refused.
    values = tmp_path / "values.yaml"
    values.write_text("config:\n  websocket:\n    maxBacklogBytes: 10000000000000000000\n")
    env = one(render(SIGNED, values=values), "ConfigMap", "pinecall-bridge")["data"]
    assert env["BRIDGE_WEBSOCKET__MAX_BACKLOG_BYTES"] == "10000000000000000000"
