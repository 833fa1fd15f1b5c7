"""A coordinator started before the services it calls (a fleet restarted in any order) answers the
first request sent once they are ready: its channels find them again within about a second."""
import time

import grpc
import pytest

from common.local_stack import Service, free_port
from specrej import Client, ServiceError


def test_a_coordinator_started_before_its_upstreams_answers_once_they_are_ready(tiny_model_dir, service_logs):
    generator_port, reward_port = free_port(), free_port()
    coordinator = Service("coordinator", "--generator", f"127.0.0.1:{generator_port}",
                          "--reward", f"127.0.0.1:{reward_port}", log_dir=service_logs)
    upstreams = []
    try:
        with Client(coordinator.address, retries=0) as client, pytest.raises(ServiceError) as down:
            client.generate("Name a colour.", n=2, max_new_tokens=4, timeout=20)
        assert down.value.code == grpc.StatusCode.UNAVAILABLE
        upstreams = [Service(module, "--model", str(tiny_model_dir), log_dir=service_logs, wait=False, port=port)
                     for module, port in (("generator_service", generator_port), ("reward_service", reward_port))]
        for upstream in upstreams:
            upstream.wait_serving()
        ready = time.monotonic()
        # The public client's own retries (three, from 0.5 s) are all it gets.
        with Client(coordinator.address, timeout=30) as client:
            response = client.generate("Name a colour.", n=2, max_new_tokens=4, seed=1)
        print(f"first answer {time.monotonic() - ready:.2f} s after both upstreams were SERVING")
        assert response.best.text is not None and response.stats.initial_n == 2
    finally:
        for service in (coordinator, *upstreams):
            service.stop()
