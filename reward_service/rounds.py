"""A scoring stream's rounds: each candidate's text appended since the previous round in, the whole
texts to score out."""
from dataclasses import dataclass

from common.errors import FieldError
from .scorers import Item


@dataclass
class Delta:
    candidate: int
    text: str  # appended since the candidate's previous round
    complete: bool = False


class CandidateTexts:
    """Each candidate's text as a stream's rounds have built it. A candidate missing from a round is
    dropped for good: a delta for it later would extend a text the caller may no longer hold."""

    def __init__(self):
        self._texts: dict[int, str] = {}
        self._dropped: set[int] = set()

    def apply(self, deltas: list[Delta]) -> list[Item]:
        """The items to score for this round, in its order; raises FieldError for a dropped candidate."""
        for index, delta in enumerate(deltas):
            if delta.candidate in self._dropped:
                raise FieldError(f"items[{index}].candidate",
                                 f"candidate {delta.candidate} was dropped by an earlier round of this stream")
        named = {d.candidate for d in deltas}
        for candidate in [c for c in self._texts if c not in named]:
            del self._texts[candidate]
            self._dropped.add(candidate)
        items = []
        for delta in deltas:
            text = self._texts.get(delta.candidate, "") + delta.text
            self._texts[delta.candidate] = text
            items.append(Item(text, delta.complete, delta.candidate))
        return items
