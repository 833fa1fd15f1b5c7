"""What a benchmark driver measures, as plain dataclasses (the inputs of the report and plots)."""
from __future__ import annotations

from dataclasses import dataclass, field

SPECULATIVE_REJECTION = "sr"
BEST_OF_N = "bon"


@dataclass(frozen=True)
class RunRecord:
    """One decoding run for one prompt: Speculative Rejection, or Best-of-N measured live.

    `reward` is the final response's score under the same reward model that scored the pools, so
    that it can be placed on the Best-of-N curve of its prompt.
    """

    prompt_id: str
    method: str  # SPECULATIVE_REJECTION or BEST_OF_N
    n: int  # initial batch size
    rejection_rate: float  # alpha; 0 for Best-of-N
    schedule: str  # name of the decision-point schedule, e.g. "memory", "every-32", "none"
    reward: float
    decoded_tokens: int  # tokens sampled by the generator, over all sequences and rounds
    scored_tokens: int  # tokens read by the reward model, over all decision points
    wall_seconds: float
    # Live sequences after each decision point, not counting the initial n; [] for Best-of-N.
    survivors_per_round: list[int] = field(default_factory=list)
    seed: int = 0
    # Response token position of each decision point, aligned with survivors_per_round.
    decision_points: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in (SPECULATIVE_REJECTION, BEST_OF_N):
            raise ValueError(f"method must be {SPECULATIVE_REJECTION!r} or {BEST_OF_N!r}, got {self.method!r}")
        if not 0 <= self.rejection_rate < 1:
            raise ValueError(f"rejection_rate must lie in [0, 1), got {self.rejection_rate}")

    @property
    def config(self) -> tuple[str, int, float, str]:
        """The settings that identify a row of the summary table (runs differing only in prompt or seed)."""
        return (self.method, self.n, self.rejection_rate, self.schedule)


@dataclass(frozen=True)
class Pool:
    """Independent complete samples for one prompt, all scored: the ground for Best-of-N estimates.

    `wall_seconds[i]` is sample i's share of the time it took to generate and score the pool
    (for a pool made in batches: batch wall time / batch size), so that N times the mean is the wall
    time Best-of-N at size N would take on the same engine.
    """

    prompt_id: str
    scores: list[float]
    decoded_tokens: list[int]
    wall_seconds: list[float]

    def __post_init__(self) -> None:
        sizes = {len(self.scores), len(self.decoded_tokens), len(self.wall_seconds)}
        if len(sizes) != 1 or not self.scores:
            raise ValueError(
                f"pool {self.prompt_id!r}: scores, decoded_tokens and wall_seconds must be non-empty and "
                f"of equal length, got {len(self.scores)}, {len(self.decoded_tokens)}, {len(self.wall_seconds)}"
            )

    @property
    def size(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class ThroughputRow:
    """Decoding speed of our engine against Hugging Face `generate()` at one batch size."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    engine_tokens_per_second: float
    hf_generate_tokens_per_second: float
    # Pruning half the rows at the end of the engine's run, against one decode step at full batch.
    decode_step_seconds: float = 0.0
    prune_seconds: float = 0.0
    kv_bytes_before_prune: int = 0
    kv_bytes_after_prune: int = 0

    @property
    def speedup(self) -> float:
        return self.engine_tokens_per_second / self.hf_generate_tokens_per_second


@dataclass(frozen=True)
class OverheadRow:
    """The same Speculative Rejection workload run in-process and through the gRPC services."""

    label: str  # what was run, e.g. "n=64, alpha=0.5, 128 tokens"
    in_process_seconds: float
    grpc_seconds: float

    @property
    def ratio(self) -> float:
        return self.grpc_seconds / self.in_process_seconds
