"""Bounds on a Score request, checked on token counts before any model work, and on characters
before tokenizing: text that surely holds too many tokens is refused without building them."""
from dataclasses import dataclass

from common.errors import FieldError


@dataclass(frozen=True)
class InputLimits:
    max_context: int  # positions the model can attend over
    max_items: int = 4096
    max_messages: int = 256
    max_prompt_tokens: int = 0  # 0 = the model's context minus one response token
    max_response_tokens: int = 0  # 0 = the model's context minus the prompt
    # The most characters one token spells (longest_token_chars); 0 = text is not checked before tokenizing.
    max_token_chars: int = 0

    @property
    def _prompt_limit(self) -> int:
        return min(self.max_prompt_tokens or self.max_context, self.max_context - 1)

    def check_text(self, messages: list[dict], responses: list[str]) -> None:
        """Refuse text with more characters than its token limit times the longest token: however
        it is tokenized, it holds too many tokens."""
        if not self.max_token_chars:
            return
        prompt_chars = sum(len(m["content"]) for m in messages)
        if prompt_chars > self._prompt_limit * self.max_token_chars:
            raise FieldError("messages", f"{prompt_chars} characters, more than {self._prompt_limit} tokens can "
                                         f"spell (the limit is {self._prompt_limit} tokens)")
        response_limit = min(self.max_response_tokens or self.max_context, self.max_context)
        for index, response in enumerate(responses):
            if len(response) > response_limit * self.max_token_chars:
                raise FieldError(f"items[{index}].response", f"{len(response)} characters, more than "
                                                             f"{response_limit} tokens can spell (the limit)")

    def check_shape(self, num_messages: int, num_items: int) -> None:
        if num_messages == 0:
            raise FieldError("messages", "at least one message is required")
        if num_messages > self.max_messages:
            raise FieldError("messages", f"{num_messages} messages; the limit is {self.max_messages}")
        if num_items > self.max_items:
            raise FieldError("items", f"{num_items} responses in one request; the limit is {self.max_items}")

    def check_tokens(self, prompt_tokens: int, response_tokens: list[int]) -> None:
        prompt_limit = self._prompt_limit
        if prompt_tokens > prompt_limit:
            raise FieldError("messages", f"the conversation is {prompt_tokens} tokens; the limit is {prompt_limit}")
        room = self.max_context - prompt_tokens
        response_limit = min(self.max_response_tokens, room) if self.max_response_tokens else room
        for index, length in enumerate(response_tokens):
            if length > response_limit:
                raise FieldError(f"items[{index}].response",
                                 f"{length} tokens; the limit is {response_limit} with this conversation")


def longest_token_chars(tokenizer) -> int:
    """Characters the longest token of `tokenizer` spells: a token's string in the vocabulary is at
    least as long as the text it decodes to (byte-level and SentencePiece vocabularies alike)."""
    return max(len(token) for token in tokenizer.get_vocab())
