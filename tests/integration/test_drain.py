"""SIGTERM drains: health goes NOT_SERVING, then the server sends GOAWAY and closes its listener, new
calls get UNAVAILABLE (which clients retry elsewhere), and a call already running finishes, even one
that takes longer than 30 s."""
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.local_stack import ROOT, free_port, stop_process, wait_serving
from specrej.v1 import reward_pb2, reward_pb2_grpc

CALL_SECONDS = 35.0


def serving(health: health_pb2_grpc.HealthStub) -> bool:
    """SERVING; False once it says otherwise or takes no more calls."""
    try:
        return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        return False


def test_a_call_longer_than_30_seconds_finishes_after_sigterm_and_new_calls_are_refused():
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.slow_server", str(port), str(CALL_SECONDS)],
                               cwd=ROOT)
    try:
        wait_serving(address, process, timeout=60)
        with grpc.insecure_channel(address) as channel:
            stub = reward_pb2_grpc.RewardStub(channel)
            outcome = {}

            def long_call():
                began = time.monotonic()
                outcome["response"] = stub.Score(reward_pb2.ScoreRequest(), timeout=CALL_SECONDS + 30)
                outcome["seconds"] = time.monotonic() - began

            caller = threading.Thread(target=long_call)
            caller.start()
            time.sleep(1.0)
            process.terminate()  # SIGTERM, as Kubernetes sends it
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            while serving(health):
                assert time.monotonic() < deadline, "health still SERVING 10 s after SIGTERM"
                time.sleep(0.1)
            try:
                stub.Score(reward_pb2.ScoreRequest(), timeout=5)
                refused = None
            except grpc.RpcError as error:
                refused = error.code()
            assert refused == grpc.StatusCode.UNAVAILABLE
            caller.join(CALL_SECONDS + 30)
        assert list(outcome["response"].scores) == [1.0] and outcome["seconds"] >= CALL_SECONDS
        assert process.wait(30) == 0
    finally:
        stop_process(process)
