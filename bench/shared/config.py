"""What one benchmark run measures: sizes, rejection rates, decision schedules, seeds; two presets."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

MEMORY = "memory"
EVERY = "every"
DOUBLE = "double"

# Run seeds are 1, 2, ... and pool chunks use POOL_SEED_BASE + chunk, so no Speculative Rejection
# or live Best-of-N run ever samples the pool's own candidates (a sequence's tokens are a pure
# function of seed, sequence index and position).
POOL_SEED_BASE = 1 << 40


@dataclass(frozen=True)
class Schedule:
    """Where decision points fall.

    `memory-B`: memory-driven, with a KV-cache budget of B response tokens beyond the shared prompt,
    so for an initial n the first decision point falls at B/n tokens and, after rejecting a fraction
    alpha, the next at B/(n(1-alpha)) (doubling lengths at alpha = 0.5). Plain `memory`: the
    generator's own budget (the service's --kv-cache-budget, or this benchmark's). `every-K`: a
    decision point every K tokens. `double-K`: decision points at K, 2K, 4K, ... tokens (the
    coordinator's default schedule); with every schedule a full KV cache forces one too.
    """

    kind: str  # MEMORY, EVERY or DOUBLE
    tokens: int = 0  # MEMORY: budget in response tokens (0 = the generator's own); EVERY, DOUBLE: K

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.tokens}" if self.tokens else self.kind

    def __str__(self) -> str:
        return self.name


def parse_schedule(text: str) -> Schedule:
    match = re.fullmatch(r"\s*(memory|every|double)(?:-(\d+))?\s*", text)
    if not match:
        raise ValueError(f"not a schedule: {text!r} (use memory, memory-TOKENS, every-TOKENS or double-TOKENS)")
    kind, tokens = match.group(1), int(match.group(2) or 0)
    if kind in (EVERY, DOUBLE) and tokens < 1:
        raise ValueError(f"schedule {text!r}: {kind}-K needs K >= 1")
    return Schedule(kind, tokens)


@dataclass(frozen=True)
class BenchConfig:
    prompts: int  # how many prompts, from position first_prompt of the prompt file on
    pool_size: int  # complete samples per prompt for the Best-of-N curve (at least 2x the largest n)
    n: tuple[int, ...]  # initial batch sizes of Speculative Rejection
    max_new_tokens: int
    rejection_rates: tuple[float, ...]
    schedules: tuple[Schedule, ...]
    seeds: int  # runs per (prompt, configuration), with seeds 1..seeds
    best_of_n: tuple[int, ...]  # live Best-of-N runs, a check on the pool's expected curve
    throughput_batch_sizes: tuple[int, ...]
    throughput_new_tokens: int
    repeats: int  # alternating measurements per throughput batch size and for the gRPC overhead
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    pool_batch: int = 512  # most pool samples per generator session (halved while the generator refuses)
    adaptive_rates: tuple[float, ...] = ()  # paired part: least rates of the adaptive rule, on the first schedule
    refill_rates: tuple[float, ...] = ()  # paired part: rates run again with refill (branching), first schedule
    first_prompt: int = 0  # the prompt file's position the prompts start at: later ones are held out from earlier

    def with_overrides(self, **changes) -> "BenchConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> None:
        if self.prompts < 1 or self.pool_size < 1 or self.seeds < 1 or self.max_new_tokens < 1:
            raise ValueError("prompts, pool size, seeds and max_new_tokens must be at least 1")
        if self.first_prompt < 0:
            raise ValueError("first_prompt: a position in the prompt file, 0 or more")
        if not self.n or min(self.n) < 1:
            raise ValueError("n: give at least one initial batch size >= 1")
        for alpha in (*self.rejection_rates, *self.adaptive_rates, *self.refill_rates):
            if not 0 <= alpha < 1:
                raise ValueError(f"rejection rate {alpha} is not in [0, 1)")
        for schedule in self.schedules:
            if schedule.kind == MEMORY and schedule.tokens:
                too_small = [n for n in self.n if schedule.tokens < n]
                if too_small:
                    raise ValueError(f"schedule {schedule}: a budget of {schedule.tokens} tokens cannot hold one "
                                     f"token for each of n = {too_small}")


QUICK = BenchConfig(
    prompts=3,
    pool_size=32,
    n=(16,),
    max_new_tokens=64,
    rejection_rates=(0.5, 0.7, 0.9),
    # memory-128 at n = 16: decision points at 8, 16, 32 tokens for alpha = 0.5.
    schedules=(Schedule(MEMORY, 128), Schedule(EVERY, 16)),
    seeds=1,  # still disjoint from the pool's seeds; more seeds only average out luck
    best_of_n=(16,),
    throughput_batch_sizes=(8, 32),
    throughput_new_tokens=32,
    repeats=2,
)

FULL = BenchConfig(
    prompts=10,
    pool_size=512,
    n=(32, 128),
    max_new_tokens=256,
    rejection_rates=(0.5, 0.7, 0.9),
    # memory-4096 at n = 128: decision points at 32, 64, 128 tokens for alpha = 0.5; at n = 32: 128.
    schedules=(Schedule(MEMORY, 4096), Schedule(EVERY, 64)),
    seeds=3,
    best_of_n=(32, 128),
    throughput_batch_sizes=(8, 32, 128),
    throughput_new_tokens=256,
    repeats=3,
)

# A check of the CUDA path that finishes in a few minutes on one GPU: every part runs, at sizes where
# a GPU is already faster than a CPU.
GPU_SMOKE = BenchConfig(
    prompts=2,
    pool_size=128,
    n=(64,),
    max_new_tokens=128,
    rejection_rates=(0.5,),
    schedules=(Schedule(MEMORY, 1024), Schedule(EVERY, 32)),
    seeds=1,
    best_of_n=(64,),
    throughput_batch_sizes=(8, 32, 128),
    throughput_new_tokens=64,
    repeats=2,
)

# The paired experiment (`--parts paired`) and the schedule sweeps that choose the coordinator's
# defaults: first decision point, doubling against fixed intervals, rejection rate, adaptive rule.
def _schedules(*names: str) -> tuple[Schedule, ...]:
    return tuple(parse_schedule(name) for name in names)


# What bench/results/paired-small/ holds (run with --row-block 8): a check of the mechanics on the real
# model that fits minutes on a shared 2-core CPU; two pairs are far too few to choose anything by.
PAIRED_SMALL = replace(
    QUICK, prompts=1, seeds=2, n=(8,), max_new_tokens=64, pool_size=32, pool_batch=32,
    rejection_rates=(0.5, 0.8), adaptive_rates=(0.5,), schedules=_schedules("double-16"), best_of_n=(),
)
# The CPU measurement: 10 prompts x 3 seeds at n0 = 128 and 256 tokens, the chosen default (double-64,
# alpha 0.7: the first variant, so it runs on every pair first) beside its neighbours (hours on 2 cores;
# --stop-after-minutes and the journal split it over several runs).
PAIRED_CPU = replace(
    PAIRED_SMALL, prompts=10, seeds=3, n=(128,), max_new_tokens=256, pool_size=512, pool_batch=256,
    rejection_rates=(0.7, 0.9, 0.5), schedules=_schedules("double-64", "double-48", "double-32", "every-64"),
)
# The CPU measurement out of sample: prompts 10-29, which none of the choices made on paired-cpu's
# prompts 0-9 saw, with the default, the schedule that saved most at a small loss there (double-48)
# and the default with refill (branching).
PAIRED_CPU_HELDOUT = replace(
    PAIRED_CPU, first_prompt=10, prompts=20, rejection_rates=(0.7,), schedules=_schedules("double-64", "double-48"),
    adaptive_rates=(), refill_rates=(0.7,),
)
# The same on one GPU, at the sizes the paper's devices-at-equal-latency metric is about.
GPU_PAIRED = replace(
    PAIRED_CPU, prompts=10, seeds=3, n=(256, 1024), max_new_tokens=512, pool_size=4096, pool_batch=1024,
    schedules=_schedules("double-64", "double-32", "double-128", "every-64"),
)

PAIRED_PRESETS = ("paired-small", "paired-cpu", "paired-cpu-heldout", "gpu-paired")  # presets whose default part is `paired`
PRESETS = {"quick": QUICK, "full": FULL, "gpu-smoke": GPU_SMOKE, "paired-small": PAIRED_SMALL,
           "paired-cpu": PAIRED_CPU, "paired-cpu-heldout": PAIRED_CPU_HELDOUT, "gpu-paired": GPU_PAIRED}
