"""The judge scorer: a chat model asked whether the response is good, scored log P(Yes) - log P(No),
checked against the Hugging Face model's own forward pass over the whole question."""
import pytest
import torch

from common.models import resolve_model
from reward_service.__main__ import parse_args
from reward_service.engine import ScoringEngine
from reward_service.judge_template import DEFAULT_TEXT, JudgeTemplate, TemplateError
from reward_service.scorers import SCORERS, Item, JudgeScorer, Request, common_prefix_length, load_scorer
from reward_service.servicer import RewardServicer
from reward_service.sessions import SessionCache
from specrej.v1 import common_pb2, reward_pb2
from tests.reward.conftest import MESSAGES
from tests.reward.test_incremental import ROUNDS, items_of
from tests.reward.test_servicer import LoopbackReward

RESPONSES = ["An apple.", "Bananas are yellow and sweet, and monkeys like them.", "Pear", "I do not know."]
CONVERSATION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "A plum."}, {"role": "user", "content": "Another one?"}]
CUSTOM_TEXT = "Conversation so far:\n{conversation}\n\nReply:\n{response}\n\nIs the reply {{short}} and apt? Yes or No."


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return load_scorer("judge", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=64)


@torch.inference_mode()
def direct_judge_score(model, tokenizer, template_text: str, conversation: str, response: str) -> float:
    """log P(Yes) - log P(No) at the last position of the whole question, read by the model's own forward."""
    question = template_text.format(conversation=conversation, response=response)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True).input_ids
    logprobs = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    # SmolLM2's template opens the assistant's turn with "<|im_start|>assistant\n": no space before the answer.
    yes, no = (tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("Yes", "No"))
    return (logprobs[yes] - logprobs[no]).item()


def score_once(scorer, messages, responses) -> list[float]:
    items = [Item(r, False, c) for c, r in enumerate(responses)]
    prompt, bodies = scorer.tokenize(messages, items)
    (scored,), _ = scorer.score([Request(prompt, bodies, [i.candidate for i in items])])
    return scored.scores


def test_the_score_is_log_p_yes_minus_log_p_no_after_the_question(judge):
    scores = score_once(judge, MESSAGES, RESPONSES)
    expected = [direct_judge_score(judge.model, judge.tokenizer, DEFAULT_TEXT, "Name a fruit.", r) for r in RESPONSES]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len(set(scores)) == len(RESPONSES)
    assert [judge.tokenizer.decode([t]) for t in (judge.yes, judge.no)] == ["Yes", "No"]


def test_whitespace_after_a_response_does_not_change_its_score(judge):
    spaced, plain = score_once(judge, MESSAGES, ["An apple.  \n", "An apple."])
    assert spaced == pytest.approx(plain, abs=1e-5)


def test_a_template_from_a_file_over_a_longer_conversation(tiny_model_dir, judge, tmp_path):
    path = tmp_path / "question.txt"
    path.write_text(CUSTOM_TEXT, encoding="utf-8")
    scorer = load_scorer("judge", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=64,
                         judge_template=JudgeTemplate.load(str(path)))
    as_text = "System: Answer briefly.\n\nUser: Name a fruit.\n\nAssistant: A plum.\n\nUser: Another one?"
    expected = [direct_judge_score(judge.model, judge.tokenizer, CUSTOM_TEXT, as_text, r) for r in RESPONSES[:2]]
    assert score_once(scorer, CONVERSATION, RESPONSES[:2]) == pytest.approx(expected, abs=1e-4)


def test_text_the_chat_template_puts_before_the_answer_ends_the_question(tiny_model_dir, judge):
    """A template that opens the assistant's turn with an empty thinking block before its answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
        "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    scorer = JudgeScorer(judge.model, tokenizer, 64, JudgeTemplate.load(None))
    question = DEFAULT_TEXT.format(conversation="Name a fruit.", response=RESPONSES[0])
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False) + "<think>\n\n</think>\n\n"
    with torch.inference_mode():
        logits = judge.model(tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids).logits
    assert [tokenizer.decode([t]) for t in (scorer.yes, scorer.no)] == ["Yes", "No"]
    expected = (logits[0, -1, scorer.yes] - logits[0, -1, scorer.no]).item()
    assert score_once(scorer, MESSAGES, RESPONSES[:1]) == pytest.approx([expected], abs=1e-4)


def test_the_token_budget_splits_the_question_across_passes_without_changing_scores(tiny_model_dir, judge):
    small = load_scorer("judge", str(tiny_model_dir), torch.device("cpu"), torch.float32, token_budget=7)
    assert len(small.tail) > 7
    assert score_once(small, MESSAGES, RESPONSES) == pytest.approx(score_once(judge, MESSAGES, RESPONSES), abs=1e-4)


def test_a_session_reads_only_new_response_tokens_and_the_question_and_scores_as_from_scratch(judge):
    engine = ScoringEngine(judge, sessions=SessionCache(1 << 30), batch_window_seconds=0)
    try:
        session, previous = engine.open_session(), {}
        for number, round_ in enumerate(ROUNDS):
            items = items_of(round_)
            scored = engine.submit(MESSAGES, items, session=session).result()
            full = engine.submit(MESSAGES, items).result()
            # Cuts fall mid-word or after a space; the judge reads the text without the space.
            expected = [direct_judge_score(judge.model, judge.tokenizer, DEFAULT_TEXT, "Name a fruit.",
                                           i.response.rstrip()) for i in items]
            assert scored.scores == pytest.approx(expected, abs=1e-4)
            assert full.scores == pytest.approx(expected, abs=1e-4)
            prompt, bodies = judge.tokenize(MESSAGES, items)
            new = sum(len(b) - common_prefix_length(previous.get(i.candidate, []), b) for i, b in zip(items, bodies))
            assert scored.tokens == new + len(judge.tail) * len(items) + (len(prompt) if number == 0 else 0)
            if number:
                assert scored.tokens < full.tokens
            previous = {i.candidate: b for i, b in zip(items, bodies)}
    finally:
        engine.close()


def test_token_ids_sent_to_the_judge_are_read_as_the_text_they_spell(judge):
    engine = ScoringEngine(judge, sessions=SessionCache(1 << 20), batch_window_seconds=0)
    try:
        ids = judge.tokenizer(RESPONSES, add_special_tokens=False).input_ids
        items = [Item("", False, candidate, response) for candidate, response in enumerate(ids)]
        scored = engine.submit(MESSAGES, items, tokenizer=engine.tokenizer_fingerprint).result()
    finally:
        engine.close()
    assert scored.scores == pytest.approx(score_once(judge, MESSAGES, RESPONSES), abs=1e-5)


def test_info_reports_the_judge(judge):
    engine = ScoringEngine(judge, sessions=SessionCache(1 << 20), batch_window_seconds=0)
    loopback = LoopbackReward(RewardServicer(engine, model_name="tiny"))
    try:
        assert loopback.stub.Info(reward_pb2.RewardInfoRequest(), timeout=30).scorer == "judge"
        request = reward_pb2.ScoreRequest(messages=[common_pb2.Message(role="user", content="Name a fruit.")],
                                          items=[reward_pb2.ScoreItem(response=r) for r in RESPONSES[:2]])
        scored = loopback.stub.Score(request, timeout=30)
        assert list(scored.scores) == pytest.approx(score_once(judge, MESSAGES, RESPONSES[:2]), abs=1e-5)
    finally:
        loopback.stop()
        engine.close()


@pytest.mark.parametrize("text, complaint", [
    ("Is this good? {response}", "no {conversation} placeholder"),
    ("{conversation}: is it good?", "no {response} placeholder"),
    ("{response} answers {conversation}", "{conversation} before {response}"),
    ("{conversation} {response} {score}", "placeholder {score}"),
])
def test_a_bad_template_is_refused_at_start(capsys, text, complaint):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--scorer", "judge", "--judge-template", text])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "--judge-template" in message and complaint in message


def test_the_template_comes_from_a_file_named_in_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "question.txt"
    path.write_text(CUSTOM_TEXT, encoding="utf-8")
    monkeypatch.setenv("SPECREJ_JUDGE_TEMPLATE", str(path))
    assert parse_args(["--scorer", "judge"]).judge_template.text == CUSTOM_TEXT
    monkeypatch.delenv("SPECREJ_JUDGE_TEMPLATE")
    assert parse_args(["--scorer", "judge"]).judge_template.text == DEFAULT_TEXT
    with pytest.raises(TemplateError, match="is no file"):
        JudgeTemplate.load(str(tmp_path / "missing.txt"))


def test_every_registered_scorer_can_be_chosen_on_the_command_line():
    for name in SCORERS:
        assert parse_args(["--scorer", name]).scorer == name
    with pytest.raises(SystemExit):
        parse_args(["--scorer", "magic"])


def test_the_embedded_model_scores_as_its_own_forward_pass_and_prefers_an_answer_to_the_question():
    scorer = load_scorer("judge", resolve_model(None), torch.device("cpu"), torch.float32, token_budget=4096)
    question = "What is kevlar made out of?"
    responses = ["Kevlar is made of a synthetic polymer called poly-paraphenylene terephthalamide, an aramid "
                 "fibre. Long chains of this polymer are spun into strong fibres that are woven into fabric.",
                 "I like turtles."]
    expected = [direct_judge_score(scorer.model, scorer.tokenizer, DEFAULT_TEXT, question, r) for r in responses]
    answer, unrelated = score_once(scorer, [{"role": "user", "content": question}], responses)
    assert [answer, unrelated] == pytest.approx(expected, abs=1e-3)
    assert answer > unrelated + 0.5
