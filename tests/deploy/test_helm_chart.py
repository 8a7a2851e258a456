"""The Helm chart (deploy/helm/herd), checked offline: `helm lint` and `helm template` over the
defaults and the value sets in ci/, every rendered object validated against the Kubernetes JSON
schemas (kubernetes-validate, strict), and assertions on what matters for herd: probes, grace
period vs drain, preStop, PDBs, the NetworkPolicy, least-privilege RBAC, autoscaling on
target_load with the autoscaler's windows, GPU limits. No cluster runs here (see docs/deploy.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from herd.fleet.config import AutoscaleConfig
from herd.gateway.config import GatewayConfig
from herd.server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "herd"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the chart promises beyond its kubeVersion floor
NAMESPACE = "llm"
SETS = ["default", "cpu", "gpu", "keda"]
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}  # custom: checked by validate_crds.mjs instead


def helm_binary() -> str:
    for candidate in (
        os.environ.get("HERD_BIN_DIR", str(Path.home() / ".cache/herd/bin")) + "/helm",
        shutil.which("helm") or "",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("helm is missing: run `bash scripts/helm.sh` (make test does)")


def helm(*args: str) -> str:
    out = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def values_args(name: str) -> list[str]:
    return [] if name == "default" else ["-f", str(CHART / "ci" / f"{name}-values.yaml")]


def values(name: str) -> dict:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if name != "default":
        _merge(base, yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()))
    return base


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def validate_custom(objects: list[dict]) -> subprocess.CompletedProcess:
    """Run validate_crds.mjs (node) over custom resources."""
    tools = Path(os.environ.get("HERD_CHART_TOOLS", Path.home() / ".cache/herd/chart-tools"))
    node = shutil.which("node")
    if node is None or not (tools / "node_modules").is_dir():
        pytest.fail("node or the CRD schemas are missing: run `bash scripts/helm.sh`")
    script = Path(__file__).with_name("validate_crds.mjs")
    return subprocess.run(
        [node, str(script), str(tools)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
    )


class Rendered:
    """One value set's objects, found by kind and component."""

    def __init__(self, name: str):
        self.name = name
        self.values = values(name)
        text = helm("template", "rel", str(CHART), "-n", NAMESPACE, *values_args(name))
        self.objects = [o for o in yaml.safe_load_all(text) if o]

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict:
        found = [
            o
            for o in self.all(kind)
            if component is None
            or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} objects for {component}"
        return found[0]

    def container(self, component: str) -> dict:
        return self.one("Deployment", component)["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module", params=SETS)
def rendered(request) -> Rendered:
    return _cache(request.param)


_RENDERED: dict[str, Rendered] = {}


def _cache(name: str) -> Rendered:
    if name not in _RENDERED:
        _RENDERED[name] = Rendered(name)
    return _RENDERED[name]


@pytest.mark.parametrize("name", SETS)
def test_helm_lint(name):
    helm("lint", "--strict", str(CHART), *values_args(name))


def test_every_object_matches_the_kubernetes_schema(rendered):
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_custom_resources_match_their_crd_schemas(rendered):
    """ServiceMonitor and ScaledObject against their CRDs' schemas (npm @kubernetes-models/*)."""
    custom = [o for o in rendered.objects if o["kind"] in CRD_KINDS]
    if custom:
        out = validate_custom(custom)
        assert out.returncode == 0, out.stdout + out.stderr


def test_crd_validator_rejects_a_wrong_type():
    monitor = _cache("cpu").one("ServiceMonitor", "gateway")
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["interval"] = 15  # a duration string in the CRD
    out = validate_custom([broken])
    assert out.returncode == 1 and "interval" in out.stdout


def test_every_object_is_namespaced_in_the_release(rendered):
    kinds = {o["kind"] for o in rendered.objects}
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert {"Deployment", "Service", "ConfigMap"} <= kinds


def test_replica_probes_hit_herd_routes(rendered):
    c = rendered.container("replica")
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    # Liveness starts once the model is loaded and warmed; loading may take minutes (five at least).
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    assert c["ports"][0]["containerPort"] == rendered.values["replica"]["port"]


def test_grace_period_outlasts_prestop_plus_drain(rendered):
    r = rendered.values["replica"]
    pod = rendered.one("Deployment", "replica")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    assert drain == r["drain_timeout"]
    sleep = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert sleep == r["pre_stop_sleep_s"] > 0
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    gw = rendered.one("Deployment", "gateway")["spec"]["template"]["spec"]
    gw_sleep = int(gw["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    config = yaml.safe_load(rendered.one("ConfigMap", "gateway")["data"]["gateway.yaml"])
    gw_drain = config["gateway"]["drain_timeout_s"]
    assert gw_drain == rendered.values["gateway"]["drain_timeout"]
    assert gw["terminationGracePeriodSeconds"] > gw_sleep + gw_drain


def test_default_drain_timeout_is_herds_own():
    # The chart's default must be what `herd replica` does without the flag (one fact, two places).
    default = ServerConfig.__dataclass_fields__["drain_timeout"].default
    assert values("default")["replica"]["drain_timeout"] == default
    assert values("default")["gateway"]["drain_timeout"] == GatewayConfig().drain_timeout_s


def test_replica_service_is_headless_and_gateway_discovers_it(rendered):
    svc = rendered.one("Service", "replica")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is False
    config = yaml.safe_load(rendered.one("ConfigMap", "gateway")["data"]["gateway.yaml"])
    url = config["gateway"]["discovery"]["url"]
    name, port = svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]
    mode = rendered.values["gateway"]["discovery"]
    expected = {
        "k8s": f"k8s://{NAMESPACE}/{name}:{port}",
        "dns": f"dns://{name}.{NAMESPACE}.svc.cluster.local:{port}",
    }[mode]
    assert url == expected


def test_gateway_config_is_valid_herd_config(rendered, tmp_path):
    from herd.fleet.config import load_serve_config

    path = tmp_path / "gateway.yaml"
    path.write_text(rendered.one("ConfigMap", "gateway")["data"]["gateway.yaml"])
    config = load_serve_config(path).gateway
    assert config.host == "0.0.0.0" and config.redis.startswith("redis://")
    assert rendered.one("Deployment", "gateway")["spec"]["replicas"] >= 2


def test_pdbs_select_their_pods(rendered):
    for component in ("replica", "gateway"):
        pdb = rendered.one("PodDisruptionBudget", component)
        pod_labels = rendered.one("Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert rendered.one("PodDisruptionBudget", "replica")["spec"]["maxUnavailable"] >= 1


def test_network_policy_admits_only_gateways_to_replicas(rendered):
    policy = rendered.one("NetworkPolicy", "replica")
    replica_labels = rendered.one("Deployment", "replica")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = rendered.one("Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= replica_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    pod_peers = [p for p in rule["from"] if "podSelector" in p]
    assert len(pod_peers) == 1
    allowed = pod_peers[0]["podSelector"]["matchLabels"]
    assert allowed.items() <= gateway_labels.items()
    assert not allowed.items() <= replica_labels.items()
    # Every other peer is the metrics namespace only, never an empty selector (= everyone).
    for peer in rule["from"]:
        if "podSelector" not in peer:
            assert peer["namespaceSelector"]["matchLabels"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_rbac_is_get_list_watch_endpointslices_only(rendered):
    if not rendered.values["rbac"]["create"]:
        assert not rendered.all("Role") and not rendered.all("RoleBinding")
        return
    role = rendered.one("Role")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    pod = rendered.one("Deployment", "gateway")["spec"]["template"]["spec"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    assert pod["automountServiceAccountToken"] is True
    replica_pod = rendered.one("Deployment", "replica")["spec"]["template"]["spec"]
    assert replica_pod["automountServiceAccountToken"] is False


def _behavior_matches(behavior: dict, a: dict) -> None:
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == a["scale_up_window_s"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == a["scale_down_window_s"]
    assert behavior["scaleUp"]["policies"][0]["value"] == a["max_scale_up_step"]
    assert behavior["scaleDown"]["policies"][0]["value"] == a["max_scale_down_step"]


def test_autoscaler_uses_herds_signal_target_and_windows(rendered):
    a = rendered.values["autoscale"]
    AutoscaleConfig(**{k: v for k, v in a.items() if k in AutoscaleConfig.__dataclass_fields__})
    hpas, scaled = rendered.all("HorizontalPodAutoscaler"), rendered.all("ScaledObject")
    deployment = rendered.one("Deployment", "replica")
    if not a["enabled"]:
        assert not hpas and not scaled
        assert deployment["spec"]["replicas"] == rendered.values["replica"]["replicas"]
        return
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    if a["kind"] == "hpa":
        (hpa,) = hpas
        assert not scaled
        spec = hpa["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (a["min_replicas"], a["max_replicas"])
        (metric,) = spec["metrics"]
        assert metric["external"]["metric"]["name"] == "herd_gateway_load_per_replica"
        assert metric["external"]["target"] == {"type": "Value", "value": str(a["target_load"])}
        _behavior_matches(spec["behavior"], a)
        target = spec["scaleTargetRef"]
    else:
        (obj,) = scaled
        assert not hpas
        spec = obj["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
            a["min_replicas"],
            a["max_replicas"],
        )
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
        assert "herd_gateway_load_per_replica" in trigger["metadata"]["query"]
        assert float(trigger["metadata"]["threshold"]) == a["target_load"]
        assert spec["cooldownPeriod"] == a["idle_timeout_s"]
        if a["min_replicas"] == 0:  # requests must outwait a cold start in the gateway's queue
            gw = yaml.safe_load(rendered.one("ConfigMap", "gateway")["data"]["gateway.yaml"])
            assert gw["gateway"]["proxy"]["queue_timeout_s"] >= 120
        _behavior_matches(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"], a)
        target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]


def test_default_autoscale_values_are_herds_defaults():
    a = values("default")["autoscale"]
    defaults = AutoscaleConfig()
    for name, value in a.items():
        if name in AutoscaleConfig.__dataclass_fields__ and name != "enabled":
            assert value == getattr(defaults, name), name


def test_gpu_set_requests_gpus_on_gpu_nodes():
    r = _cache("gpu")
    c = r.container("replica")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith("-cuda")
    pod = r.one("Deployment", "replica")["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] and pod["affinity"]
    assert "nvidia.com/gpu" not in str(_cache("cpu").container("replica")["resources"])


def test_ingress_has_tls_from_cert_manager():
    ingress = _cache("gpu").one("Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    assert ingress["spec"]["tls"][0]["hosts"] == ["llm.example.org"]
    assert not _cache("default").all("Ingress")


def test_api_keys_and_admin_key_come_from_secrets():
    gpu = _cache("gpu").one("Deployment", "gateway")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in gpu["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "herd-api-keys"
    env = {e["name"]: e for e in gpu["containers"][0]["env"]}
    assert env["HERD_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "herd-admin"
    cpu = _cache("cpu")
    (secret,) = cpu.all("Secret")
    assert "keys.yaml" in secret["stringData"]
    assert "--api-keys" in cpu.container("gateway")["args"]


def test_redis_is_the_charts_own_or_external():
    default, cpu = _cache("default"), _cache("cpu")
    assert default.one("Deployment", "redis")
    assert default.one("NetworkPolicy", "redis")
    assert not [d for d in cpu.all("Deployment") if "redis" in d["metadata"]["name"]]
    gw = yaml.safe_load(cpu.one("ConfigMap", "gateway")["data"]["gateway.yaml"])["gateway"]
    assert gw["redis"] == "redis://redis.shared.svc:6379/2"


def test_monitoring_toggles():
    assert not _cache("default").all("ServiceMonitor")
    monitors = _cache("cpu").all("ServiceMonitor")
    assert {m["spec"]["endpoints"][0]["path"] for m in monitors} == {"/metrics"}
    assert len(monitors) == 2
    (dashboard,) = [c for c in _cache("cpu").all("ConfigMap") if "herd.json" in c["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_bad_values_fail_the_render():
    for bad in (
        ["--set", "autoscale.min_replicas=0"],  # scale to zero needs KEDA
        ["--set", "gateway.discovery=consul"],
        ["--set", "autoscale.kind=vpa"],
    ):
        out = subprocess.run(
            [helm_binary(), "template", "rel", str(CHART), *bad], capture_output=True, text=True
        )
        assert out.returncode != 0, bad


def _dashboard_metrics() -> set[str]:
    import re

    dashboard = json.loads((CHART / "dashboards" / "herd.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {re.sub(r"_(bucket|total)$", "", m) for e in exprs for m in re.findall(r"herd_\w+", e)}


def test_dashboard_and_autoscalers_read_metrics_herd_exports():
    """Every series the dashboard and the autoscalers query is one herd really exports: the
    gateway's from a live render of its registry, the replica's from herd.server.metrics."""
    from herd.gateway.metrics import GatewayMetrics
    from herd.gateway.replicas import ReplicaSet

    gateway = GatewayMetrics().render(ReplicaSet(), 0).decode()
    replica_source = (ROOT / "src" / "herd" / "server" / "metrics.py").read_text()
    names = _dashboard_metrics()
    assert {"herd_time_to_first_token_seconds", "herd_inter_token_latency_seconds"} <= names
    assert {"herd_generation_tokens", "herd_kv_cache_usage_ratio", "herd_gateway_replicas"} <= names
    for name in names | {"herd_gateway_load_per_replica"}:
        where = gateway if name.startswith("herd_gateway_") else replica_source
        assert f"{name}" in where, f"{name} is not exported by herd"
