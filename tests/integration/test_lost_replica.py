"""A generator replica killed while it decodes a request: the coordinator runs the request again on
the other replica, and the client gets the answer it would have had without the loss. Real
processes on loopback, on the tiny model."""
import threading

import grpc
import pytest

from common.local_stack import Service
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import coordinator_pb2_grpc
from .observe import assert_same_answer, metric, scrape

REQUEST = pb.GenerateRequest(prompt="Describe a lighthouse in two sentences.", n=32, max_new_tokens=400,
                             decision_every_tokens=100, rejection_rate=0.5, seed=7)


def prunes(service: Service) -> float:
    try:
        return metric(scrape(service), "specrej_generator_prune_seconds_count")
    except OSError:
        return 0.0


def kill_the_replica_that_decodes(generators: list[Service], before: list[float], killed: list,
                                  stop: threading.Event) -> None:
    """Kill the replica once it has passed a decision point of the request (more prunes than
    `before`): its session has answered the coordinator, so gRPC cannot retry the call by itself."""
    while not stop.is_set() and not killed:
        for service, count in zip(generators, before):
            if prunes(service) > count:
                service.process.kill()
                killed.append(service)
                return
        stop.wait(0.02)


@pytest.fixture
def two_generators(tiny_model_dir, service_logs):
    args = ("--model", str(tiny_model_dir))
    generators = [Service("generator_service", *args, log_dir=service_logs, wait=False) for _ in range(2)]
    reward = Service("reward_service", *args, log_dir=service_logs, wait=False)
    services = [*generators, reward]
    try:
        for service in services:
            service.wait_serving()
        targets = "ipv4:" + ",".join(f"127.0.0.1:{g.port}" for g in generators)
        coordinator = Service("coordinator", "--generator", targets, "--reward", reward.address,
                              log_dir=service_logs)
        services.append(coordinator)
        yield generators, coordinator
    finally:
        for service in services:
            service.stop()


def test_a_request_whose_generator_is_killed_is_answered_by_the_other(two_generators):
    generators, coordinator = two_generators
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        undisturbed = stub.Generate(REQUEST, timeout=120)
        killed, stop = [], threading.Event()
        before = [prunes(service) for service in generators]
        killer = threading.Thread(target=kill_the_replica_that_decodes, args=(generators, before, killed, stop))
        killer.start()
        try:
            answered = stub.Generate(REQUEST, timeout=120)
        finally:
            stop.set()
            killer.join()
    assert killed, "the request finished before its replica could be killed"
    assert killed[0].process.wait(5) != 0
    assert_same_answer(answered, undisturbed)
