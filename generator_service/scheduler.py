"""Who works in the decode loop's next turn: the sessions admission let in are prefilled one chunk
per turn, oldest first, so a long prompt never stalls the others' decoding for more than a chunk;
every prefilled session whose advance still wants tokens takes part in the turn's decode step; and
a session's rows are compacted when its finished rows would pad the batch by a quarter or more."""
from dataclasses import dataclass, field

from .admission import Admission


@dataclass
class Turn:
    prefill: object | None = None  # the session whose next prompt chunk is prefilled
    step: list = field(default_factory=list)  # the sessions whose rows take a decode step together

    @property
    def idle(self) -> bool:
        return self.prefill is None and not self.step


class Scheduler:
    def __init__(self, admission: Admission, padded_rows):
        self.admission, self.padded_rows = admission, padded_rows
        self.prefilling: list = []
        self.decoding: list = []

    def schedule(self) -> Turn:
        self.prefilling += self.admission.take_admitted()
        return Turn(prefill=self.prefilling[0] if self.prefilling else None,
                    step=[s for s in self.decoding if s.wants_step()])

    def prefilled(self, session) -> None:
        """`session`'s prompt is done: it decodes from the next turn on."""
        self.prefilling.remove(session)
        self.decoding.append(session)

    def remove(self, session) -> None:
        for group in (self.prefilling, self.decoding):
            if session in group:
                group.remove(session)

    def should_compact(self, session) -> bool:
        """Compact when it would shrink the session's padded batch by at least a quarter: a fixed rule
        on the session's own rows, so its shapes, and in batch-invariant mode its numbers, never
        depend on other sessions."""
        alive = session.alive_rows
        return alive > 0 and self.padded_rows(alive) * 4 <= self.padded_rows(session.rows) * 3
