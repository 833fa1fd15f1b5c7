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


def test_the_reward_service_keeps_all_its_threads_on_the_last_cores(tiny_model_dir, tmp_path, monkeypatch):
    from common.models import service_cores

    for name in ("SPECREJ_CPU_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    reward = Service("reward_service", "--model", str(tiny_model_dir), log_dir=tmp_path)
    try:
        threads = os.listdir(f"/proc/{reward.process.pid}/task")
        assert len(threads) > 1  # gRPC's and torch's threads besides the main one
        # The generator's engine takes the first cores of the same set (service_cores(share, "first")).
        expected = set(service_cores(share, "last"))
        assert {frozenset(os.sched_getaffinity(int(t))) for t in threads} == {frozenset(expected)}
        if len(os.sched_getaffinity(0)) > 1:
            assert not expected & set(service_cores(share, "first"))
    finally:
        reward.stop()
