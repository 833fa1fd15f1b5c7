"""Text deltas from token ids: whatever the tokens and however they arrive, the concatenated deltas are
the decoding of all the tokens, and text once sent is never spelled otherwise later. Three tokenizer
families: the default model's byte-level BPE, a SentencePiece-style BPE with byte fallback (Llama,
Mistral) and WordPiece (BERT), the last two built here from a small corpus."""
import json
import random

import pytest
import torch

from generator_service.detokenizer import IncrementalDetokenizer
from generator_service.engine import GeneratorEngine
from generator_service.sampling import SamplingParams
from tests.generator.scripted import POEM, WAIT, close_and_wait

TEXTS = ["Hi 😀 世界 é\n", "naïve café — 東京 🚀🚀 ok", "  \n\t x\n\n", "👩‍👩‍👧 family", "a ' b do n't . it's",
         "The quick brown fox jumps over the lazy dog, 12345 times!"]


@pytest.fixture(scope="module")
def byte_level(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _wrapped(tokenizer, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=True, **special)


@pytest.fixture(scope="module")
def byte_fallback():
    """Llama/Mistral style: "▁" for spaces, a leading space stripped, <0xNN> pieces in the vocabulary
    for bytes that no other token spells."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    specials = ["<unk>", "<s>", "</s>"]
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learned = Tokenizer(models.BPE(unk_token="<unk>"))
    learned.normalizer = normalizer
    # A small alphabet, so that rarer characters (emojis, CJK, accents) are spelled in byte pieces.
    learned.train_from_iterator(TEXTS * 10, trainers.BpeTrainer(vocab_size=120, limit_alphabet=30,
                                                                special_tokens=specials, show_progress=False))
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += sorted(set(learned.get_vocab()) - set(pieces), key=learned.token_to_id)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(learned.to_str())["model"]["merges"]]
    tokenizer = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>",
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(specials)
    return _wrapped(tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.train_from_iterator(TEXTS * 10, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False))
    return _wrapped(tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(params=["byte_level", "byte_fallback", "wordpiece"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def decoded(tokenizer, ids, skip_special_tokens):
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def streamed(tokenizer, ids, skip_special_tokens, chunks):
    """Every delta, feeding `ids` in pieces of the sizes `chunks` draws, then finish()."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas, start = [], 0
    while start < len(ids):
        size = chunks()
        deltas.append(detokenizer.add(ids[start:start + size]))
        start += size
    deltas.append(detokenizer.finish())
    assert detokenizer.token_count == len(ids)
    return deltas


def sampled_ids(tokenizer, rng: random.Random, count: int) -> list[list[int]]:
    """Sequences of encoded text cut anywhere (mid-character included), byte pieces, special tokens
    and any id of the vocabulary, mixed."""
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    specials = sorted(tokenizer.added_tokens_decoder)
    vocab_size = len(tokenizer)
    alone = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    byte_pieces = [i for i, text in enumerate(alone) if len(text.encode()) == 1 or "\ufffd" in text]
    sequences = []
    for _ in range(count):
        ids = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.4:
                piece = rng.choice(encoded)
                start = rng.randrange(len(piece))
                ids += piece[start:rng.randint(start + 1, len(piece))]
            elif kind < 0.6:
                ids += rng.choices(byte_pieces, k=rng.randint(1, 4))
            elif kind < 0.7:
                ids.append(rng.choice(specials))
            else:
                ids += [rng.randrange(vocab_size) for _ in range(rng.randint(1, 4))]
        sequences.append(ids)
    return sequences


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_deltas_of_any_tokens_in_any_chunks_concatenate_to_their_decoding(tokenizer, skip_special_tokens):
    rng = random.Random(7)
    for ids in sampled_ids(tokenizer, rng, 300):
        deltas = streamed(tokenizer, ids, skip_special_tokens, lambda: rng.choice([0, 1, 1, 1, 2, 3, 5, 8]))
        assert "".join(deltas) == decoded(tokenizer, ids, skip_special_tokens), ids


def test_whole_text_streams_without_cut_characters(tokenizer):
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        deltas = streamed(tokenizer, ids, True, lambda: 1)
        assert "".join(deltas) == decoded(tokenizer, ids, True)
        assert not any("\ufffd" in delta for delta in deltas)


def test_an_emoji_split_into_byte_pieces_is_sent_once_whole(byte_level):
    ids = byte_level.encode("Hi 😀", add_special_tokens=False)
    assert len(ids) == 3 and all("\ufffd" in byte_level.decode([i]) for i in ids[1:])  # the emoji: two pieces
    deltas = streamed(byte_level, ids, True, lambda: 1)
    assert [d for d in deltas if d] == ["Hi", " 😀"]


def test_text_already_sent_is_never_spelled_otherwise(wordpiece, byte_fallback):
    """Decoding a longer sequence can respell text already sent: clean-up of tokenization spaces
    turns "a '" into "a'b" once "b" follows, and a byte-fallback decoder turns "m" into "\ufffd"
    when a byte that cannot follow it comes. Text sent stays the start of the final text."""
    respelled = [(wordpiece, wordpiece.encode("a ' b", add_special_tokens=False), "a ' b"),
                 (byte_fallback, byte_fallback.convert_tokens_to_ids(["<0x6D>", "<0xC3>", "<0xA9>", "<0xA9>", "caf"]),
                  "\ufffd\ufffd\ufffd\ufffdcaf")]
    for tokenizer, ids, text in respelled:
        as_decoded = [tokenizer.decode(ids[:end]) for end in range(1, len(ids) + 1)]
        assert any(not as_decoded[-1].startswith(prefix) for prefix in as_decoded)  # the situation is real
        detokenizer, sent = IncrementalDetokenizer(tokenizer), ""
        for token in ids:
            sent += detokenizer.add([token])
            assert text.startswith(sent)
        assert sent + detokenizer.finish() == text == decoded(tokenizer, ids, True)


class _CountingTokenizer:
    """A tokenizer that records how many tokens each decode call reads."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def decode(self, ids, **options):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, **options)


@pytest.mark.parametrize("chunk", [1, 8])
def test_each_call_decodes_a_few_tokens_not_the_whole_sequence(byte_level, chunk):
    ids = byte_level.encode(" ".join(TEXTS * 20), add_special_tokens=False)
    counting = _CountingTokenizer(byte_level)
    assert "".join(streamed(counting, ids, True, lambda: chunk)) == decoded(byte_level, ids, True)
    assert len(ids) > 500 and max(counting.lengths) <= 2 * chunk + 6


def test_a_session_streams_the_text_of_its_tokens(tiny_model_dir):
    """Deltas over several advances and a prune add up to each sequence's decoded tokens, the
    ending EOS left out; rejected sequences hear nothing more."""
    engine = GeneratorEngine(str(tiny_model_dir), device="cpu", kv_cache_budget=64 * 1024**2, max_batch_size=64)
    eos = engine.tokenizer.eos_token_id
    bias = torch.zeros(engine.decoder.vocab_size)
    bias[eos] = 7.0  # some sequences end early
    engine.decoder.lm_head.bias = torch.nn.Parameter(bias)
    session = engine.open_session(POEM, n=16, max_new_tokens=40, min_tokens_before_full=0,
                                  sampling=SamplingParams(seed=5))
    texts = [""] * 16
    try:
        session.start().result(WAIT)
        for until in (3, 7, None, 20, 0):
            if until is None:
                session.prune([i for i in session.running_indices if i % 2 == 0]).result(WAIT)
                continue
            for update in session.advance(until).result(WAIT).updates:
                texts[update.index] += update.text_delta
    finally:
        close_and_wait(engine, session)
        engine.shutdown()
    sequences = session.sequences
    assert any(s.finish_reason == "stop" for s in sequences) and any(s.finish_reason == "rejected" for s in sequences)
    for sequence, text in zip(sequences, texts):
        body = sequence.tokens[:-1] if sequence.finish_reason == "stop" else sequence.tokens
        if sequence.finish_reason == "rejected":
            assert decoded(engine.tokenizer, body, True).startswith(text)
        else:
            assert text == decoded(engine.tokenizer, body, True)
