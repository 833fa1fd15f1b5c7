"""Shared fixtures: tiny random models with the real tokenizer, and the real services started as
processes on loopback ports."""
import asyncio
import os
import pathlib
import threading

import pytest

from common.local_stack import Stack

# Generator services started by tests decode on the native backend (it starts in seconds and is
# batch-invariant, which exact comparisons need) unless a test asks for vLLM with --backend vllm.
os.environ.setdefault("SPECREJ_BACKEND", "native")


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The embedded default model's folder (converted once); its tokenizer serves the tiny models."""
    from common.models import resolve_model

    return pathlib.Path(resolve_model(None))


def _tiny_config(tokenizer, **sizes):
    from transformers import LlamaConfig

    return LlamaConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, **sizes})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A randomly initialised 2-layer Llama with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_config(tokenizer))
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory, tokenizer_dir) -> pathlib.Path:
    """A tiny random Llama whose attention heads have 64 dimensions, the fewest vLLM's CPU kernels take."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = _tiny_config(tokenizer, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=4096)
    folder = tmp_path_factory.mktemp("vllm-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# The backends the tests share: 4 MiB of KV cache, two sessions decoding at once and one more
# waiting, at most 16 candidates a request.
BACKEND_SETTINGS = dict(kv_cache_budget=4 * 1024**2, max_batch_size=16, max_sessions=2, max_queued=1)
WAIT = 300


@pytest.fixture(scope="session")
def event_loop_thread():
    """One event loop for the whole run: vLLM's engine answers on the loop that first asked it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop

    async def cancel_the_rest():
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def run(event_loop_thread):
    """Run a coroutine on the shared event loop and return its result."""
    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, event_loop_thread).result(WAIT)
    return run


@pytest.fixture(scope="session")
def vllm_backend(vllm_model_dir, event_loop_thread):
    """One vLLM engine (uncompiled: it starts sooner) on the tiny model, started once for every test
    that needs it; used on `event_loop_thread` only (and stopped before it)."""
    pytest.importorskip("vllm")
    from generator_service.vllm_backend import VllmBackend

    backend = VllmBackend(str(vllm_model_dir), compile="off", **BACKEND_SETTINGS)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tokenizer_dir):
    """A randomly initialised Llama sequence classifier (one reward logit) with the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    config = _tiny_config(tokenizer)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("tiny-classifier")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def _tracer_provider():
    """This process's OpenTelemetry provider, keeping finished spans in memory (a process has only one)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def span_exporter(_tracer_provider):
    """The spans finished during one test."""
    _tracer_provider.clear()
    return _tracer_provider


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def tiny_stack(tiny_model_dir, service_logs):
    """All three services on the tiny model; a small KV budget so memory-driven decision points come early."""
    stack = Stack(
        service_logs,
        generator_args=("--model", str(tiny_model_dir), "--kv-cache-budget", "1MiB", "--max-sessions", "2"),
        reward_args=("--model", str(tiny_model_dir)),
    )
    yield stack
    stack.stop()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
