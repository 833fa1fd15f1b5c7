"""The Pipeline's driving logic against plain async stand-ins for the generator and reward model:
what it asks the generator for, whom it prunes, what it reports, and its trace spans."""
import asyncio

import pytest
from opentelemetry import trace

from common.errors import FieldError, Overloaded
from coordinator.pipeline import Pipeline
from coordinator.request import Limits, plan_request
from specrej.v1 import coordinator_pb2 as pb
from specrej.v1 import generator_pb2, reward_pb2


TOKEN_OF_A = 100  # the letter 'a' + i is token TOKEN_OF_A + i of the scripted vocabulary


class ScriptedGenerator:
    """Candidate i writes the letter 'a' + i (token TOKEN_OF_A + i) once per token and finishes
    ("stop") after `lengths[i]` tokens; a branch continues its parent's tokens and length. Records
    every command."""

    def __init__(self, lengths: list[int], memory_full_at: int | None = None):
        self.lengths, self.memory_full_at = lengths, memory_full_at
        self.running = set(range(len(lengths)))
        self.reported = [0] * len(lengths)  # tokens already sent as text
        self.position = 1
        self.commands = []

    async def start(self, start: generator_pb2.StartSession) -> generator_pb2.SessionStarted:
        self.commands.append(("start", start.n, start.min_tokens_before_full))
        return generator_pb2.SessionStarted(n=len(self.lengths), prompt_tokens=7, prefill_seconds=0.01,
                                            tokenizer="scripted")

    async def advance(self, until_tokens: int, keep: list[int], fork_from: list[int]) -> generator_pb2.Advanced:
        if keep:
            self.commands.append(("prune", sorted(keep)))
            self.running &= set(keep)
        if fork_from:
            self.commands.append(("fork", list(fork_from)))
            for parent in fork_from:
                assert parent in self.running
                self.running.add(len(self.lengths))
                self.lengths.append(self.lengths[parent])
                self.reported.append(self.reported[parent])
        self.commands.append(("advance", until_tokens))
        await asyncio.sleep(0)  # as a call over the network does, let other tasks run
        target = until_tokens or self.memory_full_at or max(self.lengths)
        began = self.position
        updates = []
        while self.running and self.position < target:
            self.position += 1
        for index in sorted(self.running):
            tokens = min(self.position, self.lengths[index])
            done = tokens == self.lengths[index]
            new = tokens - self.reported[index]
            updates.append(generator_pb2.SequenceUpdate(
                index=index, text_delta=chr(ord("a") + index) * new, token_ids=[TOKEN_OF_A + index] * new,
                num_tokens=tokens, finish_reason="stop" if done else ""))
            self.reported[index] = tokens
            if done:
                self.running.discard(index)
        return generator_pb2.Advanced(sequences=updates, position=self.position, steps=self.position - began,
                                      memory_full=until_tokens == 0)


class IndexReward:
    """Scores a response by its letter: candidate i scores i, so higher indices win."""

    def __init__(self):
        self.calls = []
        self.requests = []

    async def score(self, request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreResponse:
        self.calls.append([item.response for item in request.items])
        self.requests.append(request)
        return reward_pb2.ScoreResponse(scores=[float(ord(i.response[0]) - ord("a")) for i in request.items],
                                        scored_tokens=sum(len(i.response) for i in request.items))


def run(plan, generator, reward, score_ahead_tokens=0):
    async def drive():
        pipeline = Pipeline(plan, generator, reward, score_ahead_tokens=score_ahead_tokens)
        await pipeline.start()
        return pipeline, [event async for event in pipeline.events()]
    return asyncio.run(drive())


def plan(**fields):
    defaults = dict(prompt="hello", n=8, max_new_tokens=20, seed=1, decision_every_tokens=5, rejection_rate=0.5,
                    first_decision_tokens=0)
    return plan_request(pb.GenerateRequest(**{**defaults, **fields}), Limits(memory_round_tokens=4))


def test_each_decision_point_keeps_the_best_half_and_prunes_the_rest_on_the_generator():
    generator, reward = ScriptedGenerator([20] * 8), IndexReward()
    pipeline, events = run(plan(), generator, reward)
    rounds, result = events[:-1], events[-1]
    assert [r.token_position for r in rounds] == [5, 10, 15]
    assert [r.active_before for r in rounds] == [8, 4, 2]
    assert [c for c in generator.commands if c[0] == "prune"] == [("prune", [4, 5, 6, 7]), ("prune", [6, 7]),
                                                                   ("prune", [7])]
    assert [c[1] for c in generator.commands if c[0] == "advance"] == [5, 10, 15, 20]
    assert result.best.index == 7 and result.best.text == "h" * 20 and result.best.finish_reason == "stop"
    assert list(result.stats.rounds) == rounds
    # Decoded: 8 candidates to 5 tokens, 4 to 10, 2 to 15, 1 to 20.
    assert result.stats.generated_tokens == pipeline.decoded_tokens == 4 * 5 + 2 * 10 + 15 + 20
    assert result.stats.scored_tokens == sum(len(text) for call in reward.calls for text in call)


def test_without_refill_the_generator_is_never_asked_for_branches():
    generator = ScriptedGenerator([20] * 8)
    _, events = run(plan(), generator, IndexReward())
    assert not [c for c in generator.commands if c[0] == "fork"]
    assert [r.branched for r in events[:-1]] == [0, 0, 0]


def test_refill_branches_the_best_running_survivors_back_up_to_n():
    generator = ScriptedGenerator([20] * 8)
    pipeline, events = run(plan(refill=True), generator, IndexReward())
    rounds, result = events[:-1], events[-1]
    assert [r.branched for r in rounds] == [4, 4, 4]
    assert [r.active_before for r in rounds] == [8, 8, 8]
    # Round 1 keeps 7, 6, 5, 4 (best first) and branches each once: 8 to 11. A branch scores as its
    # parent (its text begins with the parent's), ties going to the lower index: 7, 8, 6, 9 are kept.
    forks = [c[1] for c in generator.commands if c[0] == "fork"]
    assert forks[:2] == [[7, 6, 5, 4], [7, 8, 6, 9]]
    assert pipeline.candidates[8].text == "h" * 5 + "i" * 15
    assert result.best.index == 7 and result.best.text == "h" * 20
    # Eight rows decode all the way: the branches' inherited tokens are not counted again.
    assert result.stats.generated_tokens == pipeline.decoded_tokens == 8 * 20


def test_every_score_carries_each_candidates_whole_token_ids_beside_its_text_branches_too():
    reward = IndexReward()
    pipeline, _ = run(plan(refill=True), ScriptedGenerator([20] * 8), reward)
    assert any(item.candidate >= 8 for request in reward.requests for item in request.items)
    for request in reward.requests:
        assert request.tokenizer == "scripted"  # the generator's, for the port to compare with the reward's
        for item in request.items:
            assert list(item.token_ids) == [TOKEN_OF_A + ord(letter) - ord("a") for letter in item.response]


def test_finished_candidates_are_never_branched():
    # 7 (the best) finishes at 3 tokens: the survivors it beats are branched, never it.
    generator = ScriptedGenerator([20] * 7 + [3])
    _, events = run(plan(refill=True), generator, IndexReward())
    forks = [c[1] for c in generator.commands if c[0] == "fork"]
    assert forks and all(7 not in parents for parents in forks)
    assert forks[0] == [6, 5, 4, 6, 5]  # 8 live - 4 rejected - 1 finished = 3 running, refilled to 8


def test_the_first_decision_point_sizes_the_session_and_best_of_n_needs_room_for_everything():
    generator = ScriptedGenerator([3] * 4)
    run(plan(decision_every_tokens=0), generator, IndexReward())
    assert generator.commands[0] == ("start", 8, 4)  # memory-driven: the first round's tokens
    generator = ScriptedGenerator([3] * 4)
    _, events = run(plan(method=pb.BEST_OF_N), generator, IndexReward())
    assert generator.commands[0] == ("start", 8, 20)
    assert len(events) == 1 and events[0].stats.rounds == []


def test_finished_candidates_compete_and_are_never_pruned_on_the_generator():
    # Candidate 7 (best) finishes at 3 tokens; it stays the winner without being decoded further.
    generator = ScriptedGenerator([20] * 7 + [3])
    _, events = run(plan(), generator, IndexReward())
    assert events[-1].best.index == 7 and events[-1].best.text == "hhh"
    assert all(7 not in c[1] for c in generator.commands if c[0] == "prune")
    assert events[0].finished_kept == 1


def test_a_lone_candidate_that_fills_the_cache_ends_at_length():
    generator = ScriptedGenerator([50], memory_full_at=6)
    _, events = run(plan(n=1, decision_every_tokens=0, max_new_tokens=50), generator, IndexReward())
    # The cache is full after the first advance; the second makes no progress and ends the request.
    assert events[-1].best.finish_reason == "length" and events[-1].best.num_tokens == 6


def test_a_generator_error_propagates_unchanged():
    class Refusing(ScriptedGenerator):
        async def start(self, start):
            raise FieldError("n", "8 candidates do not fit")

    with pytest.raises(FieldError, match="^n: "):
        run(plan(), Refusing([5] * 8), IndexReward())


def test_a_request_traces_one_span_per_decision_point_and_per_scoring_call(span_exporter):
    exporter = span_exporter
    tracer = trace.get_tracer("test")

    async def traced():
        with tracer.start_as_current_span("request"):
            pipeline = Pipeline(plan(), ScriptedGenerator([20] * 8), IndexReward())
            await pipeline.start()
            return [event async for event in pipeline.events()]
    events = asyncio.run(traced())
    spans = exporter.get_finished_spans()
    request = next(s for s in spans if s.name == "request")
    children = [s for s in spans if s.parent and s.parent.span_id == request.context.span_id]
    decision_points = [s for s in children if s.name == "decision point"]
    assert len(decision_points) == len(events[-1].stats.rounds) == 3
    assert [s.attributes["specrej.position"] for s in decision_points] == [5, 10, 15]
    scores = [s for s in spans if s.name == "score"]
    assert len(scores) == 4  # one per decision point, one for the final ranking
    assert all(s.parent.span_id in {d.context.span_id for d in decision_points} for s in scores[:3])


def test_scoring_ahead_sends_text_between_decision_points_and_decides_the_same():
    _, alone = run(plan(), ScriptedGenerator([20] * 8), IndexReward())
    generator, reward = ScriptedGenerator([20] * 8), IndexReward()
    pipeline, ahead = run(plan(), generator, reward, score_ahead_tokens=2)
    assert [(r.token_position, r.kept, r.rejected) for r in ahead[:-1]] == \
        [(r.token_position, r.kept, r.rejected) for r in alone[:-1]]
    assert ahead[-1].best == alone[-1].best
    assert [c[1] for c in generator.commands if c[0] == "advance"] == [2, 4, 5, 6, 8, 10, 12, 14, 15, 16, 18, 20]
    # The reward model saw the text at every advance that was not a decision point, then at each decision point.
    lengths = [len(call[0]) for call in reward.calls]
    assert lengths == [2, 4, 5, 6, 8, 10, 12, 14, 15, 16, 18, 20]
    assert pipeline.scored_tokens == ahead[-1].stats.scored_tokens == sum(len(t) for call in reward.calls for t in call)


class SlowReward(IndexReward):
    """Takes `seconds` per call and records how many calls overlapped; calls for texts of a length
    in `refused_lengths` fail as an overloaded reward service would."""

    def __init__(self, seconds: float, refused_lengths: tuple[int, ...] = ()):
        super().__init__()
        self.seconds, self.refused_lengths = seconds, refused_lengths
        self.in_flight = self.most_in_flight = self.refused = 0

    async def score(self, request):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.seconds)
            if len(request.items[0].response) in self.refused_lengths:
                self.refused += 1
                raise Overloaded("the reward service is busy", retry_after_seconds=1.0)
            return await super().score(request)
        finally:
            self.in_flight -= 1


def test_scoring_ahead_keeps_one_call_in_flight_and_a_failed_one_costs_the_request_nothing():
    reward = SlowReward(seconds=0.01, refused_lengths=(1, 2, 3, 4, 6, 7, 8, 9))  # every call between decisions
    _, events = run(plan(), ScriptedGenerator([20] * 8), reward, score_ahead_tokens=1)
    assert reward.most_in_flight == 1 and reward.refused > 0
    assert events[-1].best.index == 7 and [r.token_position for r in events[:-1]] == [5, 10, 15]


def test_a_cancelled_request_leaves_no_scoring_call_running():
    reward = SlowReward(seconds=30)

    async def cancel_while_scoring_ahead():
        pipeline = Pipeline(plan(), ScriptedGenerator([20] * 8), reward, score_ahead_tokens=2)
        await pipeline.start()
        events = pipeline.events()
        consumer = asyncio.ensure_future(events.__anext__())
        while reward.in_flight == 0:
            await asyncio.sleep(0.001)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await events.aclose()
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(cancel_while_scoring_ahead()) == []
    assert reward.in_flight == 0


def test_the_coordinator_scores_ahead_every_8_tokens_unless_told_otherwise(monkeypatch, capsys):
    from coordinator.__main__ import parse_args

    assert parse_args([]).score_ahead_tokens == 8
    monkeypatch.setenv("SPECREJ_SCORE_AHEAD_TOKENS", "0")
    assert parse_args([]).score_ahead_tokens == 0
    with pytest.raises(SystemExit):
        parse_args(["--score-ahead-tokens", "-1"])
    assert "--score-ahead-tokens must be 0 or more" in capsys.readouterr().err
