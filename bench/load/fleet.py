"""A fleet on loopback: two generator and two reward replicas behind one coordinator whose upstream
targets list both replicas (`ipv4:127.0.0.1:P1,127.0.0.1:P2`, as a headless Service's name resolves to
its pods). Under a steady load of a few clients, every replica is restarted in turn (SIGTERM, wait for
its exit, start it again on the same port, wait for SERVING), then one is killed with SIGKILL and
started again. Separately: the coordinator starts first, and once its upstreams come up, how long
until a request succeeds.

The harness talks to the services only over gRPC; every loop is bounded in requests and seconds.
"""
from __future__ import annotations

import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from bench.load.traffic import generate_request
from bench.shared.figures import write_results
from bench.shared.scrape import metric_families
from common.local_stack import Service, free_port
from specrej.v1 import coordinator_pb2_grpc


@dataclass(frozen=True)
class FleetConfig:
    clients: int = 3
    n: int = 8
    max_new_tokens: int = 32
    decision_every_tokens: int = 8
    settle_seconds: float = 10.0  # steady load before the first restart and after each
    exit_timeout: float = 120.0  # a replica still running this long after its signal is killed
    request_timeout: float = 120.0
    pause_after_failure: float = 0.5  # a client waits this long before its next request
    max_requests: int = 2000
    coordinator_head_start: float = 20.0
    first_success_timeout: float = 180.0
    # The start-up phase asks with a small request, so the time to its answer is the time until the
    # coordinator could serve, not the length of the request.
    probe_n: int = 2
    probe_max_new_tokens: int = 8
    model: str | None = None  # unset = the embedded default model


class Replica:
    """A model service that keeps its ports across restarts, as a pod keeps its place behind a
    headless Service."""

    def __init__(self, name: str, module: str, args: tuple[str, ...], log_dir: Path):
        self.name, self.module, self.args, self.log_dir = name, module, args, log_dir
        self.port, self.metrics_port = free_port(), free_port()
        self.service: Service | None = None

    def start(self, wait: bool = True) -> None:
        self.service = Service(self.module, *self.args, log_dir=self.log_dir, wait=wait, port=self.port,
                               metrics_port=self.metrics_port)

    def wait_serving(self) -> None:
        self.service.wait_serving()

    def signal_and_wait(self, signum: signal.Signals, timeout: float) -> dict:
        """Send `signum` and wait for the process to exit; kill it if it outlasts `timeout`."""
        process = self.service.process
        process.send_signal(signum)
        try:
            process.wait(timeout)
            killed = False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed = True
        self.service.stop()
        return {"exit_code": process.returncode, "killed_after_timeout": killed}

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def calls(self) -> dict[str, int]:
        """Calls this replica answered since its last start, by method and status code (its /metrics)."""
        return {f"{sample.labels['grpc_method']} {sample.labels['grpc_code']}": int(sample.value)
                for family in metric_families(self.metrics_port) if family.name == "specrej_grpc_server_handled"
                for sample in family.samples if sample.name.endswith("_total") and sample.value}


def replicas(config: FleetConfig, log_dir: Path) -> list[Replica]:
    model_args = ("--model", config.model) if config.model else ()
    return [Replica(f"{kind}-{i}", f"{kind}_service", model_args, log_dir)
            for kind in ("generator", "reward") for i in range(2)]


def target(group: list[Replica]) -> str:
    """One gRPC target that resolves to every replica of the group."""
    return "ipv4:" + ",".join(f"127.0.0.1:{replica.port}" for replica in group)


def start_coordinator(fleet: list[Replica], log_dir: Path) -> Service:
    generators = [replica for replica in fleet if replica.module == "generator_service"]
    rewards = [replica for replica in fleet if replica.module == "reward_service"]
    return Service("coordinator", "--generator", target(generators), "--reward", target(rewards), log_dir=log_dir)


@dataclass
class Outcome:
    ended_s: float  # since the load began
    code: str
    decoded_tokens: int = 0
    prompt_tokens: int = 0
    scored_tokens: int = 0

    @classmethod
    def of(cls, ended_s: float, code: str, stats) -> "Outcome":
        if stats is None:
            return cls(ended_s, code)
        return cls(ended_s, code, stats.generated_tokens, stats.prompt_tokens, stats.scored_tokens)


@dataclass
class SteadyLoad:
    """`clients` threads, each sending its next request when its last one is answered, until stopped."""

    stub: coordinator_pb2_grpc.CoordinatorStub
    config: FleetConfig
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self._lock, self._stop, self._issued = threading.Lock(), threading.Event(), 0
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(self.config.clients)]

    def now(self) -> float:
        return time.monotonic() - self.began

    def _client(self, number: int) -> None:
        config = self.config
        while not self._stop.is_set():
            with self._lock:
                if self._issued >= config.max_requests:
                    return
                self._issued += 1
                seed = self._issued
            code, stats = send(self.stub, generate_request(config.n, config.max_new_tokens, seed,
                                                           config.decision_every_tokens, number),
                               config.request_timeout)
            outcome = Outcome.of(self.now(), code, stats)
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.code != "OK":
                self._stop.wait(config.pause_after_failure)

    def __enter__(self):
        self.began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()


def send(stub, request, timeout: float) -> tuple[str, object]:
    """One Generate call: its status code, and its stats when it succeeded."""
    try:
        return "OK", stub.Generate(request, timeout=timeout).stats
    except grpc.RpcError as error:
        return error.code().name, None


def restart(replica: Replica, signum: signal.Signals, load: SteadyLoad, config: FleetConfig) -> dict:
    began = load.now()
    exit_status = replica.signal_and_wait(signum, config.exit_timeout)
    exited = load.now()
    replica.start()
    return {"replica": replica.name, "signal": signum.name, "at_s": began, "exit_s": exited - began,
            "serving_again_s": load.now() - exited, **exit_status}


def tally(outcomes: list[Outcome]) -> dict:
    """Requests by status code, and the tokens the reward replicas read over those the generators
    decoded and prefilled, for the requests that succeeded."""
    ok = [outcome for outcome in outcomes if outcome.code == "OK"]
    generated = sum(outcome.decoded_tokens + outcome.prompt_tokens for outcome in ok)
    return {"requests": len(outcomes), "codes": dict(Counter(outcome.code for outcome in outcomes)),
            "scored_over_generated": sum(outcome.scored_tokens for outcome in ok) / generated if generated else None}


def windows(outcomes: list[Outcome], events: list[dict]) -> list[dict]:
    """The requests answered before the first event, and between each event and the next."""
    starts = [0.0] + [event["at_s"] for event in events]
    names = ["steady"] + [f"{event['signal']} {event['replica']}" for event in events]
    ends = starts[1:] + [float("inf")]
    return [{"window": name, "from_s": start,
             **tally([outcome for outcome in outcomes if start <= outcome.ended_s < end])}
            for name, start, end in zip(names, starts, ends)]


def rolling_restarts(config: FleetConfig, log_dir: Path) -> dict:
    fleet = replicas(config, log_dir)
    coordinator = None
    try:
        for replica in fleet:
            replica.start(wait=False)
        for replica in fleet:
            replica.wait_serving()
        coordinator = start_coordinator(fleet, log_dir)
        with grpc.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            for seed in range(2):  # one warm-up per replica of round robin
                stub.Generate(generate_request(2, 4, seed, 4), timeout=config.request_timeout)
            events = []
            with SteadyLoad(stub, config) as load:
                time.sleep(config.settle_seconds)
                for replica in fleet:
                    events.append(restart(replica, signal.SIGTERM, load, config))
                    time.sleep(config.settle_seconds)
                events.append(restart(fleet[0], signal.SIGKILL, load, config))
                time.sleep(config.settle_seconds)
            seconds = load.now()
            calls = {replica.name: replica.calls() for replica in fleet}
    finally:
        for service in ([coordinator] if coordinator else []) + fleet:
            service.stop()
    return {"seconds": seconds, "events": events, "total": tally(load.outcomes),
            "windows": windows(load.outcomes, events), "calls_since_last_start": calls}


def first_success(config: FleetConfig, log_dir: Path) -> dict:
    """The coordinator starts alone and a client keeps asking; after the head start the upstreams start.
    How long from all upstreams SERVING until a request succeeds."""
    fleet = replicas(config, log_dir)
    coordinator = start_coordinator(fleet, log_dir)
    began = time.monotonic()
    answers: list[tuple[float, float, str]] = []  # (sent, answered: seconds since the coordinator started; code)
    stop = threading.Event()

    def client():
        with grpc.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            seed = 0
            while not stop.is_set():
                seed += 1
                sent = time.monotonic() - began
                code, _ = send(stub, generate_request(config.probe_n, config.probe_max_new_tokens, seed,
                                                      config.decision_every_tokens), config.request_timeout)
                answers.append((sent, time.monotonic() - began, code))
                if code == "OK":
                    return
                stop.wait(config.pause_after_failure)

    asker = threading.Thread(target=client)
    asker.start()
    try:
        time.sleep(config.coordinator_head_start)
        upstreams_started = time.monotonic() - began
        for replica in fleet:
            replica.start(wait=False)
        for replica in fleet:
            replica.wait_serving()
        serving = time.monotonic() - began
        asker.join(config.first_success_timeout)
    finally:
        stop.set()
        asker.join()
        for service in [coordinator] + fleet:
            service.stop()
    sent, first_ok = next(((sent, at) for sent, at, code in answers if code == "OK"), (None, None))
    return {"head_start_s": config.coordinator_head_start, "upstreams_started_s": upstreams_started,
            "all_serving_s": serving, "first_ok_s": first_ok,
            "first_ok_after_serving_s": None if first_ok is None else first_ok - serving,
            "first_ok_request_s": None if first_ok is None else first_ok - sent,
            "codes_before_serving": dict(Counter(code for _, at, code in answers if at < serving)),
            "codes_after_serving": dict(Counter(code for _, at, code in answers if at >= serving))}


def run_fleet(config: FleetConfig, log_dir: Path) -> dict:
    return {"config": asdict(config), "rolling": rolling_restarts(config, log_dir),
            "first_success": first_success(config, log_dir), "service_logs": str(log_dir)}


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _codes(codes: dict) -> str:
    return ", ".join(f"{code} {count}" for code, count in sorted(codes.items())) or "none"


def report(results: dict) -> str:
    config, rolling, first = results["config"], results["rolling"], results["first_success"]
    events = {f"{event['signal']} {event['replica']}": event for event in rolling["events"]}
    lines = ["# A fleet on loopback: replicas restarted under steady load", "",
             f"Command: `{results.get('command', '')}`", "",
             f"Two generator and two reward replicas ({config['model'] or 'the embedded default model'}) behind "
             f"one coordinator; {config['clients']} closed-loop clients, n = {config['n']}, "
             f"{config['max_new_tokens']} tokens, a decision point every {config['decision_every_tokens']} "
             f"tokens; {config['settle_seconds']:g} s of load before the first restart and after each; a client "
             f"waits {config['pause_after_failure']:g} s after a failed request.", "",
             "| window | from s | exit s | SERVING again s | requests | statuses | scored / (decoded + prompt) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for window in rolling["windows"]:
        event = events.get(window["window"])
        exit_s = "" if event is None else f"{event['exit_s']:.1f}" + (" (killed)" if event["killed_after_timeout"]
                                                                      else "")
        serving_s = "" if event is None else f"{event['serving_again_s']:.1f}"
        lines.append(f"| {window['window']} | {window['from_s']:.1f} | {exit_s} | {serving_s} | "
                     f"{window['requests']} | {_codes(window['codes'])} | "
                     f"{_ratio(window['scored_over_generated'])} |")
    total = rolling["total"]
    lines += ["", f"All {total['requests']} requests in {rolling['seconds']:.0f} s: {_codes(total['codes'])}; "
                  f"the reward replicas read **{_ratio(total['scored_over_generated'])}** tokens per token decoded or "
                  "prefilled (requests that succeeded).", "",
              "Calls each replica answered after its last start, by status (its `specrej_grpc_server_handled_total`, "
              "codes with none left out), which "
              "show whether round robin sends work to a restarted replica again:", "",
              *[f"- {name}: {_codes(calls)}" for name, calls in rolling["calls_since_last_start"].items()], "",
              "## First success once the upstreams come up", "",
              f"The coordinator started alone, a client asking all along; the upstreams started "
              f"{first['upstreams_started_s']:.1f} s later and were all SERVING at {first['all_serving_s']:.1f} s. "
              + ("No request succeeded within the time allowed."
                 if first["first_ok_s"] is None else
                 f"The first request (n = {config['probe_n']}, {config['probe_max_new_tokens']} tokens) succeeded "
                 f"**{first['first_ok_after_serving_s']:.1f} s** after that (that request itself took "
                 f"{first['first_ok_request_s']:.1f} s)."),
              f"Statuses before all were SERVING: {_codes(first['codes_before_serving'])}; "
              f"after: {_codes(first['codes_after_serving'])}."]
    return "\n".join(lines) + "\n"


def run_fleet_part(args, command: str) -> Path:
    """`python -m bench --parts fleet`: run, write OUT/fleet/results.{json,md} and print the report."""
    overrides = {"clients": args.fleet_clients, "settle_seconds": args.fleet_settle_seconds, "model": args.model}
    config = FleetConfig(**{name: value for name, value in overrides.items() if value is not None})
    results = run_fleet(config, Path(tempfile.mkdtemp(prefix="specrej-fleet-")))
    results["command"] = command
    path = write(results, Path(args.out) / "fleet")
    print(report(results))
    return path


def write(results: dict, out_dir: str | Path) -> Path:
    return write_results(results, report(results), out_dir)
