"""specrej.Client in front of several coordinator replicas behind one name: only those whose health
says SERVING get calls."""
from grpc_health.v1 import health, health_pb2

from specrej import Client
from specrej.v1 import coordinator_pb2

from .scripted_coordinator import OK, ScriptedCoordinator, serve

COORDINATOR = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name


def test_a_replica_whose_health_is_not_serving_gets_no_calls():
    replicas, servers, ports = [], [], []
    for status in (health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING):
        servicer, checker = ScriptedCoordinator([OK]), health.HealthServicer()
        checker.set(COORDINATOR, status)
        server, port = serve(servicer, health=checker)
        replicas.append(servicer)
        servers.append(server)
        ports.append(port)
    try:
        with Client("ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports), timeout=10) as client:
            answers = [client.generate("Name a colour.").best.text for _ in range(6)]
    finally:
        for server in servers:
            server.stop(grace=None)
    assert answers == ["answer to Name a colour."] * 6
    not_serving, serving = replicas
    assert len(not_serving.calls) == 0 and len(serving.calls) == 6
