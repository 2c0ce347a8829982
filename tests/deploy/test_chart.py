"""The Helm chart: lint, render (defaults and every feature on), Kubernetes API schemas, and
what the Deployment must guarantee (probes, security, secrets, termination, spreading)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bridge.config import ShutdownSettings, drain_delay_warnings
from bridge.dedup.memoryfit import WindowFit
from bridge.sink.durability import min_insync_for
from bridge.stopbudget import overrun_seconds
from bridge.workers.budget import MAX_DELAY_SECONDS
from bridge.workers.parent import PROBE_EVERY_SECONDS
from bridge.workers.pod import ASK_TIMEOUT_SECONDS
from bridge.workers.silence import START_UP_SECONDS
from tests.deploy import pss
from tests.deploy.tools import (
    ALL_ON,
    CHART,
    GROUP,
    SIGNED,
    Manifest,
    find_tool,
    helm,
    load_yaml,
    one,
    render,
    render_text,
    run,
    template_args,
)

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources: kubernetes-validate has only the core API's schemas (see tests below).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "KafkaTopic", "KafkaUser"}
VARIANTS = {"defaults": None, "all-features": ALL_ON}


@pytest.fixture(scope="module")
def defaults() -> list[Manifest]:
    return render(SIGNED)


@pytest.fixture(scope="module")
def all_on() -> list[Manifest]:
    return render(values=ALL_ON)


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: list[Manifest]) -> dict[str, Any]:
    (bridge,) = pod_spec(manifests)["containers"]
    return bridge  # type: ignore[no-any-return]


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm_lint_is_clean(values: Path | None) -> None:
    extra: list[str | Path] = ["-f", values] if values else ["--set", SIGNED]
    helm("lint", "--strict", CHART, *extra)


@pytest.mark.parametrize("variant", VARIANTS.keys())
def test_manifests_validate_against_the_kubernetes_api(
    variant: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    manifests = defaults if variant == "defaults" else all_on
    unvalidated = set()
    for manifest in manifests:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unvalidated.add(manifest["kind"])
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{manifest['kind']} vs Kubernetes {version}: {where}: {exc.message}")
    # Only the known custom resources may go unvalidated, never a core kind by accident.
    assert unvalidated <= CRD_KINDS
    kinds = {m["kind"] for m in manifests}
    if variant == "all-features":
        assert kinds == {
            "Deployment", "Service", "ServiceAccount", "ConfigMap", "Secret", "Ingress",
            "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", *CRD_KINDS,
        }  # fmt: skip
    else:
        assert kinds == {
            "Deployment",
            "Service",
            "ServiceAccount",
            "ConfigMap",
            "PodDisruptionBudget",
        }


@pytest.mark.parametrize("variant", VARIANTS.keys())
def test_probes_liveness_never_depends_on_kafka(
    variant: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    bridge = container(defaults if variant == "defaults" else all_on)
    # On the admin port: a webhook port full of connections must not fail them.
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert bridge["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert bridge["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "admin", "containerPort": 8081, "protocol": "TCP"},
    ]


def test_without_an_admin_port_everything_is_on_the_webhook_port() -> None:
    manifests = render(SIGNED, "config.http.adminPort=null", values=ALL_ON)
    bridge = container(manifests)
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bridge["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert bridge["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert [p["name"] for p in one(manifests, "Service")["spec"]["ports"]] == ["http"]
    assert one(manifests, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http"
    policy = one(manifests, "NetworkPolicy")["spec"]
    assert [rule["ports"] for rule in policy["ingress"]] == [[{"port": "http", "protocol": "TCP"}]]
    assert "BRIDGE_HTTP__ADMIN_PORT" not in one(manifests, "ConfigMap", "pinecall-bridge")["data"]


@pytest.mark.parametrize("variant", VARIANTS.keys())
def test_pod_meets_the_restricted_pod_security_standard(
    variant: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    manifests = defaults if variant == "defaults" else all_on
    spec = pod_spec(manifests)
    assert pss.violations(spec) == []
    ctx = container(manifests)["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsUser"] == 10001
    # The one writable place is /tmp, an emptyDir with a size cap.
    mounts = {m["mountPath"]: m for m in container(manifests)["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp"
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"]
    assert spec["automountServiceAccountToken"] is False
    # No <SERVICE>_* variables injected: a Service named `bridge` would add BRIDGE_* ones.
    assert spec["enableServiceLinks"] is False


def test_the_restricted_check_itself_catches_violations() -> None:
    spec = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
    }
    assert len(pss.violations(spec)) == 7


@pytest.mark.parametrize("variant", VARIANTS.keys())
def test_rollouts_and_termination_never_drop_requests(
    variant: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    manifests = defaults if variant == "defaults" else all_on
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Each new pod rebalances the dedup group: the next is replaced only once it has settled.
    assert deployment["spec"]["minReadySeconds"] == 10
    spec = pod_spec(manifests)
    config = one(manifests, "ConfigMap", "pinecall-bridge")["data"]
    grace = float(config["BRIDGE_SHUTDOWN__GRACE_SECONDS"])
    pre_stop = container(manifests)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = pre_stop["sleep"]["seconds"]
    else:  # exec: the image's Python sleeps (no shell, no sleep binary needed)
        command = pre_stop["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        pause = int(command[2].rsplit("(", 1)[1].rstrip(")"))
    assert spec["terminationGracePeriodSeconds"] > pause + grace
    spread = spec["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {s["topologyKey"] for s in spread}


def test_the_wait_between_replaced_pods_is_a_value() -> None:
    deployment = one(render(SIGNED, "minReadySeconds=45"), "Deployment")
    assert deployment["spec"]["minReadySeconds"] == 45
    assert "progressDeadlineSeconds" not in deployment["spec"], "600 by default: the schema's limit"


def test_termination_grace_period_shorter_than_the_drain_is_refused() -> None:
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", "terminationGracePeriodSeconds=20",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "must exceed" in done.stderr


def test_a_service_port_equal_to_the_admin_port_is_refused() -> None:
    # The Service would list the port twice: Kubernetes refuses it ("Duplicate value").
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", "service.port=8081", check=False
    )  # fmt: skip
    assert done.returncode != 0
    assert "service.port (8081) must differ from config.http.adminPort" in done.stderr
    # Without an admin port, any service.port goes.
    render(SIGNED, "service.port=8081", "config.http.adminPort=null")


# Each way the pod runs worker processes under a supervisor (bridge/workers/parent.py), which
# kills the ones still running 3 s (GRACE_MARGIN_SECONDS) after the grace period.
SUPERVISED = {
    "workers": ("config.http.workers=2",),
    "one per CPU": ("config.http.workers=0", "resources.limits.cpu=2"),
    "own dedup process": ("config.dedup.ownProcess=true",),
}


def grace_period(*sets: str) -> int:
    period: int = pod_spec(render(SIGNED, *sets))["terminationGracePeriodSeconds"]
    return period


@pytest.mark.parametrize("sets", SUPERVISED.values(), ids=SUPERVISED.keys())
def test_termination_grace_period_leaves_the_worker_supervisor_its_margin(
    sets: tuple[str, ...],
) -> None:
    # preStop 5 s + grace 25 s: the supervisor kills stragglers at 33 s and must get to.
    assert grace_period(*sets) > 5 + 25 + 3
    assert grace_period(*sets, "terminationGracePeriodSeconds=34") == 34
    done = helm(
        "template", "x", CHART, "--set", SIGNED, *(f"--set={s}" for s in sets),
        "--set", "terminationGracePeriodSeconds=33", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "must exceed lifecycle.preStopSleepSeconds + config.shutdown.graceSeconds + 3" in (
        done.stderr
    )
    # One process has no supervisor: just past the pause and the grace is enough.
    assert grace_period("terminationGracePeriodSeconds=31") == 31


def test_termination_grace_period_outwaits_the_cut_stops_of_a_short_grace_period() -> None:
    # One process, grace 4 s: a quarter of it kept for Kafka client stops cut at their deadline,
    # which may run 1.5 s past it (a LeaveGroup among them); pause 5 s + 4 + 1.5, then the exit.
    assert overrun_seconds(4) == 1.5
    short = "config.shutdown.graceSeconds=4"
    assert grace_period(short) == 5 + 4 + 5
    assert grace_period(short, "terminationGracePeriodSeconds=12") == 12
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", short,
        "--set", "terminationGracePeriodSeconds=11", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "must exceed lifecycle.preStopSleepSeconds + config.shutdown.graceSeconds + 1.5" in (
        done.stderr
    )


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
@pytest.mark.parametrize("sets", SUPERVISED.values(), ids=SUPERVISED.keys())
def test_probes_outwait_the_pods_ask_of_every_worker(sets: tuple[str, ...], probe: str) -> None:
    # The worker a probe reaches asks every worker at once, each for up to ASK_TIMEOUT_SECONDS:
    # a probe giving up sooner restarts (or unreadies) a healthy pod under load.
    bridge = container(render(SIGNED, *sets))
    assert bridge[probe]["timeoutSeconds"] >= ASK_TIMEOUT_SECONDS + 1
    done = helm(
        "template", "x", CHART, "--set", SIGNED, *(f"--set={s}" for s in sets),
        "--set", f"{probe}.timeoutSeconds=1", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"{probe}.timeoutSeconds (1) must be at least 2" in done.stderr
    # One process answers its probes itself: a 1 s timeout is the operator's to choose.
    one_process = container(render(SIGNED, f"{probe}.timeoutSeconds=1"))
    assert one_process[probe]["timeoutSeconds"] == 1


# A restarted worker's start to its first answer: about 1 s measured on 2 shared cores; more
# on a throttled CPU.
WORKER_START_SECONDS = 5.0


@pytest.mark.parametrize("sets", SUPERVISED.values(), ids=SUPERVISED.keys())
def test_the_liveness_probe_outwaits_a_silent_workers_restart(sets: tuple[str, ...]) -> None:
    # The pod's /healthz fails from a worker's silence until its successor answers: the
    # watchdog's bound, its round (a probe's wait, an answer's), the restart pause, a start-up.
    # The kubelet restarts the pod (failureThreshold - 1) periods after the first failure, which
    # may come at once: with 3 failures (20 s), a repeated restart's pause raced it.
    manifests = render(SIGNED, *sets)
    probe = container(manifests)["livenessProbe"]
    env = one(manifests, "ConfigMap", "pinecall-bridge")["data"]
    silence = float(env["BRIDGE_HTTP__WORKER_SILENCE_SECONDS"])
    round_s = PROBE_EVERY_SECONDS + ASK_TIMEOUT_SECONDS
    failing = silence + round_s + MAX_DELAY_SECONDS + WORKER_START_SECONDS
    assert (probe["failureThreshold"] - 1) * probe["periodSeconds"] >= failing


def kubelet_kills_after(probe: dict[str, Any]) -> int:
    """The least time from a container's start to the kubelet restarting it for `probe`'s
    failures: the first probe may come at initialDelaySeconds, then one every period."""
    delay, period = int(probe.get("initialDelaySeconds", 0)), int(probe["periodSeconds"])
    return delay + (int(probe["failureThreshold"]) - 1) * period


# The supervisor's own start-up before it spawns the workers: about 0.5 s of CPU, 5 s at 100m.
PARENT_START_SECONDS = 5.0
STARTS = {"one process": (), **SUPERVISED}


@pytest.mark.parametrize("sets", STARTS.values(), ids=STARTS.keys())
def test_a_throttled_start_up_is_not_restarted_by_the_kubelet(sets: tuple[str, ...]) -> None:
    # At the chart's 100m CPU request on a busy node, /healthz first answered after 4.9 s for
    # one process, 15 s with ownProcess, 29 s with 4 workers and 41 s with 6 (spawn to 200):
    # the liveness probe alone restarts a pod not answering yet 35-45 s in, the last at each
    # start. The supervisor gives each worker START_UP_SECONDS from its spawn: so must the kubelet.
    bridge = container(render(SIGNED, *sets))
    assert "startupProbe" in bridge, "a slow start-up is judged by the liveness probe"
    assert kubelet_kills_after(bridge["startupProbe"]) >= START_UP_SECONDS + PARENT_START_SECONDS


def test_a_null_startup_probe_renders_none() -> None:
    # An operator's choice (the liveness probe alone), with worker processes too.
    bridge = container(render(SIGNED, "startupProbe=null", "config.http.workers=2"))
    assert "startupProbe" not in bridge
    assert bridge["livenessProbe"]["timeoutSeconds"] == 2


def test_one_worker_per_cpu_needs_a_cpu_limit() -> None:
    # Without one, the count is the cores of whichever node the pod lands on (up to 64).
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", "config.http.workers=0", check=False
    )
    assert done.returncode != 0
    assert "config.http.workers=0 needs resources.limits.cpu" in done.stderr
    config = one(
        render(SIGNED, "config.http.workers=0", "resources.limits.cpu=4"),
        "ConfigMap",
        "pinecall-bridge",
    )
    assert config["data"]["BRIDGE_HTTP__WORKERS"] == "0"


@pytest.mark.parametrize("variant", VARIANTS.keys())
def test_unready_pods_never_block_a_node_drain(
    variant: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    # Pods that cannot reach Kafka stay unready (and alive) for good: with Kubernetes' default
    # policy the budget would then refuse every eviction, and node drains hang.
    budget = one(defaults if variant == "defaults" else all_on, "PodDisruptionBudget")["spec"]
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    kept = one(
        render(SIGNED, "podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget"),
        "PodDisruptionBudget",
    )
    assert kept["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"


@pytest.mark.parametrize("cpu", ["100m", "0.25", "", None])
def test_autoscaling_on_a_small_cpu_request_is_refused(cpu: str | None) -> None:
    request = [] if cpu is None else ["--set-string", f"resources.requests.cpu={cpu}"]
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", "autoscaling.enabled=true", *request,
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "needs resources.requests.cpu of at least 500m" in done.stderr


@pytest.mark.parametrize("cpu", ["500m", "0.5", "2"])
def test_autoscaling_scales_in_one_pod_at_a_time_after_a_window(cpu: str) -> None:
    hpa = one(
        render(SIGNED, "autoscaling.enabled=true", f"resources.requests.cpu={cpu}"),
        "HorizontalPodAutoscaler",
    )
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 600
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]


@pytest.mark.parametrize(
    ("interval", "timeout"), [("10s", "15s"), ("1m", "1m30s"), ("500ms", "1s"), ("1m", "1h")]
)
def test_a_scrape_timeout_longer_than_the_interval_is_refused(interval: str, timeout: str) -> None:
    # Rendered, Prometheus alone would refuse it: the bridge unscraped, its alerts silent.
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", "serviceMonitor.enabled=true",
        "--set", f"serviceMonitor.interval={interval}",
        "--set", f"serviceMonitor.scrapeTimeout={timeout}", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        f"serviceMonitor.scrapeTimeout ({timeout}) must not exceed serviceMonitor.interval"
        f" ({interval})" in done.stderr
    )


@pytest.mark.parametrize(
    ("interval", "timeout"), [("30s", "30s"), ("1m30s", "1m"), ("1m", "59s999ms"), ("2h", "1h")]
)
def test_a_scrape_timeout_within_the_interval_is_rendered(interval: str, timeout: str) -> None:
    sets = (
        "serviceMonitor.enabled=true",
        f"serviceMonitor.interval={interval}",
        f"serviceMonitor.scrapeTimeout={timeout}",
    )
    monitor = one(render(SIGNED, *sets), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)


@pytest.mark.parametrize(
    ("sets", "short"),
    [
        # A window of half adminConnectionsRefusedMinutes at the default 30 s scrape: one sample.
        (
            ["alerts.adminConnectionsRefusedMinutes=1"],
            "PinecallBridgeAdminConnectionsRefused [30s]",
        ),
        (
            ["alerts.publishStalledMinutes=1", "serviceMonitor.interval=45s"],
            "PinecallBridgeDedupStalled [1m]",
        ),
        # The rules' own shortest ranges, fixed: DedupRestoreSlow's rate over 2 minutes and
        # DedupFetchesUnanswered's last age of 2 minutes, which fires on one scrape but bridges
        # no scrape that finds no series.
        (["serviceMonitor.interval=61s"], "PinecallBridgeDedupRestoreSlow [2m]"),
        (["serviceMonitor.interval=61s"], "last_over_time() to bridge a scrape"),
        (["serviceMonitor.interval=61s"], "(a [2m] range is fixed)"),
        (["serviceMonitor.interval=5m"], "PinecallBridgeWebSocketDown [5m]"),
    ],
)
def test_alert_ranges_of_fewer_than_two_scrapes_are_refused(sets: list[str], short: str) -> None:
    # rate() and increase() over a range holding one scrape have no value: the alert never fires.
    on = ("prometheusRule.enabled=true", "serviceMonitor.enabled=true", *sets)
    done = helm(
        "template", "x", CHART, "--set", SIGNED, *(f"--set={s}" for s in on), check=False
    )  # fmt: skip
    assert done.returncode != 0
    assert "leaves these alert rules' ranges fewer than two scrapes" in done.stderr
    assert short in done.stderr


@pytest.mark.parametrize(
    "sets",
    [
        ["serviceMonitor.interval=1m"],
        ["alerts.adminConnectionsRefusedMinutes=2"],
        # Without the chart's ServiceMonitor the scrape interval is not the chart's to know.
        ["serviceMonitor.enabled=false", "serviceMonitor.interval=10m"],
    ],
)
def test_alert_ranges_of_two_scrapes_or_more_are_rendered(sets: list[str]) -> None:
    on = ("prometheusRule.enabled=true", "serviceMonitor.enabled=true", *sets)
    one(render(SIGNED, *on), "PrometheusRule")


@pytest.mark.parametrize("duration", ["30", "1.5s", "10 s", ""])
def test_a_scrape_duration_prometheus_cannot_read_is_refused(duration: str) -> None:
    done = helm(
        "template", "x", CHART, "--set", SIGNED, "--set", "serviceMonitor.enabled=true",
        "--set-string", f"serviceMonitor.interval={duration}", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "/serviceMonitor/interval" in done.stderr


def test_autoscaling_minimum_above_its_maximum_is_refused() -> None:
    # The API server refuses such an HPA only at apply time, after the rest of the release.
    sets = ("autoscaling.enabled=true", "resources.requests.cpu=1", "autoscaling.maxReplicas=3")
    done = helm(
        "template", "x", CHART, "--set", SIGNED, *(f"--set={s}" for s in sets),
        "--set", "autoscaling.minReplicas=4", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "autoscaling.minReplicas (4) must not exceed autoscaling.maxReplicas (3)" in done.stderr
    hpa = one(render(SIGNED, *sets, "autoscaling.minReplicas=3"), "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 3)


def test_a_pod_budget_of_a_percentage_is_kept() -> None:
    budget = one(render(SIGNED, "podDisruptionBudget.maxUnavailable=25%"), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == "25%"


def env_refs(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(manifests).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


SECRETS_DIR = "/etc/pinecall-bridge/secrets"


def file_refs(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    """The secret settings mounted as files: file name (the variable) -> where from."""
    volume = next((v for v in pod_spec(manifests)["volumes"] if v["name"] == "secrets"), None)
    if volume is None:
        return {}
    refs = {}
    for source in volume["projected"]["sources"]:
        secret = source["secret"]
        (item,) = secret["items"]
        refs[item["path"]] = {"name": secret["name"], "key": item["key"]} | (
            {"optional": True} if secret.get("optional") else {}
        )
    return refs


# all-features: each from existingSecret (optional: whichever keys it has), but the SASL
# password from its own secretName (the Strimzi KafkaUser's Secret): required.
ALL_ON_SECRET_REFS = {
    "BRIDGE_WEBHOOK__SECRETS": {
        "name": "pinecall-bridge-secrets", "key": "webhook-secrets", "optional": True,
    },
    "BRIDGE_PINECALL__API_KEY": {
        "name": "pinecall-bridge-secrets", "key": "pinecall-api-key", "optional": True,
    },
    "BRIDGE_KAFKA__SSL_KEY_PASSWORD": {
        "name": "pinecall-bridge-secrets", "key": "kafka-ssl-key-password", "optional": True,
    },
    "BRIDGE_KAFKA__SASL_PASSWORD": {"name": "pinecall-bridge", "key": "password"},
}  # fmt: skip


def test_secrets_are_files_of_a_read_only_volume_by_default(all_on: list[Manifest]) -> None:
    # Not variables: those show in `kubectl describe`, /proc/<pid>/environ and child processes.
    assert env_refs(all_on) == {}
    assert file_refs(all_on) == ALL_ON_SECRET_REFS
    volume = next(v for v in pod_spec(all_on)["volumes"] if v["name"] == "secrets")
    assert volume["projected"]["defaultMode"] == 0o440  # the bridge reads it by the fsGroup
    assert pod_spec(all_on)["securityContext"]["fsGroup"] == 10001
    mount = next(m for m in container(all_on)["volumeMounts"] if m["name"] == "secrets")
    assert mount == {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}
    assert container(all_on)["securityContext"]["readOnlyRootFilesystem"] is True
    config = one(all_on, "ConfigMap", "pinecall-bridge")["data"]
    assert config["BRIDGE_SECRETS_DIR"] == SECRETS_DIR


def test_secrets_as_variables_when_asked() -> None:
    manifests = render("secrets.asFiles=false", values=ALL_ON)
    assert env_refs(manifests) == ALL_ON_SECRET_REFS
    assert file_refs(manifests) == {}
    assert "secrets" not in {m["name"] for m in container(manifests)["volumeMounts"]}
    config = one(manifests, "ConfigMap", "pinecall-bridge")["data"]
    assert "BRIDGE_SECRETS_DIR" not in config


def test_no_secrets_volume_without_a_secret() -> None:
    manifests = render(GROUP, "config.webhook.allowUnsigned=true")
    assert file_refs(manifests) == {}
    assert env_refs(manifests) == {}
    assert "BRIDGE_SECRETS_DIR" not in one(manifests, "ConfigMap", "pinecall-bridge")["data"]


def test_a_secret_extra_env_sets_is_not_also_a_file() -> None:
    # The bridge refuses a secret set both ways; extraEnv, last, wins as it did as a variable.
    manifests = render(
        GROUP,
        "secrets.existingSecret=mine",
        "extraEnv[0].name=BRIDGE_WEBHOOK__SECRETS,extraEnv[0].value=s3cret",
    )
    assert set(file_refs(manifests)) == {
        "BRIDGE_PINECALL__API_KEY", "BRIDGE_KAFKA__SASL_PASSWORD", "BRIDGE_KAFKA__SSL_KEY_PASSWORD",
    }  # fmt: skip


def test_a_secret_extra_env_sets_is_not_also_a_variable() -> None:
    # One name twice in env: the API server keeps the last, and `helm upgrade`'s strategic merge
    # patch of the list (keyed by name) fails or drops both.
    manifests = render(
        SIGNED, "secrets.asFiles=false",
        "extraEnv[0].name=BRIDGE_WEBHOOK__SECRETS,extraEnv[0].value=s3cret",
    )  # fmt: skip
    names = [e["name"] for e in container(manifests)["env"]]
    assert len(names) == len(set(names)), names
    assert {"name": "BRIDGE_WEBHOOK__SECRETS", "value": "s3cret"} in container(manifests)["env"]
    assert "BRIDGE_WEBHOOK__SECRETS" not in env_refs(manifests)


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        # The pod's name: one fixed id for every pod, and they fence each other.
        ("BRIDGE_DEDUP__INSTANCE_ID", "from the pod's name"),
        # The bridge would drain for 120 s in a pod the kubelet kills after 35.
        ("BRIDGE_SHUTDOWN__GRACE_SECONDS", "from config.shutdown.graceSeconds"),
        ("BRIDGE_HTTP__WORKERS", "from config.http.workers"),
    ],
)
def test_extra_env_overriding_what_the_chart_sets_is_refused(name: str, complaint: str) -> None:
    done = helm(
        "template", "x", CHART, "--set", SIGNED,
        "--set", f"extraEnv[0].name={name},extraEnv[0].value=120", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"extraEnv sets {name}, which the chart sets {complaint}" in done.stderr


def test_extra_env_setting_a_name_twice_is_refused() -> None:
    done = helm(
        "template", "x", CHART, "--set", SIGNED,
        "--set", "extraEnv[0].name=TZ,extraEnv[0].value=UTC",
        "--set", "extraEnv[1].name=TZ,extraEnv[1].value=CET", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "extraEnv sets TZ more than once" in done.stderr


def test_extra_env_may_set_a_setting_nulled_in_config(tmp_path: Path) -> None:
    # Not in the ConfigMap, so extraEnv is its only source (say a valueFrom of another ConfigMap).
    values = tmp_path / "values.yaml"
    values.write_text(
        "config: {kafka: {lingerMs: null}}\n"
        "extraEnv: [{name: BRIDGE_KAFKA__LINGER_MS, value: '20'}]\n"
    )
    manifests = render(SIGNED, values=values)
    assert "BRIDGE_KAFKA__LINGER_MS" not in one(manifests, "ConfigMap", "pinecall-bridge")["data"]
    assert {"name": "BRIDGE_KAFKA__LINGER_MS", "value": "20"} in container(manifests)["env"]


def test_extra_volumes_are_mounted_after_the_charts_own(all_on: list[Manifest]) -> None:
    # all-features mounts a private CA from a ConfigMap for SSL_CERT_FILE (README, "Extra files").
    volumes = [v["name"] for v in pod_spec(all_on)["volumes"]]
    assert volumes == ["tmp", "kafka-tls", "secrets", "corporate-ca"]
    assert pod_spec(all_on)["volumes"][-1] == {
        "name": "corporate-ca",
        "configMap": {"name": "corporate-ca"},
    }
    mounts = container(all_on)["volumeMounts"]
    assert [m["name"] for m in mounts] == ["tmp", "kafka-tls", "secrets", "corporate-ca"]
    assert mounts[-1] == {
        "name": "corporate-ca",
        "mountPath": "/etc/ssl/corporate-ca",
        "readOnly": True,
    }
    env = {e["name"]: e.get("value") for e in container(all_on)["env"]}
    assert env["SSL_CERT_FILE"] == "/etc/ssl/corporate-ca/ca-bundle.pem"


def test_a_kafka_ca_mounted_from_a_config_map_renders(tmp_path: Path) -> None:
    # kafkaTls reads Secrets only: a CA a ConfigMap holds comes through extraVolumes/extraEnv.
    values = tmp_path / "values.yaml"
    values.write_text(
        "config: {kafka: {securityProtocol: SSL}}\n"
        "extraVolumes: [{name: kafka-ca, configMap: {name: kafka-ca-bundle}}]\n"
        "extraVolumeMounts: [{name: kafka-ca, mountPath: /etc/pinecall-bridge/kafka-ca}]\n"
        "extraEnv: [{name: BRIDGE_KAFKA__SSL_CAFILE, value: /etc/pinecall-bridge/kafka-ca/c.pem}]\n"
    )
    manifests = render(SIGNED, values=values)
    assert "kafka-ca" in [m["name"] for m in container(manifests)["volumeMounts"]]
    assert "BRIDGE_KAFKA__SSL_CAFILE" not in one(manifests, "ConfigMap", "pinecall-bridge")["data"]
    assert pss.violations(pod_spec(manifests)) == []


VOLUME = "extraVolumes[0].name=extra,extraVolumes[0].emptyDir.medium=Memory"


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        # The chart's own volumes: replaced in the pod (or refused by the API server as twice).
        (
            ("extraVolumes[0].name=secrets,extraVolumes[0].emptyDir.medium=Memory",),
            'extraVolumes: "secrets" is the name of one of the chart\'s own volumes',
        ),
        ((VOLUME, "extraVolumes[1].name=extra,extraVolumes[1].emptyDir.medium=Memory"),
         'extraVolumes: "extra" is named twice'),
        # Over, under or above a path the chart mounts: its files hidden, or files added to the
        # secrets directory the bridge reads as settings.
        ((VOLUME, "extraVolumeMounts[0].name=extra,extraVolumeMounts[0].mountPath=/tmp"),
         "/tmp would hide or change what the chart mounts at /tmp"),
        ((VOLUME, "extraVolumeMounts[0].name=extra,extraVolumeMounts[0].mountPath=/tmp/ca/"),
         "/tmp/ca would hide or change what the chart mounts at /tmp"),
        (
            (VOLUME, "extraVolumeMounts[0].name=extra,"
             "extraVolumeMounts[0].mountPath=/etc/pinecall-bridge/secrets/BRIDGE_HTTP__PORT"),
            "would hide or change what the chart mounts at /etc/pinecall-bridge/secrets",
        ),
        ((VOLUME, "extraVolumeMounts[0].name=extra,extraVolumeMounts[0].mountPath=/etc"),
         "/etc would hide or change what the chart mounts at /etc/pinecall-bridge/kafka-tls"),
        ((VOLUME, "extraVolumeMounts[0].name=extra,extraVolumeMounts[0].mountPath=/"),
         "/ would hide or change what the chart mounts at /tmp"),
        ((VOLUME, "extraVolumeMounts[0].name=other,extraVolumeMounts[0].mountPath=/etc/x"),
         '/etc/x mounts "other", which is no volume of extraVolumes'),
        ((VOLUME, "extraVolumeMounts[0].name=tmp,extraVolumeMounts[0].mountPath=/etc/x"),
         '/etc/x mounts "tmp", which is no volume of extraVolumes'),
        (
            (VOLUME, "extraVolumeMounts[0].name=extra,extraVolumeMounts[0].mountPath=/etc/x",
             "extraVolumeMounts[1].name=extra,extraVolumeMounts[1].mountPath=/etc/x/"),
            "extraVolumeMounts: /etc/x is mounted more than once",
        ),
    ],
)  # fmt: skip
def test_extra_volumes_clashing_with_the_charts_own_are_refused(
    sets: tuple[str, ...], complaint: str
) -> None:
    args: list[str | Path] = ["template", "x", CHART, "--set", SIGNED]
    for item in sets:
        args += ["--set", item]
    done = helm(*args, check=False)
    assert done.returncode != 0
    assert "would clash with the chart's own" in done.stderr
    assert complaint in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        # The restricted Pod Security Standard refuses these at admission: never a pod.
        ("extraVolumes[0].hostPath.path=/etc", "additional properties 'hostPath' not allowed"),
        ("extraVolumes[0].nfs.server=nfs", "additional properties 'nfs' not allowed"),
        # One source a volume: the API server refuses two.
        (
            "extraVolumes[0].emptyDir.medium=Memory,extraVolumes[0].configMap.name=c",
            "/extraVolumes/0': maxProperties",
        ),
    ],
)
def test_extra_volumes_the_restricted_standard_refuses_are_refused(
    bad: str, complaint: str
) -> None:
    done = helm(
        "template", "x", CHART, "--set", SIGNED,
        "--set", f"extraVolumes[0].name=extra,{bad}", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert complaint in done.stderr, done.stderr


@pytest.mark.parametrize("kind", sorted(pss.RESTRICTED_VOLUMES))
def test_every_volume_type_the_restricted_standard_allows_is_accepted(
    kind: str, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"extraVolumes": [{"name": "extra", kind: {}}]}))
    assert pss.violations(pod_spec(render(SIGNED, values=values))) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_dedup_instance_id_is_the_pods_name(
    variant: str, defaults: list[Manifest], all_on: list[Manifest]
) -> None:
    # A container restarted in its pod keeps the transactional id, so it aborts at once what
    # the crashed one left open; a replacement pod has a name (and id) of its own.
    manifests = defaults if variant == "defaults" else all_on
    env = {e["name"]: e for e in container(manifests)["env"]}
    assert env["BRIDGE_DEDUP__INSTANCE_ID"] == {
        "name": "BRIDGE_DEDUP__INSTANCE_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    config = one(manifests, "ConfigMap", "pinecall-bridge")["data"]
    assert "BRIDGE_DEDUP__INSTANCE_ID" not in config  # one value for every pod would fence


def test_secrets_come_from_secrets_only(all_on: list[Manifest]) -> None:
    refs = file_refs(all_on)
    assert refs == ALL_ON_SECRET_REFS
    config = one(all_on, "ConfigMap", "pinecall-bridge")["data"]
    assert not set(refs) & set(config), "a secret setting is also in the ConfigMap"
    # TLS material: files from the CA Secret and from the chart-created Secret, read-only.
    tls = next(v for v in pod_spec(all_on)["volumes"] if v["name"] == "kafka-tls")
    sources = [(s["secret"]["name"], s["secret"]["items"][0]) for s in tls["projected"]["sources"]]
    assert sources == [
        ("my-cluster-cluster-ca-cert", {"key": "ca.crt", "path": "ca.crt"}),
        ("pinecall-bridge-secret", {"key": "client.crt", "path": "client.crt"}),
        ("pinecall-bridge-secret", {"key": "client.key", "path": "client.key"}),
    ]
    assert config["BRIDGE_KAFKA__SSL_CAFILE"] == "/etc/pinecall-bridge/kafka-tls/ca.crt"
    secret = one(all_on, "Secret")
    assert set(secret["data"]) == {"client.crt", "client.key"}
    # Not the KafkaUser's name: Strimzi writes that Secret.
    assert secret["metadata"]["name"] != one(all_on, "KafkaUser")["metadata"]["name"]


@pytest.mark.parametrize("length", [15, 56, 57, 62, 63])
def test_the_chart_secret_never_takes_the_kafka_users_name(length: int) -> None:
    # A full name of 62 or 63 characters, cut with its "-secret" suffix at 63 (and the dash
    # trimmed), gave the chart's Secret the KafkaUser's name: Strimzi's User Operator writes
    # that Secret, dropping the chart's keys.
    name = ("pinecall-bridge-" + "x" * 63)[:length]
    manifests = render(f"fullnameOverride={name}", values=ALL_ON)
    secret = one(manifests, "Secret")["metadata"]["name"]
    assert secret != one(manifests, "KafkaUser")["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", secret), secret


def test_secret_values_never_appear_outside_the_secret() -> None:
    marker = "never-in-plain-text-{}"
    items = ["webhookSecrets", "kafkaSaslPassword", "kafkaSslKeyPassword", "pinecallApiKey"]
    sets = [f"secrets.{item}.value={marker.format(item)}" for item in items]
    # The settings those secrets go with (the chart refuses a password the bridge would ignore).
    sets += [
        "config.kafka.securityProtocol=SASL_SSL",
        "config.kafka.saslUsername=bridge",
        "kafkaTls.cert.secretName=client-cert",
        "kafkaTls.key.secretName=client-cert",
    ]
    manifests = render(GROUP, *sets)
    secret = one(manifests, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert sorted(decoded.values()) == sorted(marker.format(item) for item in items)
    for manifest in manifests:
        if manifest["kind"] != "Secret":
            assert "never-in-plain-text" not in str(manifest), manifest["kind"]
    assert set(file_refs(manifests)) == {
        "BRIDGE_WEBHOOK__SECRETS", "BRIDGE_KAFKA__SASL_PASSWORD",
        "BRIDGE_KAFKA__SSL_KEY_PASSWORD", "BRIDGE_PINECALL__API_KEY",
    }  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        "config.kafka.saslPassword=oops",
        "config.webhook.secrets=oops",
        "config.pinecall.apiKey=oops",
    ],
)
def test_secret_settings_are_refused_under_config(bad: str) -> None:
    done = helm("template", "x", CHART, "--set", bad, check=False)
    assert done.returncode != 0
    assert "not allowed" in done.stderr, done.stderr
    # Even with the schema skipped, the templates refuse them.
    done = helm(
        "template", "x", CHART, "--skip-schema-validation", "--set", SIGNED, "--set", bad,
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "never in the ConfigMap" in done.stderr, done.stderr


def test_an_oauthbearer_token_is_projected_and_named_to_the_bridge() -> None:
    """A token of the pod's service account for the audience, renewed by the kubelet, read
    from the file BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE names; the pod still restricted."""
    manifests = render(
        SIGNED,
        "config.kafka.securityProtocol=SASL_SSL",
        "config.kafka.saslMechanism=OAUTHBEARER",
        "serviceAccount.kafkaOauthAudience=kafka.example.com",
        "serviceAccount.kafkaOauthTokenSeconds=1800",
    )
    spec = pod_spec(manifests)
    [volume] = [v for v in spec["volumes"] if v["name"] == "kafka-oauth"]
    assert volume["projected"]["sources"] == [
        {
            "serviceAccountToken": {
                "audience": "kafka.example.com",
                "expirationSeconds": 1800,
                "path": "token",
            }
        }
    ]
    [mount] = [m for m in container(manifests)["volumeMounts"] if m["name"] == "kafka-oauth"]
    assert mount == {
        "name": "kafka-oauth",
        "mountPath": "/etc/pinecall-bridge/kafka-oauth",
        "readOnly": True,
    }
    env = one(manifests, "ConfigMap")["data"]
    assert env["BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE"] == "/etc/pinecall-bridge/kafka-oauth/token"
    assert env["BRIDGE_KAFKA__SASL_MECHANISM"] == "OAUTHBEARER"
    assert pss.violations(spec) == []
    # Without an audience, no token is mounted: the bridge never calls the Kubernetes API.
    plain = pod_spec(render(SIGNED))
    assert "kafka-oauth" not in [v["name"] for v in plain["volumes"]]


def checksum(*sets: str) -> str:
    deployment = one(render(GROUP, *sets), "Deployment")
    value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def test_config_and_secret_changes_roll_the_pods() -> None:
    signed = "secrets.webhookSecrets.value=s3cret"
    base = checksum(signed)
    assert checksum(signed, "config.log.level=DEBUG") != base
    assert checksum("secrets.webhookSecrets.value=rotated") != base
    assert checksum(signed, "replicaCount=5") == base, "scaling is not a configuration change"


def test_service_ingress_and_friends(all_on: list[Manifest]) -> None:
    labels = one(all_on, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selected = one(all_on, "Service")["spec"]
    assert selected["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        {"name": "admin", "port": 8081, "targetPort": "admin", "protocol": "TCP"},
    ]
    assert selected["selector"].items() <= labels.items()
    (rule,) = one(all_on, "Ingress")["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/webhooks/pinecall", "Exact"), "webhooks only"
    assert (
        one(all_on, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items()
        <= labels.items()
    )
    assert (
        one(all_on, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == "pinecall-bridge"
    )
    assert "replicas" not in one(all_on, "Deployment")["spec"], "the HPA owns the replica count"
    policy = one(all_on, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["egress"]]
    assert egress_ports == [{9092, 9093}, {53}, {443}], "Kafka, DNS, the Pinecall API"
    ingress_ports = [[p["port"] for p in rule["ports"]] for rule in policy["ingress"]]
    assert ingress_ports == [["http"], ["admin"]], "the webhook port, the admin port"
    monitor = one(all_on, "ServiceMonitor")["spec"]
    assert monitor["endpoints"][0]["port"] == "admin", "scraped where a full port cannot refuse"
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert (
        monitor["selector"]["matchLabels"].items()
        <= one(all_on, "Service")["metadata"]["labels"].items()
    )
    dashboard = one(all_on, "ConfigMap", "pinecall-bridge-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"


def test_the_network_policy_lets_the_pinecall_api_be_reached_over_ipv6_too() -> None:
    # The chart takes IPv6-only clusters (config.http.host "::"): there an IPv4-only allow-list
    # blocked the feed, the call logs and registration as soon as the policy was on.
    policy = one(render(SIGNED, "networkPolicy.enabled=true"), "NetworkPolicy")["spec"]
    api = next(rule for rule in policy["egress"] if rule["ports"][0]["port"] == 443)
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in api["to"]}
    assert blocks == {
        "0.0.0.0/0": {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"},
        "::/0": {"fc00::/7", "fe80::/10"},
    }, "public addresses of either family, no private ones"


def test_the_network_policy_lets_dns_reach_the_node_local_resolvers_too() -> None:
    # Pods pointed at NodeLocal DNSCache (GKE Autopilot's default) or GKE's Cloud DNS resolve
    # at a link-local address no pod selector matches: only kube-dns allowed, every lookup was
    # dropped and the bridge never reached Kafka.
    policy = one(render(SIGNED, "networkPolicy.enabled=true"), "NetworkPolicy")["spec"]
    dns = next(rule for rule in policy["egress"] if rule["ports"][0]["port"] == 53)
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
        {"ipBlock": {"cidr": "169.254.20.10/32"}},
        {"ipBlock": {"cidr": "169.254.169.254/32"}},
    ]


def refused_with_policy(sets: tuple[str, ...]) -> str:
    """helm's error for a render of `sets` (with SIGNED) that must fail."""
    done = helm(
        "template", "x", CHART, "--set", SIGNED, *(f"--set={s}" for s in sets), check=False
    )  # fmt: skip
    assert done.returncode != 0
    return done.stderr


# As --set takes them: one server, a comma-separated string, a list.
@pytest.mark.parametrize("servers", ["kafka-bootstrap:9094", r"a:9092\,b:9094", "{a:9092,b:9094}"])
def test_a_network_policy_blocking_the_bootstrap_servers_is_refused(servers: str) -> None:
    # The pods would never reach Kafka and stay unready for good, with nothing saying why.
    sets = ("networkPolicy.enabled=true", f"config.kafka.bootstrapServers={servers}")
    error = refused_with_policy(sets)
    assert "networkPolicy.kafka.ports [9092,9093] leaves out the port of" in error
    assert "(add 9094," in error
    # Named by its position, never quoted: a server may hold a password (refused with the rest).
    assert "b:9094" not in error
    assert "kafka-bootstrap" not in error
    opened = one(render(SIGNED, *sets, "networkPolicy.kafka.ports={9092,9094}"), "NetworkPolicy")
    assert {p["port"] for p in opened["spec"]["egress"][0]["ports"]} == {9092, 9094}
    # Without the policy there is nothing to open.
    render(SIGNED, f"config.kafka.bootstrapServers={servers}")


@pytest.mark.parametrize(
    ("sets", "where", "port"),
    [
        (("config.websocket.enabled=true", "config.websocket.url=wss://proxy:8443/v1/ws"),
         "config.websocket.url (8443)", 8443),
        (("config.sse.enabled=true", "config.pinecall.apiUrl=https://proxy:8443/S3CRET"),
         "config.pinecall.apiUrl (8443)", 8443),
        (("config.sse.enabled=true", "config.pinecall.allowInsecureUrls=true",
          "config.pinecall.apiUrl=http://stand-in"),
         "config.pinecall.apiUrl (80)", 80),
    ],
)  # fmt: skip
def test_a_network_policy_blocking_the_pinecall_api_is_refused(
    sets: tuple[str, ...], where: str, port: int
) -> None:
    # The feed and call logs would retry for good (registration never take), nothing saying why.
    sets = ("networkPolicy.enabled=true", *sets)
    error = refused_with_policy(sets)
    assert f"networkPolicy.pinecallApi.ports [443] leaves out the port of {where}" in error
    assert f"(add {port})" in error
    # Never the URL itself: it may hold a password or a token.
    assert "S3CRET" not in error
    assert sets[-1].partition("=")[2] not in error
    opened = one(
        render(SIGNED, *sets, f"networkPolicy.pinecallApi.ports={{443,{port}}}"), "NetworkPolicy"
    )
    assert {p["port"] for p in opened["spec"]["egress"][2]["ports"]} == {443, port}
    # Nothing reaches the API (no feed, call logs nor registration): nothing to open.
    render(SIGNED, "networkPolicy.enabled=true", *(s for s in sets if "url" in s.lower()))


@pytest.mark.parametrize(
    ("sets", "refusal", "unquoted"),
    [
        # Its port out of range (or no number): refused with the rest, not as a port to open first.
        pytest.param(
            ("config.sse.enabled=true", "config.pinecall.apiUrl=https://proxy:99999"),
            "config.pinecall.apiUrl has a port that is not a number from 0 to 65535",
            "proxy:99999",
            id="url-port-out-of-range",
        ),
        # Its port not opened either: refused for its credentials with the rest, never quoted.
        pytest.param(
            ("config.kafka.bootstrapServers=u:S3CRET@kafka:9094",),
            "config.kafka.bootstrapServers: the server is given with credentials",
            "S3CRET",
            id="server-with-credentials",
        ),
    ],
)
def test_a_network_policy_leaves_what_the_bridge_refuses_to_the_listing(
    sets: tuple[str, ...], refusal: str, unquoted: str
) -> None:
    sets = ("networkPolicy.enabled=true", *sets)
    error = refused_with_policy(sets)
    assert refusal in error
    assert "leaves out the port" not in error
    assert unquoted not in error


def acl_set(manifests: list[Manifest]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """The KafkaUser's ACLs as (type, name, patternType, operations)."""
    return {
        (
            acl["resource"]["type"],
            acl["resource"].get("name", ""),
            acl["resource"].get("patternType", ""),
            tuple(acl["operations"]),
        )
        for acl in one(manifests, "KafkaUser")["spec"]["authorization"]["acls"]
    }


def test_the_dedup_group_is_required_saying_what_to_keep_and_what_else_to_choose() -> None:
    # A default for every release made two releases on one Kafka cluster one deployment: one
    # group and one ingest topic (each deciding the other's events into the topics the receiver
    # chose), and one lease group (one feed reader for both). One derived from the release would
    # move an existing release to a group with no committed offsets (output again: README).
    done = helm(
        "template", "staging", CHART, "--namespace", "team-a",
        "--set", "secrets.existingSecret=s", check=False,
    )  # fmt: skip
    assert done.returncode != 0, "rendered without a dedup group"
    assert "config.dedup.group is required" in done.stderr
    assert "set config.dedup.group=pinecall-bridge" in done.stderr  # an existing release's
    assert "e.g. team-a-staging-pinecall-bridge" in done.stderr  # a new one's
    assert "config.topics.ingest of its own" in done.stderr
    # Set, it is the bridge's group and names the KafkaUser's groups and transactional ids.
    manifests = render(
        "secrets.existingSecret=s", "config.dedup.group=team-a-staging", "strimzi.enabled=true"
    )
    assert one(manifests, "ConfigMap", "pinecall-bridge")["data"]["BRIDGE_DEDUP__GROUP"] == (
        "team-a-staging"
    )
    acls = {(t, name) for t, name, _, _ in acl_set(manifests) if t in {"group", "transactionalId"}}
    assert acls == {
        ("group", "team-a-staging"),
        ("group", "team-a-staging-feed-lease"),
        ("transactionalId", "team-a-staging-dedup-"),
    }


def test_kafka_user_has_exactly_the_acls_the_bridge_needs(all_on: list[Manifest]) -> None:
    topics = [
        "pinecall.events",
        "pinecall.alerts",
        "pinecall.dlq",
        "pinecall.ephemeral",
        "pinecall.metrics",
    ]
    # config.topics.create=false: no Create, no cluster Describe (only used to create topics).
    # DescribeConfigs: the topics' max.message.bytes, and the configs a restore depends on; on
    # the cluster, the broker configs the bridge reads (socket.request.max.bytes,
    # transactional.id.expiration.ms, transaction.max.timeout.ms).
    outputs = ("Write", "Describe", "DescribeConfigs")
    assert acl_set(all_on) == {("topic", t, "literal", outputs) for t in topics} | {
        ("topic", "pinecall.ingest", "literal", ("Read", "Write", "Describe", "DescribeConfigs")),
        ("topic", "pinecall.feed-lease", "literal", ("Read", "Describe")),
        ("group", "pinecall-bridge", "literal", ("Read",)),
        ("group", "pinecall-bridge-feed-lease", "literal", ("Read",)),
        ("transactionalId", "pinecall-bridge-dedup-", "prefix", ("Write", "Describe")),
        ("cluster", "", "", ("IdempotentWrite", "DescribeConfigs")),
    }
    kafka_topics = {m["spec"]["topicName"] for m in all_on if m["kind"] == "KafkaTopic"}
    assert kafka_topics == set(topics) | {"pinecall.ingest", "pinecall.feed-lease"}
    created = render(SIGNED, "strimzi.enabled=true", "config.topics.create=true")
    for kind, _, _, operations in acl_set(created):
        if kind == "topic":
            assert "Create" in operations
        elif kind == "cluster":
            assert operations == ("IdempotentWrite", "DescribeConfigs", "Describe")


# A Kubernetes object name (DNS-1123 subdomain): what KafkaTopic's metadata.name must be.
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def test_kafka_topic_names_are_valid_and_one_per_kafka_topic(tmp_path: Path) -> None:
    # Kafka tells apart names differing by case or "_"/"-"; Kubernetes refuses "_", upper case
    # and a leading or trailing "." or "-".
    targets = ["a_b", "a-b", "Events", "events", "_x.", "__", "Solo_Topic"]
    values = tmp_path / "values.yaml"
    rules = [{"match": f"r{i}.*", "topic": t} for i, t in enumerate(targets)]
    values.write_text(yaml.safe_dump({"config": {"routing": {"rules": rules}}}))
    topics = render(SIGNED, "strimzi.enabled=true", values=values)
    names = {
        m["spec"]["topicName"]: m["metadata"]["name"] for m in topics if m["kind"] == "KafkaTopic"
    }
    assert set(targets) <= set(names)
    assert len(set(names.values())) == len(names)
    assert all(len(n) <= 253 and K8S_NAME.fullmatch(n) for n in names.values())
    # A name already valid, or one only its topic maps to, stays as the chart named it before
    # (a renamed KafkaTopic would delete its topic); the others, as Strimzi names them.
    assert {t: names[t] for t in ("a-b", "events", "Solo_Topic", "pinecall.events")} == {
        "a-b": "a-b",
        "events": "events",
        "Solo_Topic": "solo-topic",
        "pinecall.events": "pinecall.events",
    }
    for topic in ("a_b", "Events", "_x.", "__"):
        assert names[topic].endswith(hashlib.sha1(topic.encode()).hexdigest())


def test_strimzi_ingest_and_lease_topics_follow_the_bridge_settings() -> None:
    def topic(manifests: list[Manifest], name: str) -> dict[str, Any]:
        (found,) = [
            m["spec"]
            for m in manifests
            if m["kind"] == "KafkaTopic" and m["spec"]["topicName"] == name
        ]
        return found  # type: ignore[no-any-return]

    defaults = render(SIGNED, "strimzi.enabled=true")
    ingest = topic(defaults, "pinecall.ingest")
    assert ingest["partitions"] == 12
    # As the bridge creates it: append time for restores, retention = (TTL + margin) * 1000.
    assert ingest["config"] == {
        "message.timestamp.type": "LogAppendTime",
        "retention.ms": (900 + 3600) * 1000,
        "cleanup.policy": "delete",
        "min.insync.replicas": 2,
        # Every record the producers may send fits (BRIDGE_KAFKA__MAX_REQUEST_BYTES).
        "max.message.bytes": 1048576,
    }
    assert topic(defaults, "pinecall.feed-lease")["partitions"] == 1
    larger = render(SIGNED, "strimzi.enabled=true", "config.kafka.maxRequestBytes=2097152")
    assert {
        m["spec"]["config"]["max.message.bytes"] for m in larger if m["kind"] == "KafkaTopic"
    } == {2097152}
    assert topic(defaults, "pinecall.events")["config"]["retention.ms"] == 604800000
    custom = render(
        SIGNED,
        "strimzi.enabled=true",
        "config.topics.ingest=bridge.in",
        "config.topics.ingestPartitions=24",
        "config.topics.feedLease=bridge.lease",
        "config.dedup.ttlSeconds=600",
        "config.dedup.ingestRetentionMarginSeconds=0",
        "config.dedup.group=bridge-a",
    )
    ingest = topic(custom, "bridge.in")
    assert (ingest["partitions"], ingest["config"]["retention.ms"]) == (24, 600000)
    assert topic(custom, "bridge.lease")["partitions"] == 1
    names = {(kind, name, pattern) for kind, name, pattern, _ in acl_set(custom)}
    assert {
        ("topic", "bridge.in", "literal"),
        ("topic", "bridge.lease", "literal"),
        ("group", "bridge-a", "literal"),
        ("group", "bridge-a-feed-lease", "literal"),
        ("transactionalId", "bridge-a-dedup-", "prefix"),
    } <= names


@pytest.mark.parametrize(("replicas", "insync"), [(1, 1), (2, 1), (3, 2)])
def test_strimzi_topics_min_insync_follows_the_replicas_as_the_bridge_sets_it(
    replicas: int, insync: int
) -> None:
    # 2, but below the replicas: at 2 of 2 every broker restart stops writes; above, every write.
    assert min_insync_for(replicas, None) == insync
    manifests = render(SIGNED, "strimzi.enabled=true", f"strimzi.topics.replicas={replicas}")
    topics = [m["spec"] for m in manifests if m["kind"] == "KafkaTopic"]
    assert len(topics) == 5
    assert {(t["replicas"], t["config"]["min.insync.replicas"]) for t in topics} == {
        (replicas, insync)
    }


@pytest.mark.parametrize("number", [9223372036854775807, 2**53 + 1, -(2**53)])
def test_a_strimzi_topic_setting_past_a_float64s_precision_is_refused_not_rounded(
    tmp_path: Path, number: int
) -> None:
    # A values file's numbers are float64 in the templates: Long.MAX_VALUE (Kafka's own default
    # of max.compaction.lag.ms) rendered 9223372036854776000, which Kafka refuses (INVALID_CONFIG:
    # "Not a number of type LONG"), so the KafkaTopic was never made. Given as a string, it is
    # kept as written.
    values = tmp_path / "values.yaml"
    config: dict[str, int | str] = {"max.compaction.lag.ms": number}
    values.write_text(yaml.safe_dump({"strimzi": {"topics": {"config": config}}}))
    done = helm(*template_args(SIGNED, "strimzi.enabled=true", values=values), check=False)
    assert done.returncode != 0, "rendered a number it cannot hold"
    assert "strimzi.topics.config.max.compaction.lag.ms is a number of 2^53 or more" in done.stderr
    config = {"max.compaction.lag.ms": str(number)}
    values.write_text(yaml.safe_dump({"strimzi": {"topics": {"config": config}}}))
    topics = [
        m
        for m in render(SIGNED, "strimzi.enabled=true", values=values)
        if m["kind"] == "KafkaTopic"
    ]
    assert topics
    assert {t["spec"]["config"]["max.compaction.lag.ms"] for t in topics} == {str(number)}
    # Below 2**53 a whole number is exact, and rendered as the number it is.
    config = {"max.compaction.lag.ms": 2**53 - 1}
    values.write_text(yaml.safe_dump({"strimzi": {"topics": {"config": config}}}))
    topics = [
        m
        for m in render(SIGNED, "strimzi.enabled=true", values=values)
        if m["kind"] == "KafkaTopic"
    ]
    assert {t["spec"]["config"]["max.compaction.lag.ms"] for t in topics} == {2**53 - 1}


def test_an_explicit_strimzi_min_insync_up_to_the_replicas_is_kept(tmp_path: Path) -> None:
    def insync(replicas: int, value: Any) -> set[Any]:
        topics = {"replicas": replicas, "config": {"min.insync.replicas": value}}
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump({"strimzi": {"topics": topics}}))
        manifests = render(SIGNED, "strimzi.enabled=true", values=values)
        return {
            m["spec"]["config"]["min.insync.replicas"]
            for m in manifests
            if m["kind"] == "KafkaTopic"
        }

    assert insync(3, 3) == {3}
    assert insync(3, 1) == {1}
    # Strimzi takes a string too: kept as given.
    assert insync(5, "3") == {"3"}


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ("replicaCount=two", "/replicaCount"),
        ("replicas=3", "additional properties 'replicas'"),
        ("config.kafka.compression=zstd", "/config/kafka/compression"),
        ("config.kafka.bootstrapServers=no-port", "/config/kafka/bootstrapServers"),
        ("config.topics.events=bad topic", "/config/topics/events"),
        ("config.webhook.path=/metrics", "/config/webhook/path"),
        ("config.websocket.auth=basic", "/config/websocket/auth"),
        # Sent as an HTTP header as it is: the bridge refuses whitespace and control characters.
        ("config.pinecall.env=stag ing", "/config/pinecall/env"),
        # Past the bridge's bound: 1e19 rendered a negative terminationGracePeriodSeconds.
        ("config.shutdown.graceSeconds=86401", "/config/shutdown/graceSeconds"),
        ("config.kafka.unknownSetting=1", "additional properties 'unknownSetting'"),
        ("lifecycle.preStopAction=shell", "/lifecycle/preStopAction"),
        ("alerts.rejectedRatio=5", "/alerts/rejectedRatio"),
        ("config.topics.ingestPartitions=0", "/config/topics/ingestPartitions"),
        # The bridge's floors (bridge/config.py): below a round trip to Kafka, or Pinecall's 5 s.
        ("config.kafka.metadataProbeSeconds=0", "'/config/kafka/metadataProbeSeconds': minimum"),
        (
            "config.dedup.endTransactionTimeoutSeconds=0",
            "'/config/dedup/endTransactionTimeoutSeconds': minimum",
        ),
        ("config.webhook.maxAgeSeconds=5", "'/config/webhook/maxAgeSeconds': 'anyOf' failed"),
        # Below a network round trip (bridge/config.py's MIN_ROUND_TRIP_SECONDS).
        ("config.kafka.connectTimeoutMs=50", "'/config/kafka/connectTimeoutMs': minimum"),
        ("config.http.headerTimeoutSeconds=0", "'/config/http/headerTimeoutSeconds': minimum"),
        ("config.http.bodyTimeoutSeconds=0", "'/config/http/bodyTimeoutSeconds': minimum"),
        (
            "config.pinecall.requestTimeoutSeconds=0",
            "'/config/pinecall/requestTimeoutSeconds': minimum",
        ),
        (
            "config.websocket.openTimeoutSeconds=0",
            "'/config/websocket/openTimeoutSeconds': minimum",
        ),
        (
            "config.websocket.pingTimeoutSeconds=0",
            "'/config/websocket/pingTimeoutSeconds': minimum",
        ),
        ("config.sse.connectTimeoutSeconds=0", "'/config/sse/connectTimeoutSeconds': minimum"),
        # A KRaft controller refuses to create a topic of 10000 partitions or more, the Topic
        # Operator's KafkaTopic as the bridge's own request (bridge/config.py).
        ("config.topics.partitions=9001", "'/config/topics/partitions': maximum: got 9,001"),
        ("strimzi.topics.partitions=10000", "'/strimzi/topics/partitions': maximum: got 10,000"),
        ("config.dedup.group=two words", "/config/dedup/group"),
        # Blank: the bridge refuses to start (nothing names its Kafka clients; no token field).
        ("config.kafka.clientId=", "/config/kafka/clientId"),
        ("config.kafka.clientId= ", "/config/kafka/clientId"),
        ("config.websocket.tokenField= ", "/config/websocket/tokenField"),
        ("config.dedup.maxEntries=1000", "additional properties 'maxEntries'"),
        # What the Kubernetes API would refuse only at apply time, or silently replace.
        ("updateStrategy.maxSurge=0", "'/updateStrategy/maxSurge': minimum: got 0, want 1"),
        ("updateStrategy.maxSurge=0%", "'/updateStrategy/maxSurge': '0%' does not match"),
        ("livenessProbe.successThreshold=2", "'/livenessProbe/successThreshold': value must be 1"),
        ("livenessProbe.periodSeconds=0", "'/livenessProbe/periodSeconds': minimum: got 0"),
        ("startupProbe.successThreshold=2", "'/startupProbe/successThreshold': value must be 1"),
        ("startupProbe.failureThreshold=0", "'/startupProbe/failureThreshold': minimum: got 0"),
        ("readinessProbe.timeoutSeconds=0", "'/readinessProbe/timeoutSeconds': minimum: got 0"),
        ("readinessProbe.periodSeconds=-1", "'/readinessProbe/periodSeconds': minimum: got -1"),
        ("lifecycle.preStopSleepSeconds=0", "'/lifecycle/preStopSleepSeconds': minimum: got 0"),
        ("minReadySeconds=600", "'/minReadySeconds': maximum: got 600, want 599"),
        # A budget of 0 refuses every eviction of a ready pod: node drains would hang for good.
        ("podDisruptionBudget.maxUnavailable=0", "'/podDisruptionBudget/maxUnavailable': minimum"),
        ("podDisruptionBudget.maxUnavailable=0%", "'/podDisruptionBudget/maxUnavailable': '0%'"),
        # A relative or climbing path: the chart could not tell where it lands.
        (
            "extraVolumeMounts[0].name=x,extraVolumeMounts[0].mountPath=etc",
            "/extraVolumeMounts/0/mountPath",
        ),
        (
            "extraVolumeMounts[0].name=x,extraVolumeMounts[0].mountPath=/x/../tmp",
            "/extraVolumeMounts/0/mountPath",
        ),
        # Bidirectional needs a privileged container.
        (
            "extraVolumeMounts[0].name=x,extraVolumeMounts[0].mountPath=/x,"
            "extraVolumeMounts[0].mountPropagation=Bidirectional",
            "/extraVolumeMounts/0/mountPropagation",
        ),
    ],
)
def test_bad_values_fail_at_install_time(bad: str, complaint: str) -> None:
    done = helm("template", "x", CHART, "--set", bad, check=False)
    assert done.returncode != 0
    assert complaint in done.stderr, done.stderr


def test_the_kubernetes_limits_refuse_only_what_kubernetes_refuses() -> None:
    manifests = render(
        SIGNED,
        "updateStrategy.maxSurge=25%",
        "readinessProbe.successThreshold=2",
        "lifecycle.preStopAction=exec",
        "lifecycle.preStopSleepSeconds=0",
        "minReadySeconds=0",
    )
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    assert deployment["spec"]["minReadySeconds"] == 0
    bridge = container(manifests)
    assert bridge["readinessProbe"]["successThreshold"] == 2
    assert bridge["lifecycle"]["preStop"]["exec"]["command"][2].endswith("sleep(0)")


def sections(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of every section (an object with fields of its own) in the schema."""
    found = []
    for key, node in schema.get("properties", {}).items():
        if "properties" in node:
            found += [f"{prefix}{key}", *sections(node, f"{prefix}{key}.")]
    return found


def test_a_null_section_is_refused_not_a_nil_pointer() -> None:
    # Helm drops a key set to null: the section reaches the templates missing, and each read of
    # a field in it crashed the render. One render per depth: a null parent hides its children.
    # startupProbe null is none (test_a_null_startup_probe_renders_none); not required either, so
    # a previous chart's values.yaml (--reuse-values) meets the refusal that says how to upgrade.
    paths = [p for p in sections(load_yaml(CHART / "values.schema.json")) if p != "startupProbe"]
    assert {"config", "config.http", "config.kafka", "secrets.pinecallApiKey"} <= set(paths)
    for depth in range(1, max(p.count(".") for p in paths) + 2):
        nulled = [p for p in paths if p.count(".") == depth - 1]
        done = helm(
            "template", "x", CHART, "--set", SIGNED, *(f"--set={p}=null" for p in nulled),
            check=False,
        )  # fmt: skip
        assert done.returncode != 0
        assert "nil pointer" not in done.stderr
        for path in nulled:
            parent, _, name = path.rpartition(".")
            where = re.escape(f"at '{'/' + parent.replace('.', '/') if parent else ''}'")
            assert re.search(rf"{where}: missing propert[^\n]*'{name}'", done.stderr), (
                path,
                done.stderr,
            )


def render_notes(tmp_path: Path, *sets: str) -> str:
    """NOTES.txt rendered: `helm template` skips it, so a copy of the chart wraps it."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" }}' + notes + "{{- end }}")
    (chart / "templates" / "notes.yaml").write_text(
        'kind: Notes\ntext: {{ include "notes" . | toJson }}\n'
    )
    args: list[str | Path] = ["template", "pinecall-bridge", chart]
    args += ["--show-only", "templates/notes.yaml"]
    for item in sets:
        args += ["--set", item]
    return helm(*args).stdout


def test_notes_tell_what_to_know(tmp_path: Path) -> None:
    # A missing webhook secret is no warning here any more: the render itself is refused
    # (tests/deploy/test_chart_refusals.py).
    notes = render_notes(tmp_path, SIGNED)
    assert "WARNING" not in notes
    assert "the dedup stage (group pinecall-bridge," in notes  # the group it was given
    assert "http://pinecall-bridge.default.svc:8080/webhooks/pinecall" in notes
    assert "webhooks test" not in notes
    notes = render_notes(
        tmp_path / "registers",
        SIGNED,
        "config.pinecall.registerWebhook=true",
        "config.pinecall.publicUrl=https://bridge.example.com",
        "secrets.pinecallApiKey.value=k",
    )
    assert "webhook at https://bridge.example.com/webhooks/pinecall and" in notes
    assert "exec deployment/pinecall-bridge -- pinecall-bridge webhooks test" in notes
    notes = render_notes(tmp_path / "1", GROUP, "config.webhook.allowUnsigned=true")
    assert "WARNING: config.webhook.allowUnsigned=true" in notes
    assert "allowInsecureUrls" not in notes
    notes = render_notes(tmp_path / "insecure", SIGNED, "config.pinecall.allowInsecureUrls=true")
    assert "WARNING: config.pinecall.allowInsecureUrls=true" in notes
    notes = render_notes(
        tmp_path / "2",
        GROUP,
        "secrets.existingSecret=s",
        "ingress.enabled=true",
        "ingress.tls[0].secretName=t",
    )
    assert "https://bridge.example.com/webhooks/pinecall" in notes
    assert "isolation.level=read_committed" in notes
    assert "ingest partitions" not in notes.split("Exactly once")[0]
    notes = render_notes(
        tmp_path / "3",
        SIGNED,
        "autoscaling.enabled=true",
        "autoscaling.maxReplicas=16",
        "resources.requests.cpu=1",
    )
    assert "up to 16 replicas but 12 ingest partitions" in notes
    # Every worker process runs a dedup stage, unless the stage has a process of its own.
    notes = render_notes(
        tmp_path / "4",
        SIGNED,
        "config.http.workers=0",
        "resources.limits.cpu=2500m",
        "replicaCount=5",
    )
    assert "up to 15 dedup stages (5 replicas, 3 worker processes each) but 12 ingest" in notes
    notes = render_notes(
        tmp_path / "5", SIGNED, "config.http.workers=4", "config.dedup.ownProcess=true"
    )
    assert "dedup stages" not in notes
    notes = render_notes(tmp_path / "6", SIGNED, "config.http.workers=4", "replicaCount=4")
    assert "up to 16 dedup stages (4 replicas, 4 worker processes each) but 12 ingest" in notes


def alert_names(*sets: str, values: Path | None = None) -> dict[str, dict[str, Any]]:
    rendered = render(SIGNED, "prometheusRule.enabled=true", *sets, values=values)
    rule = one(rendered, "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_alert_minutes_may_be_fractions_rendered_in_whole_seconds(tmp_path: Path) -> None:
    # PromQL has no "0.25m": the game-day test's short windows (test_gameday.py).
    short = {"publishStalledMinutes": 0.25, "stalledForMinutes": 0.05, "notReadyMinutes": 0.1}
    values = tmp_path / "short.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "alerts": {
                    **short,
                    "kafkaDisconnectedMinutes": 1.5,
                    "memoryNearLimitMinutes": 0.5,
                    "dedupPartitionsHeldMinutes": 0.25,
                }
            }
        )
    )
    rules = alert_names(values=values)
    assert rules["PinecallBridgePublishingStalled"]["for"] == "3s"
    assert "[15s]" in rules["PinecallBridgePublishingStalled"]["expr"]
    assert "[15s]" in rules["PinecallBridgeDedupStalled"]["expr"]
    assert rules["PinecallBridgeKafkaDisconnected"]["for"] == "90s"
    assert rules["PinecallBridgePodNotReady"]["for"] == "6s"
    assert rules["PinecallBridgeReplicasUnavailable"]["for"] == "12s"
    assert rules["PinecallBridgeMemoryNearLimit"]["for"] == "30s"
    assert rules["PinecallBridgeDedupPartitionsHeld"]["for"] == "15s"
    # Whole minutes stay minutes, as deploy/'s generated rules show.
    assert alert_names()["PinecallBridgeKafkaDisconnected"]["for"] == "2m"


def test_the_feed_call_log_webhook_and_downstream_alert_windows_may_be_fractions_too(
    tmp_path: Path,
) -> None:
    windows = ["websocketDownMinutes", "websocketGapMinutes", "callLogDownMinutes"]
    values = tmp_path / "short.yaml"
    short = {**dict.fromkeys(windows, 0.5), "callLogGapsMinutes": 1.5}
    fors = {"feedLeaseMissingMinutes": 0.2, "webhookNotRegisteredMinutes": 2.5}
    short |= {**fors, "downstreamLagMinutes": 0.75}
    values.write_text(yaml.safe_dump({"alerts": {**short, "feedLeaseSplitBrainMinutes": 0.25}}))
    rules = alert_names("prometheusRule.downstreamLag.enabled=true", values=values)
    for name in ("WebSocketDown", "WebSocketGaps", "CallLogSourceDown"):
        expr = rules[f"PinecallBridge{name}"]["expr"]
        assert "[30s]" in expr, expr
        assert "m]" not in expr, expr
    assert "[90s]" in rules["PinecallBridgeCallLogGapsNotFilled"]["expr"]
    assert rules["PinecallBridgeFeedLeaseSplitBrain"]["for"] == "15s"
    assert rules["PinecallBridgeNoFeedLeaseHolder"]["for"] == "12s"
    assert rules["PinecallBridgeWebhookNotRegistered"]["for"] == "150s"
    assert rules["PinecallBridgeDownstreamLagHigh"]["for"] == "45s"
    # Whole minutes stay minutes.
    defaults = alert_names("prometheusRule.downstreamLag.enabled=true")
    assert "[5m]" in defaults["PinecallBridgeWebSocketDown"]["expr"]
    assert defaults["PinecallBridgeWebhookNotRegistered"]["for"] == "10m"
    assert defaults["PinecallBridgeDownstreamLagHigh"]["for"] == "15m"


FRACTIONS = {"alerts.rejectedRatio": "0.5", "config.kafka.publishTimeoutSeconds": "2.5"}


@pytest.mark.parametrize(("key", "fraction"), FRACTIONS.items())
def test_a_fraction_given_with_set_is_refused_and_with_set_json_rendered(
    key: str, fraction: str
) -> None:
    # Helm's --set types only int64, bool and null (strvals' typedVal): a fraction is a string,
    # and the schema's "number" refuses it. The READMEs send operators to --set-json.
    on = template_args(SIGNED, "prometheusRule.enabled=true")
    path = "/" + key.replace(".", "/")
    refused = helm(*on, "--set", f"{key}={fraction}", check=False)
    assert refused.returncode != 0
    assert re.search(f"at '{path}': got string, want (null or )?number", refused.stderr)
    text = helm(*on, "--set-json", f"{key}={fraction}").stdout
    manifests = [doc for doc in yaml.safe_load_all(text) if doc]
    if key.startswith("alerts."):
        rule = one(manifests, "PrometheusRule")["spec"]["groups"]
        rules = {r["alert"]: r for group in rule for r in group["rules"]}
        assert f"> {fraction}\n" in rules["PinecallBridgeRejectionRateHigh"]["expr"]
    else:
        env = one(manifests, "ConfigMap", "pinecall-bridge")["data"]
        assert env["BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS"] == fraction


# A number printed with an exponent (1e+06, 5e-05) or a float's binary residue (7.000000000000001).
UNWRITTEN_NUMBER = re.compile(r"\d[eE][+-]?\d|\.\d*(?:0{6}|9{6})\d")


@pytest.mark.parametrize(
    ("large", "ratio", "percent"), [(1000000, 0.07, "7"), (2500000.5, 0.00005, "0.005")]
)
def test_alert_thresholds_from_a_values_file_print_as_written(
    tmp_path: Path, large: float, ratio: float, percent: str
) -> None:
    # A values file's numbers reach the templates as float64, which print 1e+06 from a million
    # up and 5e-05 below 0.0001 (--set gives int64s instead: a file is what users write).
    schema = load_yaml(CHART / "values.schema.json")["properties"]["alerts"]["properties"]
    thresholds = {
        key: ratio if key.endswith("Ratio") else int(large) if spec["type"] == "integer" else large
        for key, spec in schema.items()
        if spec.get("type") in ("number", "integer")
    }
    values = tmp_path / "alerts.yaml"
    values.write_text(yaml.safe_dump({"alerts": thresholds}))
    rendered = render(
        SIGNED,
        "prometheusRule.enabled=true",
        "prometheusRule.downstreamLag.enabled=true",
        values=values,
    )
    groups = one(rendered, "PrometheusRule")["spec"]["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    for name, rule in rules.items():
        for text in (rule["expr"], rule.get("for", ""), *rule["annotations"].values()):
            assert not UNWRITTEN_NUMBER.search(text), (name, text)
    written = f"{large:.0f}" if large == int(large) else str(large)
    lag = rules["PinecallBridgeDedupLagGrowing"]
    assert f"> {written}\n" in lag["expr"], lag["expr"]
    assert f"more than {written}s or {int(large)} records" in lag["annotations"]["description"]
    rejected = rules["PinecallBridgeRejectionRateHigh"]
    assert f"> {ratio:f}".rstrip("0") + "\n" in rejected["expr"], rejected["expr"]
    assert f"More than {percent}% of one channel" in rejected["annotations"]["description"]
    assert (
        f"{written} minutes"
        in rules["PinecallBridgeKafkaDisconnected"]["annotations"]["description"]
    )
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump({"groups": groups}))
    done = run(find_tool("promtool"), "check", "rules", file)
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_downstream_lag_alert_is_optional_and_watches_the_output_topics() -> None:
    assert "PinecallBridgeDownstreamLagHigh" not in alert_names(), "off by default"
    rules = alert_names(
        "prometheusRule.downstreamLag.enabled=true",
        "config.topics.ephemeral=pinecall.ephemeral",
        "config.routing.rules[0].match=metrics.*",
        "config.routing.rules[0].topic=pinecall.metrics",
        "alerts.downstreamLagRecords=500",
    )
    expr = rules["PinecallBridgeDownstreamLagHigh"]["expr"]
    topics = re.search(r"topic=~`([^`]*)`", expr)
    assert topics, expr
    outputs = ["events", "alerts", "dlq", "ephemeral", "metrics"]
    assert topics.group(1).split("|") == [rf"pinecall\.{name}" for name in outputs]
    assert "kafka_consumergroup_lag" in expr
    assert "> 500" in expr


def test_the_metrics_absent_alert_comes_only_with_the_charts_service_monitor() -> None:
    # Without it the scrape job's name is not the chart's to know: it would fire for ever.
    assert "PinecallBridgeMetricsAbsent" not in alert_names()
    rules = alert_names("serviceMonitor.enabled=true", "fullnameOverride=bridge-eu")
    assert (
        rules["PinecallBridgeMetricsAbsent"]["expr"].strip() == 'absent(up{job="bridge-eu"} == 1)'
    )


def deployment_pod_name(deployment: str, template_hash: str) -> str:
    """A Deployment's pod name as Kubernetes makes it: the ReplicaSet's name (the Deployment's
    and the pod template's hash), a dash, cut at 58 characters, then 5 random ones."""
    return f"{deployment}-{template_hash}-"[:58] + "x7b2z"


@pytest.mark.parametrize("length", [15, 46, 47, 50, 55, 56, 57, 58, 63])
def test_the_pod_alerts_match_the_deployments_pods_however_long_its_name(length: int) -> None:
    # A release's full name over 46 characters made Kubernetes cut the hash's end (or its dash)
    # off the pods' names: the restart and memory alerts then matched no pod and never fired.
    name = ("pinecall-bridge-" + "x" * 63)[:length]
    rules = alert_names(f"fullnameOverride={name}")
    for alert in ("PinecallBridgePodRestarting", "PinecallBridgeMemoryNearLimit"):
        patterns = set(re.findall(r'pod=~"([^"]*)"', rules[alert]["expr"]))
        assert len(patterns) == 1, patterns
        (pattern,) = patterns
        # The hash is a 32-bit number's decimal digits, each mapped to a letter or digit.
        for digits in range(1, 11):
            pod = deployment_pod_name(name, "5d8f9c7b6b"[:digits])
            assert len(pod) <= 63
            assert re.fullmatch(pattern, pod), (alert, pattern, pod)


def test_every_template_renders_only_yaml() -> None:
    # A stray `{{` from an unescaped Alertmanager template would break the YAML or leak here.
    text = render_text(values=ALL_ON)
    assert "<no value>" not in text


# Objects handed to Kubernetes as they are: the chart README documents them as a whole.
VERBATIM = {
    "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
    "startupProbe",
    "networkPolicy.dns.to", "networkPolicy.pinecallApi.to", "strimzi.topics.config",
    "grafanaDashboard.labels",
}  # fmt: skip


def leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in VERBATIM:
            paths += leaf_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


def test_the_memory_sizing_the_chart_states_is_the_bridges() -> None:
    # The chart's README said 1,972 MiB, and its resources comment counted a restore buffer for
    # every partition, after the bridge came to count 4 MiB for each restore run at once.
    values = load_yaml(CHART / "values.yaml")
    limit = values["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    fit = WindowFit(
        partitions=values["config"]["topics"]["ingestPartitions"],
        max_entries=values["config"]["dedup"]["maxEntriesPerPartition"],
        limit=int(limit[:-2]) * 1024**3,
        restore_concurrency=values["config"]["dedup"]["restoreConcurrency"],
    )
    assert fit.fits
    needed = f"{fit.needed / 1024**2:,.0f} MiB"
    readme = " ".join((CHART / "README.md").read_text().split())
    assert f"({needed} at the chart's defaults" in readme
    comments = " ".join(re.findall(r"^\s*# ?(.*)$", (CHART / "values.yaml").read_text(), re.M))
    assert f"({fit.max_entries}: {needed})" in comments
    assert f"= {needed} at the defaults" in comments
    assert f"{fit.largest_cap()} for {fit.partitions} partitions in {limit}" in comments


def test_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"`([A-Za-z][\w.]*)`", readme))
    missing = [p for p in leaf_paths(load_yaml(CHART / "values.yaml")) if p not in listed]
    assert not missing, f"values not in helm/pinecall-bridge/README.md: {missing}"


@pytest.mark.parametrize(("grace", "delay"), [(25, 15), (25, 20), (10, 7), (2, 1), (3, 0)])
def test_notes_warn_of_a_drain_delay_each_stop_cuts(tmp_path: Path, grace: int, delay: int) -> None:
    # The bridge accepts such a delay (only one not below the grace is refused), so the chart
    # renders it, but says at install what the bridge says at each start: the delay kept.
    rendered = render_notes(
        tmp_path,
        SIGNED,
        f"config.shutdown.graceSeconds={grace}",
        f"config.shutdown.drainDelaySeconds={delay}",
    )
    notes = " ".join(yaml.safe_load(rendered)["text"].split())  # the warning spans lines
    bridge = drain_delay_warnings(ShutdownSettings(grace_seconds=grace, drain_delay_seconds=delay))
    if not bridge:
        assert "drainDelaySeconds" not in notes
        return
    kept = re.search(r"each stop cuts it to [0-9.]+ s", bridge[0])
    assert kept is not None
    assert (
        f"WARNING: config.shutdown.drainDelaySeconds ({delay}) leaves a stop within"
        f" config.shutdown.graceSeconds ({grace}) no time to close the listener and the feed:"
        f" {kept.group()};"
    ) in notes
