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
