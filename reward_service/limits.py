"""Bounds on a Score request, checked on token counts before any model work."""
from dataclasses import dataclass

from common.errors import FieldError


@dataclass(frozen=True)
class InputLimits:
    max_context: int  # positions the model can attend over
    max_items: int = 4096
    max_messages: int = 256
    max_prompt_tokens: int = 0  # 0 = the model's context minus one response token
    max_response_tokens: int = 0  # 0 = the model's context minus the prompt

    def check_shape(self, num_messages: int, num_items: int) -> None:
        if num_messages == 0:
            raise FieldError("messages", "at least one message is required")
        if num_messages > self.max_messages:
            raise FieldError("messages", f"{num_messages} messages; the limit is {self.max_messages}")
        if num_items > self.max_items:
            raise FieldError("items", f"{num_items} responses in one request; the limit is {self.max_items}")

    def check_tokens(self, prompt_tokens: int, response_tokens: list[int]) -> None:
        prompt_limit = min(self.max_prompt_tokens or self.max_context, self.max_context - 1)
        if prompt_tokens > prompt_limit:
            raise FieldError("messages", f"the conversation is {prompt_tokens} tokens; the limit is {prompt_limit}")
        room = self.max_context - prompt_tokens
        response_limit = min(self.max_response_tokens, room) if self.max_response_tokens else room
        for index, length in enumerate(response_tokens):
            if length > response_limit:
                raise FieldError(f"items[{index}].response",
                                 f"{length} tokens; the limit is {response_limit} with this conversation")
