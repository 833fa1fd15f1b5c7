"""Reading a service's Prometheus /metrics on loopback."""
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric_families(port: int) -> list:
    """The metric families the service on 127.0.0.1:`port` exposes now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return list(text_string_to_metric_families(response.read().decode()))
