"""Turning growing token lists into text deltas that always end on a whole character."""

_INCOMPLETE = "\ufffd"  # what a tokenizer prints for a UTF-8 sequence cut in the middle


class TextStream:
    """Text already sent for one sequence; `delta` gives what is new and safe to send."""

    def __init__(self):
        self.sent = ""

    def delta(self, full_text: str, final: bool) -> str:
        if not final:
            full_text = full_text.rstrip(_INCOMPLETE)
        if not full_text.startswith(self.sent):
            # Decoding more tokens may re-spell a cut character; resend from the common prefix.
            common = 0
            while common < min(len(full_text), len(self.sent)) and full_text[common] == self.sent[common]:
                common += 1
            full_text = self.sent + full_text[common:]
        new = full_text[len(self.sent):]
        self.sent = full_text
        return new
