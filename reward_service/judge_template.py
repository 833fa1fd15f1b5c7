"""The question a judge model is asked about a response: a format string with a `{conversation}` and a
`{response}` placeholder, the conversation before the response, so that everything up to the response
stays the same across a session's calls and only the response and what follows it are read again."""
import os
import pathlib
import reprlib
import string

DEFAULT_TEXT = """Question: {conversation}

Answer: {response}

Is this a good answer to the question? Answer Yes or No."""

FIELDS = ("conversation", "response")


class TemplateError(ValueError):
    pass


class JudgeTemplate:
    def __init__(self, text: str):
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise TemplateError(f"the judge template is not a format string: {error}") from None
        fields = []
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if spec or conversion:
                raise TemplateError(f"the judge template's {{{name}}} has a format spec or conversion; it takes "
                                    "plain {conversation} and {response}")
            if name not in FIELDS:
                raise TemplateError(f"the judge template has a placeholder {{{name}}} it cannot fill; it takes "
                                    "{conversation} and {response} (write literal braces as {{ and }})")
            fields.append(name)
        for name in FIELDS:
            if name not in fields:
                raise TemplateError(f"the judge template has no {{{name}}} placeholder")
        if fields.count("response") > 1:
            raise TemplateError("the judge template has {response} more than once")
        if "conversation" in fields[fields.index("response"):]:
            raise TemplateError("the judge template must put {conversation} before {response}: what precedes the "
                                "response is read once per session")
        self.text = text

    @classmethod
    def load(cls, source: str | None) -> "JudgeTemplate":
        """The template in the file named `source`, or `source` itself as the template; None = the default."""
        if source is None:
            return cls(DEFAULT_TEXT)
        if os.path.isfile(source):  # False, not an error, for text that cannot be a file name
            return cls(pathlib.Path(source).read_text(encoding="utf-8"))
        try:
            return cls(source)
        except TemplateError as error:
            raise TemplateError(f"{reprlib.repr(source)} is no file, and as a template: {error}") from None

    def format(self, conversation: str, response: str) -> str:
        return self.text.format(conversation=conversation, response=response)


def plain_conversation(messages: list[dict]) -> str:
    """The conversation as the judge reads it: a lone user message is its text; longer ones name each turn."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
