"""The dashboard and the alert rules against a real Prometheus scraping the real services.

The three services run on the tiny model as processes on loopback (a small KV-cache budget, so
memory-driven decision points and prunes happen), a real Prometheus scrapes them every second with
the job names of deploy/prometheus/prometheus.yml and loads deploy/prometheus/alerts.yml, and real
requests go through the coordinator's gRPC API. Then every PromQL expression of the Grafana
dashboard must return data, and every alert rule must be loaded and evaluate without error.

Prometheus is the Debian package `prometheus`; a missing one fails the test (it is never skipped).
"""
import contextlib
import json
import math
import pathlib
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml

from common.local_stack import Service, free_port, stop_process

from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "specrej-dashboard.json"
SCRAPE_SECONDS = 1

# Job name in deploy/prometheus/prometheus.yml -> the service module it scrapes.
JOBS = {"specrej-coordinator": "coordinator", "specrej-generator": "generator_service",
        "specrej-reward": "reward_service"}

# Series that exist only on a GPU node: NVIDIA's DCGM exporter, and the device gauges the services
# export only when they run on CUDA (common/metrics.py DeviceCollector).
GPU_ONLY_METRICS = {
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE",
    "specrej_device_memory_allocated_bytes", "specrej_device_memory_reserved_bytes",
    "specrej_gpu_utilization_ratio",
}


PROMPT = "Write a short poem about the sea."


# --- the dashboard's expressions ---------------------------------------------------------------

def _panels(panels):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows that are collapsed hold their panels


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) of every Prometheus target in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel.get("title", "?"), target.get("refId", "?"), target["expr"])
            for panel in _panels(dashboard["panels"]) for target in panel.get("targets", []) if target.get("expr")]


def substitute(expr: str, window: str) -> str:
    """The expression as Grafana sends it with every variable at All and the given range."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {"__rate_interval": window, "__interval": window, "__range": window}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            values[variable["name"]] = variable["allValue"] if variable.get("includeAll") else ".*"

    def value(match):
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(DCGM_\w+|specrej_\w+|process_\w+)\b", expr))


def gpu_only(expr: str) -> bool:
    return bool(metric_names(expr) & GPU_ONLY_METRICS)


def unchecked(expr: str) -> bool:
    return gpu_only(expr)


# --- Prometheus --------------------------------------------------------------------------------

class Prometheus:
    """A real Prometheus server: temporary data folder, loopback port, 1 s scrapes and rule evaluations."""

    def __init__(self, binary: str, folder: pathlib.Path, targets: dict[str, str]):
        shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        shipped_jobs = {job["job_name"] for job in shipped["scrape_configs"]}
        assert set(JOBS) <= shipped_jobs, f"deploy/prometheus/prometheus.yml lacks jobs {set(JOBS) - shipped_jobs}"
        assert shipped["rule_files"] == ["alerts.yml"], shipped["rule_files"]
        self.port = free_port()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s",
                       "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [targets[job]]}]} for job in JOBS],
        }
        config_path = folder / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = folder / "prometheus.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready in {timeout}s:\n{self.log()[-3000:]}")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query is a 400 with a JSON error body
            body = json.load(error)
        return body

    def query(self, expr: str, at: float) -> dict:
        return self.api("query", query=expr, time=f"{at:.3f}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# --- the scraped stack -------------------------------------------------------------------------

def send_traffic(channel: grpc.Channel) -> tuple[list[str], list[str]]:
    """Speculative Rejection (memory-driven, every 8 tokens, explicit points; unary and streaming),
    Best-of-N, and one invalid request. Returns the status codes seen and the errors' messages."""
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    requests = [
        # n = 0: as many candidates as the KV-cache budget allows, memory-driven decision points.
        pb.GenerateRequest(prompt=PROMPT, n=0, method=pb.SPECULATIVE_REJECTION, max_new_tokens=40, seed=1,
                           first_decision_tokens=0),
        pb.GenerateRequest(prompt=PROMPT, n=16, method=pb.SPECULATIVE_REJECTION, max_new_tokens=40,
                           decision_every_tokens=8, seed=2),
        pb.GenerateRequest(prompt=PROMPT, n=8, method=pb.BEST_OF_N, max_new_tokens=24, seed=3),
        pb.GenerateRequest(prompt="", n=4, max_new_tokens=8),  # INVALID_ARGUMENT
    ]
    codes, messages = [], []
    for request in requests:
        try:
            response = stub.Generate(request, timeout=60)
            assert response.best.num_tokens > 0, response
            if request.n == 0:  # the paper's rule: decision points when the KV cache is full
                assert "memory" in {r.trigger for r in response.stats.rounds}, response.stats
            codes.append("OK")
        except grpc.RpcError as error:
            codes.append(error.code().name)
            messages.append(f"{error.code().name}: {error.details()}")
    events = list(stub.GenerateStream(pb.GenerateRequest(prompt=PROMPT, n=16, max_new_tokens=32,
                                                         decision_points=[4, 12, 24], seed=4), timeout=60))
    assert events and events[-1].HasField("result"), events
    codes.append("OK")
    return codes, messages


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, tmp_path_factory):
    """The stack, Prometheus scraping it, the time it was seen idle, and the time after traffic."""
    binary = shutil.which("prometheus")
    if not binary:  # checked first: no services are started for nothing
        pytest.fail("prometheus is not installed; install it with: apt-get install -y --no-install-recommends prometheus")
    folder = tmp_path_factory.mktemp("prometheus-scrape")
    with contextlib.ExitStack() as cleanup:
        def start(module, *args, wait=True):
            service = Service(module, *args, log_dir=folder, wait=False)
            cleanup.callback(service.stop)
            if wait:
                service.wait_serving()
            return service

        generator = start("generator_service", "--model", str(tiny_model_dir), "--kv-cache-budget", "256KiB",
                          "--max-sessions", "2", wait=False)
        reward = start("reward_service", "--model", str(tiny_model_dir), wait=False)
        generator.wait_serving()
        reward.wait_serving()
        coordinator = start("coordinator", "--generator", generator.address, "--reward", reward.address)
        services = {"specrej-coordinator": coordinator, "specrej-generator": generator, "specrej-reward": reward}

        prometheus = Prometheus(binary, folder, {job: f"127.0.0.1:{s.metrics_port}" for job, s in services.items()})
        cleanup.callback(prometheus.stop)
        prometheus.wait_ready()

        def all_scraped():
            result = prometheus.query('up{job=~"specrej-.*"} == 1', time.time())
            return result.get("status") == "success" and len(result["data"]["result"]) == len(JOBS)

        wait_until(all_scraped, 30, "a successful scrape of every specrej target")
        idle_at = time.time()

        channel = cleanup.enter_context(grpc.insecure_channel(coordinator.address))
        codes, messages = [], []
        for _ in range(2):  # twice, more than a scrape apart, so every rate() sees an increase
            new_codes, new_messages = send_traffic(channel)
            codes += new_codes
            messages += new_messages
            time.sleep(1.5 * SCRAPE_SECONDS)
        # Let the last increments be scraped, and the rules be evaluated on them.
        time.sleep(2.5 * SCRAPE_SECONDS)
        done_at = time.time()
        yield {"prometheus": prometheus, "services": services, "idle_at": idle_at, "done_at": done_at,
               "codes": codes, "messages": messages}


def _failure(title, ref, expr, promql, result) -> str:
    return f"panel {title!r} ({ref}): {expr}\n    sent: {promql}\n    got: {json.dumps(result)[:400]}"


def test_traffic_had_successes_and_an_invalid_argument(scraped):
    assert scraped["codes"].count("INVALID_ARGUMENT") == 2, scraped["messages"]
    assert scraped["codes"].count("OK") == len(scraped["codes"]) - 2, scraped["messages"]


def test_every_dashboard_query_returns_data(scraped):
    prometheus, at = scraped["prometheus"], scraped["done_at"]
    # A window over the whole run, from before the first request: every rate() has many samples.
    window = f"{math.ceil(at - scraped['idle_at']) + 5 * SCRAPE_SECONDS}s"
    queries = dashboard_queries()
    assert queries, "the dashboard has no Prometheus targets"
    excluded = [(title, expr) for title, _, expr in queries if gpu_only(expr)]
    assert {m for _, e in excluded for m in metric_names(e)} & GPU_ONLY_METRICS == GPU_ONLY_METRICS, \
        "a GPU-only exclusion no longer appears in the dashboard; drop it from GPU_ONLY_METRICS"
    failures = []
    for title, ref, expr in queries:
        if unchecked(expr):
            continue
        promql = substitute(expr, window)
        result = prometheus.query(promql, at)
        if result.get("status") != "success":
            failures.append("query failed: " + _failure(title, ref, expr, promql, result))
            continue
        series = result["data"]["result"]
        if not series:
            failures.append("no series: " + _failure(title, ref, expr, promql, result))
        elif not any(math.isfinite(float(s["value"][1])) for s in series):
            failures.append("only NaN/Inf values: " + _failure(title, ref, expr, promql, result))
    assert not failures, (f"{len(failures)} dashboard queries without data (GPU-only, not checked: "
                          f"{sorted({t for t, _ in excluded})}):\n" + "\n".join(failures))


def test_gauge_panels_have_data_before_the_first_request(scraped):
    """A freshly started stack shows zeros, not 'No data', in every panel that plots a gauge."""
    prometheus, at = scraped["prometheus"], scraped["idle_at"]
    gauges = [(title, ref, expr) for title, ref, expr in dashboard_queries()
              if not unchecked(expr) and not re.search(r"\[\$__\w+\]", expr)]  # range vectors need traffic
    assert {title for title, _, _ in gauges} >= {"Requests in flight and queued", "KV-cache usage", "Build info"}
    failures = []
    for title, ref, expr in gauges:
        promql = substitute(expr, "1m")
        result = prometheus.query(promql, at)
        if result.get("status") != "success" or not result["data"]["result"]:
            failures.append(_failure(title, ref, expr, promql, result))
    assert not failures, "gauge panels with no data on an idle stack:\n" + "\n".join(failures)
