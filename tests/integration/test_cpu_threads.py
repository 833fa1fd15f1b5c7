"""The model services started without thread flags, as a user starts them by hand: their share of the
cores, and OpenMP's wait policy PASSIVE unless the user set OMP_WAIT_POLICY."""
import os

from common.local_stack import Service


def _threads_line(service: Service) -> str:
    return next(line for line in service.log().splitlines() if "model work on CPU uses" in line)


def test_services_started_without_flags_use_their_share_and_sleep_when_idle(tiny_model_dir, tmp_path, monkeypatch):
    for name in ("SPECREJ_CPU_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    generator = Service("generator_service", "--model", str(tiny_model_dir), log_dir=tmp_path, wait=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    reward = Service("reward_service", "--model", str(tiny_model_dir), log_dir=tmp_path, wait=False)
    try:
        generator.wait_serving()
        reward.wait_serving()
        assert f"uses {share} threads (--cpu-threads auto, OMP_WAIT_POLICY PASSIVE)" in _threads_line(generator)
        assert "uses 2 threads (--cpu-threads auto, OMP_WAIT_POLICY ACTIVE)" in _threads_line(reward)
    finally:
        generator.stop()
        reward.stop()
