"""Load on the three real services as separate processes: closed-loop clients, a tiny request behind a
large one, a flood beyond the admission queue, and health-check latency throughout.

Traffic goes to loopback only, every loop is bounded in requests and seconds, and it stops by itself.
"""
from __future__ import annotations

import ipaddress
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.shared.figures import write_results
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc

PROMPTS = (
    "Give three tips for staying healthy.",
    "Describe a lighthouse in two sentences.",
    "What is the capital of France, and why is it famous?",
    "Write a haiku about autumn leaves.",
)


@dataclass(frozen=True)
class LoadConfig:
    clients: tuple[int, ...] = (1, 4, 8, 16, 32)
    n: tuple[int, ...] = (8, 32)
    max_new_tokens: int = 64
    decision_every_tokens: int = 16
    seconds_per_level: float = 20.0
    max_requests_per_level: int = 400
    tiny: tuple[int, int] = (4, 16)  # n, max_new_tokens
    large: tuple[int, int] = (128, 256)
    flood_requests: int = 96
    timeout: float = 300.0


def check_loopback(target: str) -> None:
    """Refuse any target that is not this machine: a load test never leaves loopback."""
    host = target.rsplit(":", 1)[0].strip("[]")
    for info in socket.getaddrinfo(host, None):
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise ValueError(f"load tests only target loopback addresses; {target} resolves to {info[4][0]}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def generate_request(n: int, max_new_tokens: int, seed: int, every: int, prompt_index: int = 0) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=PROMPTS[prompt_index % len(PROMPTS)], n=n, max_new_tokens=max_new_tokens,
                              seed=seed, decision_every_tokens=every, rejection_rate=0.5)


class HealthProbe:
    """Checks health every `interval` seconds from its own thread, as a kubelet would, and records latency."""

    def __init__(self, target: str, interval: float = 0.1):
        self.channel = grpc.insecure_channel(target)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.interval, self.latencies, self.failures = interval, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                self.stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                self.latencies.append(time.perf_counter() - began)
            except grpc.RpcError:
                self.failures += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.channel.close()

    def summary(self) -> dict:
        return {"checks": len(self.latencies), "failures": self.failures,
                "p50_ms": 1000 * percentile(self.latencies, 50), "p99_ms": 1000 * percentile(self.latencies, 99),
                "max_ms": 1000 * max(self.latencies, default=float("nan"))}


@dataclass
class LevelResult:
    n: int
    clients: int
    seconds: float = 0.0
    completed: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    health: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"n": self.n, "clients": self.clients, "seconds": self.seconds, "completed": self.completed,
                "requests_per_second": self.completed / self.seconds if self.seconds else 0.0,
                "tokens_per_second": self.tokens / self.seconds if self.seconds else 0.0,
                "p50_s": percentile(self.latencies, 50), "p95_s": percentile(self.latencies, 95),
                "p99_s": percentile(self.latencies, 99), "codes": dict(self.codes), "health": self.health}


def closed_loop(stub, target: str, n: int, clients: int, config: LoadConfig) -> LevelResult:
    """`clients` threads, each sending its next request when the last one answers, for a bounded time."""
    result = LevelResult(n, clients)
    lock = threading.Lock()
    stop_at = time.monotonic() + config.seconds_per_level
    issued = [0]

    def client(number: int):
        while time.monotonic() < stop_at:
            with lock:
                if issued[0] >= config.max_requests_per_level:
                    return
                issued[0] += 1
                seed = issued[0]
            began = time.perf_counter()
            try:
                response = stub.Generate(generate_request(n, config.max_new_tokens, seed,
                                                          config.decision_every_tokens, number),
                                         timeout=config.timeout)
                code = grpc.StatusCode.OK.name
            except grpc.RpcError as error:
                response, code = None, error.code().name
            with lock:
                result.codes[code] += 1
                if response is not None:
                    result.completed += 1
                    result.tokens += response.stats.generated_tokens
                    result.latencies.append(time.perf_counter() - began)

    with HealthProbe(target) as probe:
        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result.seconds = time.perf_counter() - began
    result.health = probe.summary()
    return result


def tiny_behind_large(stub, config: LoadConfig, repeats: int = 3) -> dict:
    """A tiny request's latency alone, and while a large request is decoding."""
    tiny_n, tiny_tokens = config.tiny
    large_n, large_tokens = config.large

    def tiny(seed):
        began = time.perf_counter()
        stub.Generate(generate_request(tiny_n, tiny_tokens, seed, 8, 1), timeout=config.timeout)
        return time.perf_counter() - began

    alone = [tiny(1000 + i) for i in range(repeats)]
    large_done = threading.Event()
    large_outcome = {}

    def large():
        began = time.perf_counter()
        try:
            stub.Generate(pb.GenerateRequest(prompt=PROMPTS[0], n=large_n, max_new_tokens=large_tokens, seed=7,
                                             method=pb.BEST_OF_N), timeout=config.timeout)
            large_outcome["code"] = grpc.StatusCode.OK.name
        except grpc.RpcError as error:
            large_outcome["code"] = error.code().name
        large_outcome["seconds"] = time.perf_counter() - began
        large_done.set()

    thread = threading.Thread(target=large)
    thread.start()
    time.sleep(3.0)  # the large request is past its prefill and decoding
    behind = []
    for i in range(repeats):
        if large_done.is_set():
            break
        behind.append(tiny(2000 + i))
    thread.join()
    return {"tiny": list(config.tiny), "large": list(config.large),
            "alone_s": statistics.median(alone), "behind_large_s": statistics.median(behind) if behind else None,
            "ratio": statistics.median(behind) / statistics.median(alone) if behind else None,
            "large_s": large_outcome["seconds"], "large_code": large_outcome["code"], "samples_behind": len(behind)}


def flood(target: str, config: LoadConfig) -> dict:
    """More concurrent requests than the coordinator admits and queues: how fast the excess hears
    RESOURCE_EXHAUSTED, and whether a retry hint comes with it. Requests still running are cancelled."""
    channel = grpc.insecure_channel(target)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    futures, answered = [], {}
    began = time.perf_counter()
    for i in range(config.flood_requests):
        sent = time.perf_counter()
        future = stub.Generate.future(
            generate_request(8, config.max_new_tokens, 5000 + i, config.decision_every_tokens, i), timeout=60)
        # The time a call was answered, taken when it happens rather than when it is looked at.
        future.add_done_callback(lambda done, sent=sent: answered.setdefault(id(done), time.perf_counter() - sent))
        futures.append(future)
    time.sleep(10.0)
    rejected, hints = [], 0
    for future in futures:
        if not future.done():
            continue
        error = future.exception()
        if isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            rejected.append(answered[id(future)])
            hints += any(k == "grpc-retry-pushback-ms" for k, _ in error.trailing_metadata() or ())
    for future in futures:
        future.cancel()
    channel.close()
    return {"sent": config.flood_requests, "resource_exhausted": len(rejected), "with_retry_hint": hints,
            "time_to_resource_exhausted_max_s": max(rejected, default=None),
            "time_to_resource_exhausted_p50_s": percentile(rejected, 50) if rejected else None,
            "send_seconds": time.perf_counter() - began}


def same_seed_alone_and_concurrent(stub, config: LoadConfig, clients: int = 8) -> dict:
    """The same request (same seed) alone and among `clients` concurrent others returns the same texts."""
    probe = generate_request(8, 32, 424242, 8, 2)
    probe.return_top = 8
    alone = stub.Generate(probe, timeout=config.timeout)
    results = {}

    def other(i):
        stub.Generate(generate_request(8, 32, 9000 + i, 8, i), timeout=config.timeout)

    threads = [threading.Thread(target=other, args=(i,)) for i in range(clients - 1)]
    for thread in threads:
        thread.start()
    results["concurrent"] = stub.Generate(probe, timeout=config.timeout)
    for thread in threads:
        thread.join()
    same = [c.text for c in alone.ranked] == [c.text for c in results["concurrent"].ranked]
    return {"identical": same, "clients": clients}


def _part(measure, *args) -> dict:
    """One measurement; a failed call is reported in the results rather than ending the run."""
    try:
        return measure(*args)
    except grpc.RpcError as error:
        return {"error": f"{error.code().name}: {error.details()}"}


def run_load(target: str, config: LoadConfig) -> dict:
    check_loopback(target)
    channel = grpc.insecure_channel(target)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    stub.Generate(generate_request(4, 8, 1, 4), timeout=config.timeout)  # warm-up
    levels = [closed_loop(stub, target, n, clients, config).summary() for n in config.n for clients in config.clients]
    results = {
        "config": asdict(config),
        "levels": levels,
        "identity": _part(same_seed_alone_and_concurrent, stub, config),
        "tiny_behind_large": _part(tiny_behind_large, stub, config),
        "flood": _part(flood, target, config),
    }
    channel.close()
    return results


def speedups(levels: list[dict]) -> dict:
    """Requests/s at each client count over one client's, per n."""
    out = {}
    for n in sorted({level["n"] for level in levels}):
        rows = {level["clients"]: level["requests_per_second"] for level in levels if level["n"] == n}
        base = rows.get(1)
        out[n] = {clients: (rps / base if base else None) for clients, rps in sorted(rows.items())}
    return out


def report(results: dict) -> str:
    lines = ["# Load on the three services (closed-loop clients over gRPC on loopback)", "",
             f"Command: `{results.get('command', '')}`", "",
             "| n | clients | requests | req/s | x 1 client | tokens/s | p50 s | p95 s | p99 s | health p99 ms | "
             "health max ms | statuses |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios = speedups(results["levels"])
    for level in results["levels"]:
        ratio = ratios[level["n"]][level["clients"]]
        lines.append(
            f"| {level['n']} | {level['clients']} | {level['completed']} | {level['requests_per_second']:.3f} | "
            f"{ratio:.2f} | {level['tokens_per_second']:.1f} | {level['p50_s']:.2f} | {level['p95_s']:.2f} | "
            f"{level['p99_s']:.2f} | {level['health']['p99_ms']:.1f} | {level['health']['max_ms']:.1f} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(level['codes'].items()))} |")
    failed = [f"- {name}: {results[name]['error']}" for name in ("identity", "tiny_behind_large", "flood")
              if "error" in results[name]]
    if failed:
        return "\n".join(lines + ["", "## Failed measurements", "", *failed]) + "\n"
    tiny = results["tiny_behind_large"]
    flood_result = results["flood"]
    lines += ["", "## A tiny request behind a large one", "",
              f"Tiny (n = {tiny['tiny'][0]}, {tiny['tiny'][1]} tokens) alone: {tiny['alone_s']:.2f} s (median of 3); "
              f"while a Best-of-{tiny['large'][0]} request of {tiny['large'][1]} tokens decodes: "
              + (f"{tiny['behind_large_s']:.2f} s (median of {tiny['samples_behind']}), "
                 f"**{tiny['ratio']:.2f}x** its latency alone; the large request took {tiny['large_s']:.1f} s"
                 + ("." if tiny.get("large_code", "OK") == "OK" else f" and ended {tiny['large_code']}.")
                 if tiny["behind_large_s"] is not None else "the large request finished first."),
              "", "## Flood beyond the admission queue", "",
              f"{flood_result['sent']} requests sent at once: {flood_result['resource_exhausted']} answered "
              f"RESOURCE_EXHAUSTED ({flood_result['with_retry_hint']} with a grpc-retry-pushback-ms hint), "
              f"slowest after {_seconds(flood_result['time_to_resource_exhausted_max_s'])}, median "
              f"{_seconds(flood_result['time_to_resource_exhausted_p50_s'])}.",
              "", "## Same seed alone and among concurrent requests", "",
              f"Identical responses alone and among {results['identity']['clients']} concurrent clients: "
              f"**{results['identity']['identical']}**."]
    return "\n".join(lines) + "\n"


def _seconds(value) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def write(results: dict, out_dir: str | Path) -> Path:
    return write_results(results, report(results), out_dir)
