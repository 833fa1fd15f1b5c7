"""A single request at the limits costs a service little memory: oversized ones are refused before
they are parsed or tokenized. Measured as the service process's peak resident memory (VmHWM, reset
before the request) over its resident memory before it."""
import pathlib

import grpc
import pytest

from specrej.v1 import (common_pb2, coordinator_pb2, coordinator_pb2_grpc, generator_pb2, generator_pb2_grpc,
                        reward_pb2, reward_pb2_grpc)

MIB = 1024 * 1024
ALLOWED_GROWTH = 100 * MIB


def memory_bytes(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def peak_growth(service, call) -> tuple[int, grpc.RpcError]:
    """Run `call`, which must fail; returns the service's peak memory growth over it and the error."""
    pid = service.process.pid
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = memory_bytes(pid, "VmRSS")
    with pytest.raises(grpc.RpcError) as error:
        call()
    return memory_bytes(pid, "VmHWM") - before, error.value


def test_a_50_mb_prompt_is_refused_before_the_coordinator_parses_it(tiny_stack):
    stub = coordinator_pb2_grpc.CoordinatorStub(tiny_stack.channel)
    prompt = "x" * (50 * MIB)
    growth, error = peak_growth(tiny_stack.coordinator,
                                lambda: stub.Generate(coordinator_pb2.GenerateRequest(prompt=prompt), timeout=60))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert growth < ALLOWED_GROWTH, f"{growth / MIB:.0f} MiB"


def test_a_million_token_response_is_refused_before_the_reward_service_tokenizes_it(tiny_stack):
    with grpc.insecure_channel(tiny_stack.reward.address) as channel:
        stub = reward_pb2_grpc.RewardStub(channel)
        request = reward_pb2.ScoreRequest(
            messages=[common_pb2.Message(role="user", content="Say hello.")],
            items=[reward_pb2.ScoreItem(response="hello " * 1_000_000)])
        growth, error = peak_growth(tiny_stack.reward, lambda: stub.Score(request, timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.details().startswith("items[0].response:"), error.details()
    assert growth < ALLOWED_GROWTH, f"{growth / MIB:.0f} MiB"


@pytest.fixture(scope="module")
def roomy_generator(tiny_model_dir, service_logs):
    """A generator with its default KV budget, where n = 0 means its whole batch limit of rows, on the
    native backend, whose sampling this checks: vLLM's sampler keeps row x vocabulary buffers of its
    own, and how many it holds at once depends on how it scheduled the steps (120-180 MiB for 256
    candidates on a busy CPU, within 100 MiB on an idle one).

    A fixed mmap threshold makes glibc hand every freed block of 1 MiB or more straight back, so the
    peak is what the request held at once: with its default, growing threshold, blocks freed by
    earlier requests stay resident or not depending on which threads allocated them, and the same
    request's peak ranged 0-190 MiB from one call to the next."""
    from common.local_stack import Service

    service = Service("generator_service", "--model", str(tiny_model_dir), "--backend", "native", "--compile", "off",
                      log_dir=service_logs, env={"MALLOC_MMAP_THRESHOLD_": str(MIB)})
    yield service
    service.stop()


def test_as_many_candidates_as_fit_decode_without_a_copy_of_the_vocabulary_per_row(roomy_generator):
    start = generator_pb2.SessionCommand(start=generator_pb2.StartSession(
        messages=[common_pb2.Message(role="user", content="Say hello.")], n=0, max_new_tokens=24,
        sampling=generator_pb2.SamplingParams(temperature=1, seed=1)))
    advance = generator_pb2.SessionCommand(advance=generator_pb2.Advance(until_tokens=0))
    pid = roomy_generator.process.pid
    with grpc.insecure_channel(roomy_generator.address) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        list(stub.Session(iter([start, advance]), timeout=120))  # the first session's one-time costs
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
        before = memory_bytes(pid, "VmRSS")
        started, advanced = list(stub.Session(iter([start, advance]), timeout=120))
    growth = memory_bytes(pid, "VmHWM") - before
    assert started.started.n > 100 and len(advanced.advanced.sequences) == started.started.n
    assert growth < ALLOWED_GROWTH, f"{growth / MIB:.0f} MiB for {started.started.n} candidates"
