"""The model's work for the decode loop: a prompt chunk's prefill, and one decode step over the rows
of several sessions, each ending in their rows' sampled tokens. Tensors in, tokens out: which
sessions work is the scheduler's choice, what the tokens mean is the sessions' business."""
import torch

from .decoder import CausalDecoder, Segment
from .sampling import sample, uniforms


class ModelRunner:
    def __init__(self, decoder: CausalDecoder):
        self.decoder = decoder

    def prefill(self, session, end: int) -> torch.Tensor:
        """Prefill the session's prompt from what is done up to `end` into its prefix; the logits of
        the token after it [vocab]."""
        start = session.prefilled
        return self.decoder.prefill_chunk(session.prompt_ids[start:end], session.prefix, start)

    def decode_step(self, sessions: list) -> list[torch.Tensor]:
        """One step over the rows of `sessions` together (each writes its new keys/values into its own
        cache); each session's rows' sampled tokens."""
        segments, offset = [], 0
        for session in sessions:
            segments.append(Segment(offset, session.rows, session.prefix, session.cache, session.position - 1))
            offset += session.rows
        device, padded = self.decoder.device, self.decoder.padded_rows(offset)
        tokens = torch.zeros(padded, dtype=torch.long, device=device)
        positions = torch.zeros(padded, dtype=torch.long, device=device)
        for session, segment in zip(sessions, segments):
            rows = slice(segment.offset, segment.offset + segment.rows)
            tokens[rows] = session.last_tokens
            positions[rows] = session.prompt_length + segment.slot
        logits = self.decoder.decode_step(tokens, positions, segments)
        return [self.sample(session, logits[segment.offset: segment.offset + segment.rows])
                for session, segment in zip(sessions, segments)]

    @staticmethod
    def sample(session, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of `logits`, each row drawing from its own sequence's random stream, so
        no row's token depends on which other rows are in the batch."""
        return sample(logits, uniforms(session.sampling.seed, session.row_index, session.position), session.sampling)
