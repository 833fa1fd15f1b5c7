"""The Grafana dashboard for the Speculative Rejection services, as Python.

`python deploy/generate.py` writes it to deploy/grafana/specrej-dashboard.json; edit this file,
not the JSON (tests/deploy checks that the two agree). Panels are listed row by row; the layout
(gridPos) and panel ids are computed.

Every query filters on `namespace=~"$namespace"` and `pod=~"$pod"`. Both variables default to All,
whose value is `.*`, which also matches a series without that label: the dashboard works on a
Kubernetes scrape (PodMonitor adds namespace and pod) and on the loopback demo scrape (neither).
The GPU (DCGM) queries filter through the services' own pods instead: see dcgm().
"""
import json

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SCOPE = 'namespace=~"$namespace", pod=~"$pod"'
# Health checks (probes, every few seconds) and reflection would swamp the API's calls.
API_CALLS = 'grpc_method!~"Check|Watch|ServerReflectionInfo"'
TOKENS_PER_SECOND = "suffix: tokens/s"


def sel(service: str | None = None, extra: str = "") -> str:
    """A label matcher: one service (or none), this dashboard's scope, anything extra."""
    parts = [f'service="{service}"'] if service else []
    parts.append(SCOPE)
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def dcgm(metric: str) -> str:
    """A DCGM exporter series for the GPUs of this dashboard's pods only, labelled with the pod
    that uses the GPU as `namespace` and `pod` whichever way the series were scraped.

    dcgm-exporter labels each GPU's series with the workload's namespace, pod and container.
    Scraped with honorLabels (or honor_labels) those stay `namespace` and `pod`; scraped through
    the GPU Operator's ServiceMonitor they clash with the target's own labels (the exporter's
    pod) and arrive as `exported_namespace` and `exported_pod`. The first branch copies the
    exported_* labels over the exporter's, the second takes series that have none; the `and`
    then keeps only GPUs whose pod is one of this service's (specrej_build_info), so neither
    other namespaces' GPUs nor idle ones show, even with the variables at All (`.*`, which also
    matches a missing label). A query rather than recording rules: the dashboard then works
    on any Prometheus that scrapes the exporter, without rules to deploy alongside it.
    """
    exported = metric + '{exported_pod!=""}'
    for label in ("namespace", "pod", "container"):
        exported = f'label_replace({exported}, "{label}", "$1", "exported_{label}", "(.+)")'
    return (f'({exported} or {metric}{{exported_pod=""}})'
            f" and on (namespace, pod) specrej_build_info{sel()}")


def quantile(q: float, histogram: str, matcher: str, by: str = "") -> str:
    group = ", ".join(["le", *[b.strip() for b in by.split(",") if b.strip()]])
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{matcher}[{RATE}])))"


def mean(histogram: str, matcher: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return (f"sum{grouping} (rate({histogram}_sum{matcher}[{RATE}]))"
            f" / sum{grouping} (rate({histogram}_count{matcher}[{RATE}]))")


def target(expr: str, legend: str = "", **extra) -> dict:
    return {"expr": expr, "legendFormat": legend, **extra}


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short", *,
               width: int = 8, min_value: float | None = 0, max_value: float | None = None,
               stack: bool = False) -> dict:
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "width": width,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def table(title: str, description: str, targets: list[dict], *, width: int = 24,
          hide: tuple[str, ...] = ()) -> dict:
    for t in targets:
        t.update(format="table", instant=True, range=False)
    return {
        "type": "table",
        "title": title,
        "description": description,
        "width": width,
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "filterable": True}}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}}},
        ],
        "targets": targets,
    }


def rows() -> list[tuple[str, list[dict]]]:
    coord = sel("coordinator")
    gen = sel("generator")
    rew = sel("reward")
    failed = sel("coordinator", 'code!="OK"')
    ok = sel("coordinator", 'code="OK"')
    api_calls = sel(extra=API_CALLS)
    return [
        ("Requests", [
            timeseries(
                "Request rate",
                "Requests finished per second at the coordinator (the public API), by method "
                "(SPECULATIVE_REJECTION or BEST_OF_N) and gRPC status code.",
                [target(f"sum by (method, code) (rate(specrej_requests_total{coord}[{RATE}]))",
                        "{{method}} {{code}}")],
                "reqps"),
            timeseries(
                "Error ratio",
                "Share of coordinator requests that ended with a status other than OK, by method. "
                "Includes callers' mistakes (INVALID_ARGUMENT, CANCELLED); the SpecRejHighErrorRate "
                "alert counts only server-side codes.",
                [target(f"sum by (method) (rate(specrej_requests_total{failed}[{RATE}]))"
                        f" / sum by (method) (rate(specrej_requests_total{coord}[{RATE}]))",
                        "{{method}}")],
                "percentunit", max_value=1),
            timeseries(
                "Errors by code",
                "Failed coordinator requests per second by gRPC status: UNAVAILABLE = a generator "
                "or reward service is down, RESOURCE_EXHAUSTED = overloaded (KV cache or queue "
                "full), DEADLINE_EXCEEDED = the caller's deadline passed, INVALID_ARGUMENT = bad "
                "request.",
                [target(f"sum by (code) (rate(specrej_requests_total{failed}[{RATE}]))", "{{code}}")],
                "reqps"),
            timeseries(
                "Request latency p50 / p95 / p99",
                "End-to-end time of a request at the coordinator, from arrival to the returned "
                "response, by method; quantiles estimated from the histogram buckets.",
                [target(quantile(q, "specrej_request_duration_seconds", coord, "method"),
                        f"p{round(q * 100)} {{{{method}}}}") for q in (0.5, 0.95, 0.99)],
                "s", width=12),
            timeseries(
                "Requests in flight and queued",
                "Requests the coordinator is working on, and requests waiting for capacity. A "
                "queue that does not drain means the generators cannot keep up.",
                [target(f"sum(specrej_requests_in_flight{coord})", "in flight"),
                 target(f"sum(specrej_requests_queued{coord})", "queued")],
                "short", width=12),
        ]),
        ("Speculative Rejection", [
            timeseries(
                "Rejection rate",
                "Share of ranked candidates rejected at decision points: rejected / ranked "
                "candidates per second. Close to the configured alpha when every round runs; "
                "0 for Best-of-N.",
                [target(f"sum(rate(specrej_candidates_rejected_total{coord}[{RATE}]))"
                        f" / sum(rate(specrej_candidates_ranked_total{coord}[{RATE}]))", "rejected")],
                "percentunit", max_value=1),
            timeseries(
                "Decision points per request",
                "Rounds of score-rank-reject per request (mean and p95), by method. Memory-driven "
                "schedules put them at roughly doubling lengths.",
                [target(mean("specrej_request_rounds", coord, "method"), "mean {{method}}"),
                 target(quantile(0.95, "specrej_request_rounds", coord, "method"), "p95 {{method}}")],
                "short"),
            timeseries(
                "Survivors per decision point",
                "Candidates kept at each decision point (p50, p95 and mean): the batch the "
                "generator continues with.",
                [target(quantile(0.5, "specrej_round_survivors", coord), "p50"),
                 target(quantile(0.95, "specrej_round_survivors", coord), "p95"),
                 target(mean("specrej_round_survivors", coord), "mean")],
                "short"),
            timeseries(
                "Reward of returned responses",
                "Score of the response returned to the caller (the best finished candidate), "
                "median and 10th/90th percentiles by method. Its scale is the reward model's (a "
                "log-likelihood with the default lm-logprob scorer, so negative). Compare methods "
                "at equal n. No mean: the histogram has negative buckets, so the Prometheus client "
                "exports no _sum for it (OpenMetrics).",
                [target(quantile(q, "specrej_response_reward", coord, "method"), f"p{round(q * 100)} {{{{method}}}}")
                 for q in (0.1, 0.5, 0.9)],
                "short", min_value=None),
            timeseries(
                "Decoded tokens per request",
                "Tokens generated per successful request, by method: the work Speculative "
                "Rejection saves compared with Best-of-N at the same n. Divided by the requests "
                "that ended OK, since refused and invalid requests decode nothing.",
                [target(f"sum by (method) (rate(specrej_decoded_tokens_total{coord}[{RATE}]))"
                        f" / sum by (method) (rate(specrej_requests_total{ok}[{RATE}]))",
                        "{{method}}")],
                "short"),
            timeseries(
                "Candidates per second",
                "Candidates ranked, kept and rejected per second at decision points.",
                [target(f"sum(rate(specrej_candidates_ranked_total{coord}[{RATE}]))", "ranked"),
                 target(f"sum(rate(specrej_candidates_kept_total{coord}[{RATE}]))", "kept"),
                 target(f"sum(rate(specrej_candidates_rejected_total{coord}[{RATE}]))", "rejected")],
                "short"),
            timeseries(
                "Time by stage",
                "Share of the coordinator's request time spent generating, scoring and "
                "coordinating (ranking, bookkeeping). Scoring dominating means the reward service "
                "is the bottleneck.",
                [target(f"sum by (stage) (rate(specrej_stage_seconds_total{coord}[{RATE}]))"
                        f" / ignoring (stage) group_left sum(rate(specrej_stage_seconds_total{coord}[{RATE}]))",
                        "{{stage}}")],
                "percentunit", width=24, max_value=1, stack=True),
        ]),
        ("Generator", [
            timeseries(
                "Tokens per second",
                "Decoded tokens per second: per generator pod (the generator's own count) and per "
                "method (the coordinator's count).",
                [target(f"sum by (pod, instance) (rate(specrej_generator_tokens_total{gen}[{RATE}]))",
                        "generator {{instance}} {{pod}}"),
                 target(f"sum by (method) (rate(specrej_decoded_tokens_total{coord}[{RATE}]))",
                        "coordinator {{method}}")],
                TOKENS_PER_SECOND),
            timeseries(
                "Decode batch size",
                "Sequences in each decode step (mean and p95), across all sessions. Larger batches "
                "use the GPU better; pruning shrinks them.",
                [target(mean("specrej_generator_batch_size", gen), "mean"),
                 target(quantile(0.95, "specrej_generator_batch_size", gen), "p95")],
                "short"),
            timeseries(
                "KV-cache usage",
                "Bytes held by live KV caches as a share of the generator's budget "
                "(--kv-cache-budget), per pod. Near 1 a decision point is due; staying above 0.95 "
                "fires SpecRejKVCacheNearlyFull.",
                [target(f"max by (pod, instance) (specrej_generator_kv_cache_usage_ratio{gen})",
                        "{{instance}} {{pod}}")],
                "percentunit", max_value=1),
            timeseries(
                "KV-cache bytes and budget",
                "KV-cache bytes in use and the configured budget, per pod. After a prune the bytes "
                "drop in proportion to the candidates removed.",
                [target(f"sum by (pod, instance) (specrej_generator_kv_cache_bytes{gen})",
                        "used {{instance}} {{pod}}"),
                 target(f"max by (pod, instance) (specrej_generator_kv_cache_budget_bytes{gen})",
                        "budget {{instance}} {{pod}}")],
                "bytes"),
            timeseries(
                "Decode step latency",
                "Time of one batched decode step (one token for every running sequence), p50, p95 "
                "and p99.",
                [target(quantile(q, "specrej_generator_decode_step_seconds", gen), f"p{round(q * 100)}")
                 for q in (0.5, 0.95, 0.99)],
                "s"),
            timeseries(
                "Prefill and prune latency",
                "Prefill: encoding a prompt once for all its candidates. Prune: removing rejected "
                "rows from the live KV cache. p50 and p95 of each.",
                [target(quantile(0.5, "specrej_generator_prefill_seconds", gen), "prefill p50"),
                 target(quantile(0.95, "specrej_generator_prefill_seconds", gen), "prefill p95"),
                 target(quantile(0.5, "specrej_generator_prune_seconds", gen), "prune p50"),
                 target(quantile(0.95, "specrej_generator_prune_seconds", gen), "prune p95")],
                "s"),
            timeseries(
                "Sessions and sequences",
                "Generation sessions open (one per request in progress) and sequences still being "
                "decoded in them, per pod.",
                [target(f"sum by (pod, instance) (specrej_generator_sessions_active{gen})",
                        "sessions {{instance}} {{pod}}"),
                 target(f"sum by (pod, instance) (specrej_generator_sequences_active{gen})",
                        "sequences {{instance}} {{pod}}")],
                "short", width=24),
        ]),
        ("Reward", [
            timeseries(
                "Scoring batch size",
                "Sequences scored per reward-model call (mean and p95).",
                [target(mean("specrej_reward_batch_size", rew), "mean"),
                 target(quantile(0.95, "specrej_reward_batch_size", rew), "p95")],
                "short"),
            timeseries(
                "Scoring latency",
                "Time of one batched scoring call in the reward service, p50, p95 and p99.",
                [target(quantile(q, "specrej_reward_score_seconds", rew), f"p{round(q * 100)}")
                 for q in (0.5, 0.95, 0.99)],
                "s"),
            timeseries(
                "Sequences scored per second",
                "Partial or finished responses scored per second, per pod.",
                [target(f"sum by (pod, instance) (rate(specrej_reward_sequences_total{rew}[{RATE}]))",
                        "{{instance}} {{pod}}")],
                "suffix: sequences/s", width=12),
            timeseries(
                "Tokens scored per second",
                "Tokens the reward model read per second, per pod (within a request's scoring session a "
                "decision point reads only the tokens decoded since the previous one).",
                [target(f"sum by (pod, instance) (rate(specrej_reward_tokens_total{rew}[{RATE}]))",
                        "{{instance}} {{pod}}")],
                TOKENS_PER_SECOND, width=12),
            timeseries(
                "Scoring sessions kept",
                "Keys/values the reward service keeps between a request's decision points, and the "
                "sessions holding them, per pod. Beyond --cache-budget new sessions are recomputed whole.",
                [target(f"sum by (pod, instance) (specrej_reward_session_cache_bytes{rew})",
                        "bytes {{instance}} {{pod}}"),
                 target(f"sum by (pod, instance) (specrej_reward_session_cache_sessions{rew})",
                        "sessions {{instance}} {{pod}}")],
                "bytes", width=12),
            timeseries(
                "Scoring abandoned",
                "Score calls per second whose model work stopped part-way because the caller went away "
                "or its deadline passed, per pod. Sustained, callers give up before scoring ends.",
                [target(f"sum by (pod, instance) (rate(specrej_reward_abandoned_total{rew}[{RATE}]))",
                        "{{instance}} {{pod}}")],
                "reqps", width=12),
        ]),
        ("Admission", [
            timeseries(
                "Requests waiting for admission",
                "Calls each service has accepted but not yet started, waiting for capacity (KV "
                "cache, sessions, worker slots), per service and pod. The autoscaling component "
                "adds replicas when this stays above its threshold.",
                [target(f"sum by (service, pod, instance) (specrej_admission_queued{sel()})",
                        "{{service}} {{instance}} {{pod}}")],
                "short"),
            timeseries(
                "Admission wait p50 / p95",
                "Time calls spent waiting for admission before they started, per service. Part "
                "of the callers' latency that more replicas remove.",
                [target(quantile(q, "specrej_admission_wait_seconds", sel(), "service"),
                        f"p{round(q * 100)} {{{{service}}}}") for q in (0.5, 0.95)],
                "s"),
            timeseries(
                "Admission rejections",
                "Calls refused with RESOURCE_EXHAUSTED at admission per second, per service: the "
                "wait queue was full. Fires SpecRejAdmissionRejections when sustained.",
                [target(f"sum by (service) (rate(specrej_admission_rejected_total{sel()}[{RATE}]))",
                        "{{service}}")],
                "reqps"),
        ]),
        ("GPUs", [
            timeseries(
                "GPU utilization (DCGM)",
                "Share of time each GPU of this service's pods was busy, from NVIDIA's DCGM exporter "
                "(DCGM_FI_DEV_GPU_UTIL). Needs the exporter's pod mapping; works with either label "
                "shape (GPU Operator's ServiceMonitor or honorLabels).",
                [target(dcgm("DCGM_FI_DEV_GPU_UTIL"), "{{Hostname}} GPU {{gpu}} {{pod}}")],
                "percent", max_value=100),
            timeseries(
                "GPU memory used (DCGM)",
                "Frame-buffer memory in use on each GPU of this service's pods (DCGM_FI_DEV_FB_USED, "
                "MiB): model weights, KV caches and the allocator's reserve.",
                [target(dcgm("DCGM_FI_DEV_FB_USED"), "{{Hostname}} GPU {{gpu}} {{pod}}")],
                "mbytes"),
            timeseries(
                "GPU power (DCGM)",
                "Power drawn by each GPU of this service's pods in watts (DCGM_FI_DEV_POWER_USAGE).",
                [target(dcgm("DCGM_FI_DEV_POWER_USAGE"), "{{Hostname}} GPU {{gpu}} {{pod}}")],
                "watt"),
            timeseries(
                "Torch device memory",
                "Memory the services' PyTorch allocator has allocated for tensors and reserved from "
                "the driver, per service and device (CUDA only). Reserved minus allocated is cache.",
                [target(f"sum by (service, pod, instance, device) (specrej_device_memory_allocated_bytes{sel()})",
                        "allocated {{service}} {{device}} {{pod}}"),
                 target(f"sum by (service, pod, instance, device) (specrej_device_memory_reserved_bytes{sel()})",
                        "reserved {{service}} {{device}} {{pod}}")],
                "bytes", width=12),
            timeseries(
                "GPU utilization (services, NVML)",
                "GPU utilization as each service reads it through NVML (CUDA only); useful where no "
                "DCGM exporter runs.",
                [target(f"max by (service, pod, instance, device) (specrej_gpu_utilization_ratio{sel()})",
                        "{{service}} {{device}} {{pod}}")],
                "percentunit", width=12, max_value=1),
        ]),
        ("gRPC servers", [
            timeseries(
                "gRPC calls by method and code",
                "RPCs finished per second on every service's gRPC server, by method name and "
                "status code; health checks and reflection left out.",
                [target(f"sum by (service, grpc_method, grpc_code) "
                        f"(rate(specrej_grpc_server_handled_total{api_calls}[{RATE}]))",
                        "{{service}} {{grpc_method}} {{grpc_code}}")],
                "reqps", width=12),
            timeseries(
                "gRPC handling time p95",
                "95th percentile of the time each service's gRPC server spent on a call, by method "
                "(streaming calls count until the stream ends); health checks and reflection left out.",
                [target(quantile(0.95, "specrej_grpc_server_handling_seconds", api_calls, "service, grpc_method"),
                        "{{service}} {{grpc_method}}")],
                "s", width=12),
        ]),
        ("Process", [
            timeseries(
                "Resident memory",
                "Resident set size of each service process (process_resident_memory_bytes); "
                "host memory, not GPU memory.",
                [target(f'process_resident_memory_bytes{{job=~"specrej-.*", {SCOPE}}}',
                        "{{job}} {{instance}} {{pod}}")],
                "bytes", width=24),
            table(
                "Build info",
                "What each running process serves: service, model, dtype, device and version "
                "(specrej_build_info).",
                [target(f"specrej_build_info{sel()}")],
                hide=("Time", "Value", "__name__", "endpoint")),
        ]),
    ]


def variables() -> list[dict]:
    def label_variable(name: str, query: str, label: str) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "multi": True,
            "includeAll": True,
            # `.*` rather than a list of the values: it also matches series without the label.
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
            "options": [],
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "regex": "",
            "refresh": 1,
            "hide": 0,
            "current": {},
            "options": [],
        },
        label_variable("namespace", "label_values(specrej_build_info, namespace)", "Namespace"),
        label_variable("pod", 'label_values(specrej_build_info{namespace=~"$namespace"}, pod)', "Pod"),
    ]


def layout(row_list) -> list[dict]:
    """Rows and their panels in Grafana's flat list, with gridPos and ids filled in."""
    panels, y, next_id = [], 0, 1
    for title, members in row_list:
        panels.append({"type": "row", "title": title, "collapsed": False, "id": next_id,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        for panel in members:
            width = panel.pop("width")
            height = 8
            if x + width > 24:
                x, y = 0, y + height
            panel["id"] = next_id
            next_id += 1
            panel["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
            panel["datasource"] = DATASOURCE
            for ref, t in zip("ABCDEFGHIJ", panel["targets"]):
                t.setdefault("range", True)
                t.setdefault("instant", False)
                t.update(datasource=DATASOURCE, refId=ref, editorMode="code")
            panels.append(panel)
            x += width
        y += 8
    return panels


def dashboard() -> dict:
    return {
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": "Speculative Rejection (Best-of-N decoding) serving: coordinator, generator "
                       "and reward services, and their GPUs.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout(rows()),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["specrej", "llm", "grpc"],
        "templating": {"list": variables()},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "Speculative Rejection",
        "uid": "specrej-overview",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"
