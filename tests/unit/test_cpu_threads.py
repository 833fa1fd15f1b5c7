"""--cpu-threads: the flag, else SPECREJ_CPU_THREADS, else auto (OMP_NUM_THREADS when set, else half the
cores)."""
import pytest

from common.models import resolve_cpu_threads
from generator_service.__main__ import parse_args as generator_args
from reward_service.__main__ import parse_args as reward_args


@pytest.mark.parametrize("parse_args", [generator_args, reward_args])
def test_the_flag_wins_over_the_environment_which_wins_over_auto(parse_args, monkeypatch):
    monkeypatch.delenv("SPECREJ_CPU_THREADS", raising=False)
    assert parse_args([]).cpu_threads == "auto"
    monkeypatch.setenv("SPECREJ_CPU_THREADS", "3")
    assert parse_args([]).cpu_threads == 3
    assert parse_args(["--cpu-threads", "1"]).cpu_threads == 1
    assert parse_args(["--cpu-threads", "auto"]).cpu_threads == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--cpu-threads", "-2"])


def test_auto_takes_half_the_cores_unless_omp_num_threads_is_set():
    assert resolve_cpu_threads("auto", environ={}, cores=16) == 8
    assert resolve_cpu_threads("auto", environ={}, cores=3) == 1
    assert resolve_cpu_threads("auto", environ={}, cores=1) == 1
    # A container's OMP_NUM_THREADS is left to torch (0 = torch's default, which follows it).
    assert resolve_cpu_threads("auto", environ={"OMP_NUM_THREADS": "2"}, cores=16) == 0
    assert resolve_cpu_threads(4, environ={"OMP_NUM_THREADS": "2"}, cores=16) == 4
    assert resolve_cpu_threads(0, environ={}, cores=16) == 0


def test_the_generator_takes_the_first_cores_and_the_reward_service_the_last():
    from common.models import service_cores

    assert service_cores(1, "first", cores={0, 1}) == [0]
    assert service_cores(1, "last", cores={0, 1}) == [1]
    assert service_cores(2, "first", cores=range(8)) == [0, 1]
    assert service_cores(2, "last", cores=[7, 3, 5, 1]) == [5, 7]
    # 0 (torch's default) or more threads than cores: every core, as before.
    assert service_cores(0, "last", cores={0, 1}) == [0, 1]
    assert service_cores(4, "first", cores={2, 3}) == [2, 3]


def test_binding_moves_every_thread_of_the_process_and_those_started_later():
    import os
    import threading

    from common.models import bind_process_to_cores

    available = sorted(os.sched_getaffinity(0))
    started = threading.Event()
    stop = threading.Event()
    seen = {}

    def running_before():
        started.set()
        stop.wait()
        seen["before"] = os.sched_getaffinity(0)

    before = threading.Thread(target=running_before)
    before.start()
    started.wait()
    try:
        bind_process_to_cores(available[-1:])
        after = threading.Thread(target=lambda: seen.setdefault("after", os.sched_getaffinity(0)))
        after.start()
        after.join()
        stop.set()
        before.join()
        assert seen == {"before": {available[-1]}, "after": {available[-1]}}
        assert os.sched_getaffinity(0) == {available[-1]}
    finally:
        stop.set()
        bind_process_to_cores(available)
    assert sorted(os.sched_getaffinity(0)) == available
