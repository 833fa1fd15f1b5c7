"""The compiled decode step (--compile on) against eager, on CPU with the tiny model.

Marked `compile`: inductor compiles each layer's dense parts first, which takes about a minute on
a 2-core CPU (deselect with -m "not compile")."""
import pytest
import torch

from generator_service.compile import should_compile
from generator_service.engine import GeneratorEngine
from tests.generator.scripted import play


def test_auto_compiles_on_cuda_only():
    assert should_compile("auto", torch.device("cuda")) and not should_compile("auto", torch.device("cpu"))
    assert should_compile("on", torch.device("cpu")) and not should_compile("off", torch.device("cuda"))
    with pytest.raises(ValueError):
        should_compile("sometimes", torch.device("cpu"))


@pytest.mark.compile
def test_the_compiled_decode_step_gives_the_eager_tokens(tiny_model_dir):
    engines = {mode: GeneratorEngine(str(tiny_model_dir), device="cpu", compile=mode) for mode in ("off", "on")}
    try:
        assert engines["on"].compiled and not engines["off"].compiled
        assert play(engines["on"], "poem") == play(engines["off"], "poem")
    finally:
        for engine in engines.values():
            engine.shutdown()
