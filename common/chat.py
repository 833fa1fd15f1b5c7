"""Turning a conversation into model input the same way in the generator and the reward model."""


class PromptError(ValueError):
    pass


def message_dicts(messages) -> list[dict]:
    """specrej.v1 Message objects as the dicts chat templates take; a missing role means the user."""
    return [{"role": m.role or "user", "content": m.content} for m in messages]


def prompt_token_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation, ready for the assistant's reply."""
    if not messages:
        raise PromptError("at least one message is required")
    if tokenizer.chat_template:
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).input_ids
        except Exception as error:  # the template's own complaint (roles out of order, ...) goes to the caller
            raise PromptError(f"the chat template rejected the conversation: {error}") from error
    # Base models without a template continue the plain text of the conversation.
    return tokenizer("\n\n".join(m["content"] for m in messages), add_special_tokens=True).input_ids


def conversation_text(tokenizer, messages: list[dict], response: str) -> str:
    """The whole exchange as text, for reward models that read a formatted conversation."""
    exchange = [*messages, {"role": "assistant", "content": response}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(exchange, tokenize=False)
    return "\n\n".join(m["content"] for m in exchange)
