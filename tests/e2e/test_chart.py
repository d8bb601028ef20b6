"""The Helm chart at helm/ (SPEC §10, issue 6): linted, rendered, validated, and run.

No Kubernetes cluster is reachable here, so:
- every render (defaults and each helm/ci/*-values.yaml) is validated offline against the
  Kubernetes schemas by `kubernetes-validate --strict`; the Prometheus Operator objects, which
  it has no schema for, are checked by shape, and the alert rules by `promtool check rules`;
- the rendered Deployment + ConfigMap are started by `podman kube play` on the image built from
  this tree and must answer /health and /metrics. podman has no Service, so the test adds a
  `hostPort` on 127.0.0.1 to the rendered container port (the only change to the render) and
  runs one replica.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.podman import ROOT, built_image, podman, wait_http
from tests.support import free_port, machine_lock

# Every test but the first needs helm (the `helm` fixture); kube play also podman, the alert
# rules promtool. The first kube play test may pay for the image build.
pytestmark = [pytest.mark.helm, pytest.mark.timeout(900)]

CHART = ROOT / "helm"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = [None, *CI_VALUES]


def case_id(values: Path | None) -> str:
    return "defaults" if values is None else values.name.removesuffix("-values.yaml")


@pytest.fixture(scope="module")
def helm() -> str:
    with machine_lock("helm"):  # fetched once, not by two test processes into one place
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-helm.sh")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def render(helm: str, *args: str, release: str = "rel") -> str:
    out = run([helm, "template", release, str(CHART), "--namespace", "llm", *args])
    assert out.returncode == 0, out.stderr
    return out.stdout


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The objects by kind; one with an `app.kubernetes.io/component` label (the ConfigMap that
    holds a profile or routing file) as `kind/component`."""
    out: dict[str, dict[str, Any]] = {}
    for d in manifests:
        component = d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        key = d["kind"] if component is None else f"{d['kind']}/{component}"
        assert key not in out, f"two {key} objects"
        out[key] = d
    return out


def values_args(values: Path | None) -> list[str]:
    return [] if values is None else ["-f", str(values)]


def tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def renders(helm: str) -> dict[str, str]:
    return {case_id(v): render(helm, *values_args(v)) for v in CASES}


def test_the_ci_values_files_cover_each_optional_piece() -> None:
    assert {case_id(v) for v in CI_VALUES} >= {
        "redis",
        "monitoring",
        "autoscaling",
        "inline-profile",
        "routing",
        "access-keys",
    }


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_helm_lint(helm: str, values: Path | None) -> None:
    out = run([helm, "lint", "--strict", str(CHART), *values_args(values)])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values", CASES, ids=case_id)
def test_render_is_valid_kubernetes(
    renders: dict[str, str], values: Path | None, tmp_path: Path
) -> None:
    path = tmp_path / "render.yaml"
    path.write_text(renders[case_id(values)])
    out = run([tool("kubernetes-validate"), "--strict", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout + out.stderr


def test_validator_rejects_an_unknown_field(renders: dict[str, str], tmp_path: Path) -> None:
    """The check above can fail: --strict refuses a field the Deployment schema lacks."""
    manifests = docs(renders["defaults"])
    deployment = by_kind(manifests)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    out = run([tool("kubernetes-validate"), "--strict", str(path)])
    assert out.returncode != 0
    assert "livenesProbe" in out.stdout + out.stderr


def test_default_render_is_a_hardened_deployment(renders: dict[str, str]) -> None:
    objs = by_kind(docs(renders["defaults"]))
    assert set(objs) == {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Pod"}
    # The Pod is the `helm test` hook: it checks /health and /ready through the Service.
    assert objs["Pod"]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "/ready" in json.dumps(objs["Pod"]["spec"])
    pod = objs["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    # Probes: liveness /health, readiness /ready.
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    # Restricted security context.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    # Prometheus scrape annotations and the config checksum.
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "8000"
    assert ann["prometheus.io/path"] == "/metrics"
    assert len(ann["checksum/config"]) == 64
    # SIGKILL never cuts the drain short: grace >= preStop sleep + drain time.
    cm = objs["ConfigMap"]["data"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + int(cm["API_ROUTER_DRAIN_SECS"])
    assert cm["API_ROUTER_PROFILE"] == "qwen" and cm["LOG_FORMAT"] == "json"
    # No key given: no Secret, and no secret reference in the pod.
    assert "DEFAULT_API_KEY" not in json.dumps(c)


def test_the_pods_get_no_service_link_variables(helm: str, renders: dict[str, str]) -> None:
    """Kubernetes sets `<SERVICE>_PORT=tcp://IP:PORT` in every pod of a namespace for each
    Service in it (service links). A release named api-router has a Service named api-router:
    API_ROUTER_PORT=tcp://…, which the router refuses (only the ConfigMap's own API_ROUTER_PORT,
    which a service link does not override, kept the chart's pods starting)."""
    from service.cli import resolve_settings
    from service.settings import SettingsError

    objs = by_kind(docs(render(helm, release="api-router")))
    service = objs["Service"]["metadata"]["name"]
    link = service.upper().replace("-", "_") + "_PORT"
    assert link == "API_ROUTER_PORT"  # the router's own port variable
    with pytest.raises(SettingsError, match="API_ROUTER_PORT"):
        resolve_settings(
            [], {link: f"tcp://10.43.0.7:{objs['Service']['spec']['ports'][0]['port']}"}
        )
    assert objs["Deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False
    for case, text in renders.items():
        spec = by_kind(docs(text))["Deployment"]["spec"]["template"]["spec"]
        assert spec["enableServiceLinks"] is False, case


GRACE_MARGIN_SECS = 10  # for the process to exit after its drain (helm/README.md)


@pytest.mark.parametrize(("pre_stop", "drain"), [(5, 30), (0, 0), (0, 3600), (300, 3600), (17, 45)])
def test_grace_period_keeps_its_margin_beyond_pre_stop_and_drain(
    helm: str, pre_stop: int, drain: int
) -> None:
    objs = by_kind(
        docs(
            render(
                helm,
                "--set",
                f"router.preStopSleepSeconds={pre_stop}",
                "--set",
                f"router.drainSeconds={drain}",
            )
        )
    )
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre_stop)]
    assert objs["ConfigMap"]["data"]["API_ROUTER_DRAIN_SECS"] == str(drain)
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + GRACE_MARGIN_SECS


@pytest.mark.parametrize("mode", ["replace", "keep", "drop"])
def test_forwarded_headers_value_reaches_the_router(helm: str, mode: str) -> None:
    objs = by_kind(docs(render(helm, "--set", f"router.forwardedHeaders={mode}")))
    assert objs["ConfigMap"]["data"]["API_ROUTER_FORWARDED_HEADERS"] == mode


def test_a_config_change_rolls_the_pods(helm: str) -> None:
    def checksum(*args: str) -> str:
        dep = by_kind(docs(render(helm, *args)))["Deployment"]
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum()
    assert checksum("--set", "profile.name=openai") != base
    assert checksum("--set", "router.logLevel=debug") != base
    assert checksum("--set", "replicaCount=5") == base  # not a config change


def test_redis_values_put_the_url_and_key_in_a_secret(renders: dict[str, str]) -> None:
    import base64

    objs = by_kind(docs(renders["redis"]))
    data = {k: base64.b64decode(v).decode() for k, v in objs["Secret"]["data"].items()}
    assert data["RATE_LIMIT_BACKEND"].startswith("redis://")
    assert data["DEFAULT_API_KEY"] == "sk-ci-placeholder"
    env = {
        e["name"]: e for e in objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RATE_LIMIT_BACKEND"]["valueFrom"]["secretKeyRef"]["name"] == "rel-api-router"
    assert objs["ConfigMap"]["data"]["RATE_LIMIT_FAIL_CLOSED"] == "true"
    # Token limits and budgets per key (docs/tokens.md) become the router's environment.
    cm = objs["ConfigMap"]["data"]
    assert cm["TOKEN_LIMIT_TOKENS_PER_MINUTE"] == "200000"
    assert cm["TOKEN_LIMIT_BURST"] == "400000"
    assert cm["TOKEN_LIMIT_ENFORCE"] == "true"
    assert (cm["TOKEN_BUDGET_DAILY"], cm["TOKEN_BUDGET_MONTHLY"]) == ("5000000", "0")
    from service.context import token_defaults
    from service.settings import Settings

    limit, budgets = token_defaults(Settings.from_env(cm, profile_path=Path()))
    assert limit is not None and (limit.tokens_per_minute, limit.burst) == (200000, 400000)
    assert budgets is not None and (budgets.daily, budgets.monthly) == (5000000, None)
    # The secret values appear nowhere else in the render.
    text = renders["redis"]
    assert "s3cret" not in text and "sk-ci-placeholder" not in text


def test_existing_secret_is_referenced_not_created(renders: dict[str, str]) -> None:
    objs = by_kind(docs(renders["autoscaling"]))
    assert "Secret" not in objs
    (c,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    ref = next(e for e in c["env"] if e["name"] == "DEFAULT_API_KEY")["valueFrom"]
    assert ref["secretKeyRef"] == {"name": "llm-provider-key", "key": "api-key"}


def test_autoscaling_values_make_an_hpa_and_a_pdb(renders: dict[str, str]) -> None:
    objs = by_kind(docs(renders["autoscaling"]))
    assert "replicas" not in objs["Deployment"]["spec"]  # the HPA owns the count
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"]["name"] == objs["Deployment"]["metadata"]["name"]
    pdb = objs["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 2
    assert pdb["selector"]["matchLabels"] == objs["Deployment"]["spec"]["selector"]["matchLabels"]


@pytest.mark.prometheus
def test_monitoring_values_make_a_service_monitor_and_valid_alert_rules(
    renders: dict[str, str], tmp_path: Path
) -> None:
    objs = by_kind(docs(renders["monitoring"]))
    sm = objs["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert sm["spec"]["selector"]["matchLabels"] == objs["Service"]["spec"]["selector"]
    rule = objs["PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "ApiRouterUpstreamErrorRate",
        "ApiRouterRateLimitedRate",
        "ApiRouterHighP99Latency",
        "ApiRouterHighOverhead",
        "ApiRouterConnectionsRefused",
    }
    assert "upstream_errors_total" in alerts["ApiRouterUpstreamErrorRate"]["expr"]
    assert 'status="429"' in alerts["ApiRouterRateLimitedRate"]["expr"]
    assert "request_latency_seconds_bucket" in alerts["ApiRouterHighP99Latency"]["expr"]
    assert "> 5" in alerts["ApiRouterHighP99Latency"]["expr"]  # from the values file
    assert "router_overhead_seconds_bucket" in alerts["ApiRouterHighOverhead"]["expr"]
    assert "rate(connections_refused_total{" in alerts["ApiRouterConnectionsRefused"]["expr"]
    # Traces: the switch and the standard OTEL_* variables the SDK reads.
    cm = objs["ConfigMap"]["data"]
    assert cm["API_ROUTER_TRACING"] == "true"
    assert cm["API_ROUTER_CORS_ORIGINS"] == "https://console.example.com"
    assert cm["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert cm["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert (cm["OTEL_TRACES_SAMPLER"], cm["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0.01",
    )
    from service.settings import Settings

    assert Settings.from_env(cm, profile_path=Path()).tracing is True
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    out = run([tool("promtool"), "check", "rules", str(rules)])
    assert out.returncode == 0, out.stdout + out.stderr


POD = "rel-api-router-7d9f8b6c5d-x2x9z"  # a pod of the Deployment, as Kubernetes names it


def alert_test(rule: dict[str, Any], job: str, alerts: list[str]) -> dict[str, Any]:
    """A `promtool test rules` case: two proxied requests a minute, both failing upstream and
    each taking a minute, beside 100 requests a minute of probes and scrapes; each of `alerts`
    must fire, with its own annotations."""
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    labels = f'namespace="llm", job="{job}", pod="{POD}"'
    proxied = f'{labels}, route="/v1/chat/completions"'
    probes = f'{labels}, route="/health", method="GET"'
    return {
        "interval": "1m",
        "input_series": [
            {
                "series": f'requests_total{{{proxied}, method="POST", status="502"}}',
                "values": "0+2x40",
            },
            {
                "series": f'requests_total{{{probes}, status="200"}}',
                "values": "0+100x40",
            },
            {
                "series": f'upstream_errors_total{{{proxied}, error_type="upstream_error"}}',
                "values": "0+2x40",
            },
            # Every request above 10 s, the histogram's highest finite bucket (METRICS.md).
            {"series": f'request_latency_seconds_bucket{{{proxied}, le="10"}}', "values": "0x40"},
            {
                "series": f'request_latency_seconds_bucket{{{proxied}, le="+Inf"}}',
                "values": "0+2x40",
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": name,
                "exp_alerts": [
                    {
                        "exp_labels": rules[name]["labels"],
                        "exp_annotations": rules[name]["annotations"],
                    }
                ],
            }
            for name in alerts
        ],
    }


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("case", "args", "job"),
    [
        # The ServiceMonitor's series: the job is the Service's name.
        ("service-monitor", ["-f", str(CHART / "ci" / "monitoring-values.yaml")], "rel-api-router"),
        # Scraped through the pod annotations: the scrape config names the job.
        (
            "annotations",
            [
                "--set",
                "metrics.prometheusRule.enabled=true",
                "--set",
                "metrics.prometheusRule.p99LatencySeconds=8",
            ],
            "kubernetes-pods",
        ),
    ],
)
def test_alert_rules_fire_on_an_outage(
    helm: str, tmp_path: Path, case: str, args: list[str], job: str
) -> None:
    """The alerts evaluated by Prometheus's own rule engine (promtool test rules) on series as
    the router writes them: the error-rate alert must not be diluted by probe traffic, the p99
    alert's threshold must be reachable by the histogram, and both must match the series of
    either way of scraping."""
    rule = by_kind(docs(render(helm, *args, "--show-only", "templates/prometheusrule.yaml")))[
        "PrometheusRule"
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    alerts = ["ApiRouterUpstreamErrorRate", "ApiRouterHighP99Latency"]
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "tests": [alert_test(rule, job, alerts)],
            }
        )
    )
    out = run([tool("promtool"), "test", "rules", str(tmp_path / "test.yaml")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_large_numbers_from_a_values_file_stay_integers(helm: str, tmp_path: Path) -> None:
    """Helm reads a values file's numbers as floats: without `int64` a burst of a million would
    render as 1e+06, which the router refuses (and the pods would crash-loop)."""
    values = tmp_path / "values.yaml"
    values.write_text(
        "router:\n  rateLimit:\n    requestsPerMinute: 2000000\n    burst: 1000000\n"
        "  tokenLimit:\n    tokensPerMinute: 5000000\n    burst: 10000000\n"
        "  maxBodyBytes: 100000000\n"
    )
    cm = by_kind(docs(render(helm, "-f", str(values))))["ConfigMap"]["data"]
    assert cm["RATE_LIMIT_BURST"] == "1000000"
    from service.settings import Settings

    settings = Settings.from_env(cm, profile_path=Path())
    assert settings.rate_limit_rpm == 2_000_000
    assert settings.max_body_bytes == 100_000_000


def test_the_helm_test_pod_is_pulled_and_placed_like_the_router(helm: str) -> None:
    objs = by_kind(
        docs(
            render(
                helm,
                "--set", "imagePullSecrets[0].name=regcred",
                "--set", "nodeSelector.pool=llm",
                "--set", "tolerations[0].key=dedicated",
                "--set", "tolerations[0].operator=Exists",
            )
        )
    )  # fmt: skip
    test_pod, router = objs["Pod"]["spec"], objs["Deployment"]["spec"]["template"]["spec"]
    for field in ("imagePullSecrets", "nodeSelector", "tolerations"):
        assert test_pod[field] == router[field], field
    assert test_pod["imagePullSecrets"] == [{"name": "regcred"}]


def notes(helm: str, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it. `helm template` skips it, so it is rendered from a
    copy of the chart, by a template that runs it through `tpl` into a YAML string."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "NOTES.copy")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "NOTES.copy") . | toJson }}\n'
    )
    out = run([helm, "template", "rel", str(chart), "--show-only", "templates/notes.yaml", *args])
    assert out.returncode == 0, out.stderr
    return str(yaml.safe_load(out.stdout)["notes"])


def test_notes_name_the_served_config_and_warn_of_per_pod_limits(helm: str, tmp_path: Path) -> None:
    default = notes(helm, tmp_path / "a")
    assert "Profile: qwen (shipped)" in default
    assert "WARNING" in default and "2 times its limits" in default  # replicaCount 2, no Redis
    routing = notes(helm, tmp_path / "b", "-f", str(CHART / "ci" / "routing-values.yaml"))
    assert "Profile: routing file (ConfigMap rel-api-router-files, key routing.json)" in routing
    inline = notes(helm, tmp_path / "c", "-f", str(CHART / "ci" / "inline-profile-values.yaml"))
    assert "Profile: inline (ConfigMap rel-api-router-files, key profile.json)" in inline
    scaled = notes(helm, tmp_path / "d", "--set", "autoscaling.enabled=true")
    assert "up to 10 pods a key gets up to 10 times its limits" in scaled
    redis = notes(helm, tmp_path / "e", "-f", str(CHART / "ci" / "redis-values.yaml"))
    assert "Redis (shared by all replicas)" in redis and "WARNING" not in redis
    single = notes(helm, tmp_path / "f", "--set", "replicaCount=1")
    assert "WARNING" not in single
    # With access keys /v1/models answers 401 without one: the command sends one.
    assert "/v1/models\n" in default and "ACCESS_KEY" not in default
    guarded = notes(helm, tmp_path / "g", "--set", f"accessKeys.hashes[0]=sha256:{'0' * 64}")
    assert '/v1/models -H "Authorization: Bearer $ACCESS_KEY"' in guarded


def test_autoscaling_minimum_above_maximum_is_refused(helm: str) -> None:
    out = run(
        [helm, "template", "rel", str(CHART), "--set", "autoscaling.enabled=true",
         "--set", "autoscaling.minReplicas=20", "--set", "autoscaling.maxReplicas=10"]
    )  # fmt: skip
    assert out.returncode != 0
    assert "autoscaling.minReplicas (20) is above autoscaling.maxReplicas (10)" in out.stderr


@pytest.mark.parametrize("size", ["64Mi", "64M", "1Gi", "500k"])
def test_tmp_size_limit_takes_kubernetes_quantities(helm: str, size: str) -> None:
    dep = by_kind(docs(render(helm, "--set", f"tmpSizeLimit={size}")))["Deployment"]
    (tmp,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"] == size


def test_shm_size_limit_mounts_a_memory_backed_dev_shm(helm: str) -> None:
    """The bucket tables' room (docs/ratelimit.md): the runtime's own /dev/shm unless sized."""
    default = by_kind(docs(render(helm)))["Deployment"]["spec"]["template"]["spec"]
    assert "shm" not in [v["name"] for v in default["volumes"]]
    assert "/dev/shm" not in [m["mountPath"] for m in default["containers"][0]["volumeMounts"]]
    pod = by_kind(docs(render(helm, "--set", "shmSizeLimit=256Mi")))["Deployment"]["spec"][
        "template"
    ]["spec"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "shm"]
    assert mount["mountPath"] == "/dev/shm"


def test_access_keys_are_stored_as_hashes_mounted_and_named(
    renders: dict[str, str], helm: str
) -> None:
    """A shared deployment needs its keys file in the pod: the root filesystem is read-only
    and only /tmp and the profile were mounted (found by the access review)."""
    objs = by_kind(docs(renders["access-keys"]))
    values = yaml.safe_load((CHART / "ci" / "access-keys-values.yaml").read_text())
    keys = objs["ConfigMap/access-keys"]
    assert keys["data"]["access-keys"].split() == values["accessKeys"]["hashes"]
    path = objs["ConfigMap"]["data"]["API_ROUTER_ACCESS_KEYS_FILE"]
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "access-keys")
    assert mount["readOnly"] is True and path == mount["mountPath"] + "/access-keys"
    (vol,) = [v for v in spec["volumes"] if v["name"] == "access-keys"]
    assert vol["configMap"]["name"] == keys["metadata"]["name"]
    # in the template whose checksum rolls the pods: the router reads the file at start
    objs_b = by_kind(docs(render(helm, "-f", str(CHART / "ci" / "access-keys-values.yaml"),
                                 "--set", "accessKeys.hashes[0]=sha256:" + "0" * 64)))  # fmt: skip
    before = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = objs_b["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert before != after
    # an existing Secret instead: mounted from it, no ConfigMap made
    objs = by_kind(docs(render(helm, "--set", "accessKeys.existingSecret=team-keys")))
    assert "ConfigMap/access-keys" not in objs
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "access-keys"]
    assert vol["secret"] == {
        "secretName": "team-keys",
        "items": [{"key": "access-keys", "path": "access-keys"}],
    }
    assert "API_ROUTER_ACCESS_KEYS_FILE" in objs["ConfigMap"]["data"]
    # and none of it without access keys
    assert (
        "API_ROUTER_ACCESS_KEYS_FILE" not in by_kind(docs(renders["defaults"]))["ConfigMap"]["data"]
    )


def test_inline_profile_is_stored_and_mounted(renders: dict[str, str]) -> None:
    objs = by_kind(docs(renders["inline-profile"]))
    data = objs["ConfigMap"]["data"]
    files = objs["ConfigMap/config-files"]
    inline = yaml.safe_load((CHART / "ci" / "inline-profile-values.yaml").read_text())
    assert json.loads(files["data"]["profile.json"]) == inline["profile"]["inline"]
    # The file is not in the ConfigMap read whole into the environment (envFrom): a large one
    # would make the environment too big for the container to start.
    assert "profile.json" not in data
    assert data["API_ROUTER_CONFIG_PATH"] == "/etc/api-router/profile.json"
    assert "API_ROUTER_PROFILE" not in data
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["envFrom"] == [{"configMapRef": {"name": objs["ConfigMap"]["metadata"]["name"]}}]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "profile")
    assert mount == {"name": "profile", "mountPath": "/etc/api-router", "readOnly": True}
    (vol,) = [v for v in spec["volumes"] if v["name"] == "profile"]
    assert vol["configMap"]["name"] == files["metadata"]["name"]
    # drainSeconds 60 -> a longer grace period.
    assert spec["terminationGracePeriodSeconds"] >= 60


def test_a_routing_file_is_stored_mounted_and_its_keys_come_from_secrets(
    renders: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.config.loader import load_file

    objs = by_kind(docs(renders["routing"]))
    data = objs["ConfigMap"]["data"]
    files = objs["ConfigMap/config-files"]["data"]
    values = yaml.safe_load((CHART / "ci" / "routing-values.yaml").read_text())
    assert json.loads(files["routing.json"]) == values["profile"]["routing"]
    assert set(files) == {"routing.json"}
    assert data["API_ROUTER_CONFIG_PATH"] == "/etc/api-router/routing.json"
    assert "API_ROUTER_PROFILE" not in data and "routing.json" not in data
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert {"name": "profile", "mountPath": "/etc/api-router", "readOnly": True} in c[
        "volumeMounts"
    ]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "profile"]
    assert vol["configMap"]["items"] == [{"key": "routing.json", "path": "routing.json"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "provider-keys",
        "key": "openai",
    }
    # the rendered file is one the router loads (with the key the Secret would provide)
    path = tmp_path / "routing.json"
    path.write_text(files["routing.json"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-secret")
    cfg = load_file(path)
    assert cfg.routing is not None and set(cfg.routing.upstreams) == {"openai", "local"}


# A value the schema bounds, the variable the chart renders it into, and the router's maximum.
ROUTER_MAXIMA = [
    ("router.maxBodyBytes", "API_ROUTER_MAX_BODY_BYTES", 2**40),
    ("router.rateLimit.burst", "RATE_LIMIT_BURST", 10**9),
    ("router.tokenLimit.tokensPerMinute", "TOKEN_LIMIT_TOKENS_PER_MINUTE", 10**12),
    ("router.tokenLimit.burst", "TOKEN_LIMIT_BURST", 10**12),
    ("router.tokenBudgets.daily", "TOKEN_BUDGET_DAILY", 10**15),
    ("router.tokenBudgets.monthly", "TOKEN_BUDGET_MONTHLY", 10**15),
]


def test_the_schema_maxima_are_the_router_s(helm: str) -> None:
    """Each bounded value at its maximum renders, and the router takes the rendered variable;
    one more the router refuses (and the schema too: test_values_schema_rejects_bad_values).
    A unix:// Redis URL, which the router takes (service/ratelimit/bucket.py REDIS_SCHEMES),
    renders as well (the schema once allowed redis:// and rediss:// only)."""
    from service.ratelimit.bucket import REDIS_SCHEMES
    from service.settings import Settings, SettingsError

    sets = [a for path, _, top in ROUTER_MAXIMA for a in ("--set", f"{path}={top}")]
    text = render(helm, *sets, "--set", "redis.url=unix:///run/redis/redis.sock")
    manifests = docs(text)
    data = by_kind(manifests)["ConfigMap"]["data"]
    secret = by_kind(manifests)["Secret"]
    assert secret["data"]["RATE_LIMIT_BACKEND"] == "dW5peDovLy9ydW4vcmVkaXMvcmVkaXMuc29jaw=="
    assert "unix://" in REDIS_SCHEMES
    env = {name: data[name] for _, name, _ in ROUTER_MAXIMA}
    assert env == {name: str(top) for _, name, top in ROUTER_MAXIMA}
    Settings.from_env(env, profile_path=Path())
    for _, name, top in ROUTER_MAXIMA:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({**env, name: str(top + 1)}, profile_path=Path())


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("router.workers=0", "router.workers"),
        ("router.port=http", "router.port"),
        ("router.logLevel=verbose", "router.logLevel"),
        ("redis.url=http://redis:6379", "redis.url"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("router.forwardedHeaders=trust", "router.forwardedHeaders"),
        ("router.tokenLimit.tokensPerMinute=-1", "router.tokenLimit.tokensPerMinute"),
        # One past the router's own maximum (service/settings.py): the pods would exit 2 at
        # start, in a crash loop (test_the_schema_maxima_are_the_router_s below).
        *((f"{path}={top + 1}", path) for path, _, top in ROUTER_MAXIMA),
        ("router.tokenBudgets.weekly=5", "router.tokenBudgets"),
        ("tracing.sampler=sometimes", "tracing.sampler"),
        ("tracing.enabled=true", "tracing.endpoint"),  # on, but exporting nowhere
        ("profile.inline.name=x", "profile.inline"),  # an inline profile needs a baseUrl
        ("profile.routing.name=x", "profile.routing"),  # a routing file needs its routes
        ("profile.upstreamKeys[0].env=OPENAI_API_KEY", "profile.upstreamKeys"),
        ("unknownKey=1", "unknownKey"),
        # The latency histogram's highest finite bucket is 10 s: an alert at 10 or more is dead.
        ("metrics.prometheusRule.p99LatencySeconds=10", "p99LatencySeconds"),
        ("metrics.prometheusRule.overheadP99Seconds=0.1", "overheadP99Seconds"),
        ("podDisruptionBudget.minAvailable=abc", "podDisruptionBudget.minAvailable"),
        # a key pasted in clear where its hash belongs
        ("accessKeys.hashes[0]=sk-live-pasted-in-clear", "accessKeys.hashes"),
        ("shmSizeLimit=lots", "shmSizeLimit"),
    ],
)
def test_values_schema_rejects_bad_values(helm: str, setting: str, message: str) -> None:
    out = run([helm, "template", "rel", str(CHART), "--set", setting])
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr


# -- the rendered Deployment + ConfigMap, run by podman kube play ------------------------------


def playable(helm: str, image: str, port: int, *args: str) -> str:
    """The Deployment and ConfigMap of a render, on `image`, reachable on 127.0.0.1:port."""
    repo, _, tag = image.rpartition(":")
    text = render(
        helm,
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", "--set", "replicaCount=1",
        "--show-only", "templates/configmap.yaml", "--show-only", "templates/deployment.yaml",
        *args,
        release="kube-play",
    )  # fmt: skip
    manifests = docs(text)
    deployment = by_kind(manifests)["Deployment"]
    (container_port,) = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    container_port.update({"hostPort": port, "hostIP": "127.0.0.1"})
    return yaml.safe_dump_all(manifests)


@pytest.fixture
def kube_play(tmp_path: Path) -> Iterator[Any]:
    """`podman kube play --replace` of a release with a fixed name: one test process at a time
    (`make test` runs two), or one would replace the other's pod."""
    with machine_lock("kube-play"):
        yield from _kube_play(tmp_path)


def _kube_play(tmp_path: Path) -> Iterator[Any]:
    played: list[Path] = []

    def play(text: str) -> None:
        path = tmp_path / f"play-{len(played)}.yaml"
        path.write_text(text)
        played.append(path)
        podman("kube", "play", "--replace", str(path), timeout=180)

    _clear_kube_play()
    yield play
    for path in played:
        podman("kube", "down", str(path), check=False)
    _clear_kube_play()


def _clear_kube_play(release: str = "kube-play") -> None:
    """What `kube down` leaves of a release: its ConfigMap volumes (podman 4.3 keeps them), and
    a container that exists only in storage (a `kube play` killed by its timeout). A volume left
    from an earlier run, its lock gone with a reboot of the machine, made the next `kube play`
    of the same ConfigMap hang (CI, 2026-12-03), and the storage leftover then failed every
    later play with "name already in use"."""
    names = podman("volume", "ls", "--format", "{{.Name}}", timeout=30).stdout.split()
    doomed = [n for n in names if n.startswith(f"{release}-api-router-")]
    if doomed:  # removed even when podman then reports the lost lock
        podman("volume", "rm", "--force", *doomed, check=False, timeout=30)
    leftover = f"{release}-api-router-pod-0-api-router"
    listed = podman(
        "ps", "--all", "--external", "--filter", f"name=^{leftover}$", "--format", "{{.ID}}",
        timeout=30,
    )  # fmt: skip
    for cid in listed.stdout.split():
        podman("rm", "--force", "--storage", cid, check=False, timeout=30)


def pod_logs(release: str = "kube-play") -> str:
    out = podman("pod", "logs", f"{release}-api-router-pod-0", check=False)
    return out.stdout[-3000:] + out.stderr[-1000:]


def play_ready(helm: str, kube_play: Any, values: str | None = None) -> str:
    """Play the render (with `ci/<values>` when given) and wait until it is ready: its URL."""
    port = free_port()
    args = ("-f", str(CHART / "ci" / values)) if values else ()
    kube_play(playable(helm, built_image(), port, *args))
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", timeout=60)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{pod_logs()}") from None
    return f"http://127.0.0.1:{port}"


@pytest.mark.podman
def test_kube_play_runs_the_default_render(helm: str, kube_play: Any) -> None:
    url = play_ready(helm, kube_play)
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["profile"] == "qwen"
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200, f"{metrics.text}\n{pod_logs()}"
    assert "# TYPE requests_total counter" in metrics.text
    # The pod's container really is read-only and non-root, as the chart asks.
    ps = podman(
        "ps", "--filter", "name=kube-play-api-router-pod-0-api-router", "--format", "{{.ID}}"
    )
    cid = ps.stdout.split()[0]
    info = json.loads(podman("inspect", cid).stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"].split(":")[0] == "10001"


@pytest.mark.podman
def test_kube_play_serves_an_inline_profile_from_the_config_map(helm: str, kube_play: Any) -> None:
    url = play_ready(helm, kube_play, "inline-profile-values.yaml")
    health = httpx.get(f"{url}/health").json()
    assert health["profile"] == "local-vllm"
    models = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert "meta-llama/Llama-3.1-8B-Instruct" in models


@pytest.mark.podman
def test_kube_play_admits_only_the_access_keys(helm: str, kube_play: Any) -> None:
    """The keys file mounted from the chart's ConfigMap is the one the router reads: a /v1
    request without a key is 401, with the key of access-keys-values.yaml it is answered."""
    url = play_ready(helm, kube_play, "access-keys-values.yaml") + "/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-this-one"}).status_code == 401
    ok = httpx.get(url, headers={"Authorization": "Bearer sk-chart-access-1"})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
