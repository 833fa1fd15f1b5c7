"""A scoring stream's rounds: what each candidate gained since the previous round in (text, or token
ids on a stream that names its tokenizer), the whole responses to score out."""
from dataclasses import dataclass, field

from common.errors import FieldError
from .scorers import Item


@dataclass
class Delta:
    candidate: int
    text: str  # appended since the candidate's previous round
    complete: bool = False
    token_ids: list[int] = field(default_factory=list)  # appended since the previous round, on a stream of ids


class CandidateResponses:
    """Each candidate's response as a stream's rounds have built it: text, or token ids when
    `token_ids`. A candidate missing from a round is dropped for good: a delta for it later would
    extend a response the caller may no longer hold."""

    def __init__(self, token_ids: bool = False):
        self.token_ids = token_ids
        self._responses: dict[int, str | list[int]] = {}
        self._dropped: set[int] = set()

    def apply(self, deltas: list[Delta]) -> list[Item]:
        """The items to score for this round, in its order; raises FieldError for a dropped candidate."""
        for index, delta in enumerate(deltas):
            if delta.candidate in self._dropped:
                raise FieldError(f"items[{index}].candidate",
                                 f"candidate {delta.candidate} was dropped by an earlier round of this stream")
        named = {d.candidate for d in deltas}
        for candidate in [c for c in self._responses if c not in named]:
            del self._responses[candidate]
            self._dropped.add(candidate)
        items = []
        for delta in deltas:
            if self.token_ids:
                ids = self._responses.get(delta.candidate, []) + delta.token_ids
                self._responses[delta.candidate] = ids
                items.append(Item("", delta.complete, delta.candidate, ids))
            else:
                text = self._responses.get(delta.candidate, "") + delta.text
                self._responses[delta.candidate] = text
                items.append(Item(text, delta.complete, delta.candidate))
        return items
