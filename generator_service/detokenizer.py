"""Turning token ids, a few at a time, into text deltas that always end on a whole character.

A token's text depends on its neighbours (a byte piece of a multi-byte character, the leading space
a SentencePiece decoder strips from the first token), so new tokens are decoded behind a little
context, as Hugging Face TGI and vLLM do: the window `tokens[prefix_offset:]` is decoded, and what it
adds to the text of `tokens[prefix_offset:read_offset]` (the tokens already sent) is the delta. The
offsets move only to a token after which the text is whole; a cut character ("\\ufffd" at the end)
waits for its other bytes, and the tokens before it are sent. Each call decodes the new tokens and
the last delta's tokens, never the whole sequence."""
import copy

_INCOMPLETE = "\ufffd"  # what a tokenizer prints for a UTF-8 sequence cut in the middle
_LOOK_BACK = 4  # a character's bytes come in at most four tokens


def _is_byte_piece(token: str | None) -> bool:
    """A byte-fallback token such as <0xE2> (Llama, Mistral and other SentencePiece vocabularies)."""
    return token is not None and len(token) == 6 and token.startswith("<0x") and token.endswith(">")


class IncrementalDetokenizer:
    """One sequence's text: the deltas of `add`, then `finish`, concatenated are exactly
    `tokenizer.decode(all_ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)`.

    Tokenization-space clean-up is always off, whatever the tokenizer's setting: it rewrites text
    already sent ("a '" and one more token becomes "a'b", not "a ' b"), and the text is then the
    one the model wrote, which tokenizes back to its tokens. A run of byte-fallback tokens is held
    back until a token of another kind ends it: such a decoder spells a run that is not valid
    UTF-8 as one "\\ufffd" per byte, so a later byte can turn letters already decoded into "\\ufffd".
    Works with any Hugging Face tokenizer and any backend that has token ids."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # The ids that decoding drops: the added tokens marked special (more than all_special_ids).
        self._skipped_ids = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} \
            if skip_special_tokens else set()
        self._window: list[int] = []  # the tokens from the prefix offset on
        self._read = 0  # the read offset, counted in the window: tokens before it are sent
        self._sent_text = ""  # the text of window[:read]
        self.token_count = 0  # tokens added so far

    def add(self, token_ids: list[int]) -> str:
        """Take the next tokens; returns the text now safe to send (possibly empty)."""
        self._window.extend(token_ids)
        self.token_count += len(token_ids)
        for end in range(len(self._window), max(self._read, len(self._window) - _LOOK_BACK), -1):
            if self._ends_in_byte_run(end):
                continue
            text = self._decode(self._window[:end])
            if len(text) <= len(self._sent_text):
                return ""
            if not text.endswith(_INCOMPLETE):
                return self._send(text, end)
        return ""

    def branch(self) -> "IncrementalDetokenizer":
        """A detokenizer at this one's point that then goes on alone: a branch's text continues the
        text its parent had sent, held-back tokens included."""
        twin = copy.copy(self)
        twin._window = list(self._window)
        return twin

    def finish(self) -> str:
        """The text held back, cut characters included; call once, after the last tokens."""
        text = self._decode(self._window)
        return self._send(text, len(self._window)) if len(text) > len(self._sent_text) else ""

    def _ends_in_byte_run(self, end: int) -> bool:
        """Whether the last token of window[:end] that decoding keeps is a byte piece; the sent
        tokens never end in one."""
        for token_id in reversed(self._window[self._read:end]):
            if token_id not in self._skipped_ids:
                return _is_byte_piece(self._tokenizer.convert_ids_to_tokens(token_id))
        return False

    def _send(self, text: str, end: int) -> str:
        """Move the offsets to `end`, window[:end] decoding to `text`; returns what is new."""
        delta = text[len(self._sent_text):]
        self._window, self._read = self._window[self._read:], end - self._read
        self._sent_text = self._decode(self._window[:self._read])
        return delta

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens,
                                      clean_up_tokenization_spaces=False)
