"""The efficiency experiment's bookkeeping, against a fake backend (no model)."""
from bench.shared.config import EVERY, MEMORY, POOL_SEED_BASE, QUICK, Schedule
from bench.efficiency.experiment import build_pool, jobs, run_efficiency
from bench.shared.prompts import Prompt
from bench.shared.records import BEST_OF_N, SPECULATIVE_REJECTION
from common.errors import FieldError
from specrej.v1 import coordinator_pb2 as pb


class FakeBackend:
    """Refuses n above `fits` as the generator does; candidate i scores i and is i + 1 tokens long."""

    def __init__(self, fits=1000):
        self.fits, self.requests, self.budgets = fits, [], []

    def run(self, request, *, memory_round_tokens, kv_budget_tokens=None):
        if request.n > self.fits:
            raise FieldError("n", f"{request.n} candidates do not fit")
        self.requests.append(request)
        self.budgets.append((kv_budget_tokens, memory_round_tokens))
        candidates = [pb.Candidate(index=i, score=float(i), num_tokens=i + 1, finish_reason="stop")
                      for i in range(request.n)]
        rounds = [pb.Round(token_position=8, kept=request.n // 2)] if request.method == pb.SPECULATIVE_REJECTION else []
        stats = pb.Stats(generated_tokens=sum(c.num_tokens for c in candidates), scored_tokens=7, rounds=rounds)
        return pb.GenerateResponse(best=candidates[-1], ranked=candidates[::-1], stats=stats), 2.0


def test_pool_is_made_in_chunks_that_fit_each_with_its_own_seed():
    backend = FakeBackend(fits=5)
    config = QUICK.with_overrides(pool_size=12, pool_batch=8)
    pool = build_pool(backend, Prompt("p", "text"), config)
    assert pool.size == 12
    assert [r.n for r in backend.requests] == [4, 4, 4]  # 8 refused, halved to 4
    assert [r.seed for r in backend.requests] == [POOL_SEED_BASE, POOL_SEED_BASE + 1, POOL_SEED_BASE + 2]
    assert all(r.method == pb.BEST_OF_N and r.return_top == r.n for r in backend.requests)
    assert sorted(pool.decoded_tokens) == sorted([1, 2, 3, 4] * 3)
    assert pool.wall_seconds == [0.5] * 12  # 2 s per chunk of 4


def test_runs_never_use_the_pools_seeds_and_cover_every_configuration():
    backend = FakeBackend()
    config = QUICK.with_overrides(pool_size=8, n=(4, 8), rejection_rates=(0.5, 0.9), seeds=2, best_of_n=(2,),
                                  schedules=(Schedule(MEMORY, 32), Schedule(EVERY, 16)))
    prompts = [Prompt("a", "x"), Prompt("b", "y")]
    steps = []
    pools, runs = run_efficiency(backend, prompts, config, steps.append)
    assert len(steps) == jobs(config, len(prompts)) == len(pools) + len(runs)
    pool_seeds = {r.seed for r in backend.requests if r.seed >= POOL_SEED_BASE}
    run_seeds = {r.seed for r in backend.requests} - pool_seeds
    assert run_seeds == {1, 2} and len(pool_seeds) == 1
    sr = [r for r in runs if r.method == SPECULATIVE_REJECTION]
    assert len(sr) == 2 * 2 * 2 * 2 * 2  # prompts x seeds x n x alpha x schedules
    assert {(r.n, r.rejection_rate, r.schedule) for r in sr} == {
        (n, a, s) for n in (4, 8) for a in (0.5, 0.9) for s in ("memory-32", "every-16")}
    assert all(r.decision_points == [8] and r.survivors_per_round == [r.n // 2] for r in sr)
    assert {r.n for r in runs if r.method == BEST_OF_N} == {2}
    # memory-32: a KV budget of 32 tokens, so the first decision point at 32 / n tokens.
    memory_budgets = {b for b, r in zip(backend.budgets, backend.requests)
                      if r.method == pb.SPECULATIVE_REJECTION and r.decision_every_tokens == 0}
    assert memory_budgets == {(32, 8), (32, 4)}
