"""How well partial rewards at a decision point foretell final rewards, from the paired journal.

At each decision point of an SR run the journal holds every live candidate's partial reward; the
pair's Best-of-n0 run, started from the very same candidates, holds each one's final reward. Per
decision point (token position) this gives Kendall's tau between the two over the live candidates,
and whether Best-of-n0's winner was still live there and whether the decision kept it: the
mechanism behind every lost pair. Grouped by reward scorer, since each scores partial text its
own way.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.paired.experiment import Pair, Variant
from bench.stats.bootstrap import Interval, clustered_indices, mean_interval
from bench.stats.rank_correlation import kendall_tau


@dataclass(frozen=True)
class DecisionPointAgreement:
    reward_scorer: str
    n0: int
    variant: Variant
    token_position: int
    decision_points: int  # pairs whose run decided here
    mean_live: float  # candidates scored at this point, on average
    kendall_tau: Interval | None  # mean over the pairs, interval resampling prompts; None where every point ties
    winner_live_share: float  # Best-of-n0's winner among the live candidates
    winner_running_share: float  # ... and still decoding (not yet finished)
    winner_kept_share: float  # ... and kept by the decision


def partial_agreement(pairs: Sequence[Pair], resamples: int = 2000, seed: int = 0) -> list[DecisionPointAgreement]:
    """One row per (reward scorer, n0, variant, token position), over the pairs whose SR run recorded
    its partial rewards; pairs journaled without them are left out."""
    rows: dict[tuple, list[tuple[str, float, bool, bool, bool]]] = defaultdict(list)
    for pair in pairs:
        finals = pair.bon.candidate_rewards
        if not finals:
            continue
        for point in pair.sr.partial_scores:
            # A branch (refill) is no candidate of Best-of-n0, so it has no final reward to compare with.
            candidates = [c for c in point["candidates"] if c[0] < len(finals)]
            tau = kendall_tau([c[1] for c in candidates], [finals[c[0]] for c in candidates])
            winner = next((c for c in candidates if c[0] == pair.bon.index), None)
            rows[(pair.reward_scorer, pair.n0, pair.variant, point["token_position"])].append(
                (pair.prompt_id, tau, len(candidates), winner is not None, winner is not None and not winner[2],
                 winner is not None and winner[3]))
    agreements = []
    for (scorer, n0, variant, position), points in rows.items():
        prompts, taus, live, winner_live, winner_running, winner_kept = zip(*points)
        defined = [i for i, tau in enumerate(taus) if not np.isnan(tau)]
        tau = (mean_interval([taus[i] for i in defined], clustered_indices([prompts[i] for i in defined],
                                                                            resamples, seed))
               if defined else None)
        agreements.append(DecisionPointAgreement(
            scorer, n0, variant, position, len(points), float(np.mean(live)), tau, float(np.mean(winner_live)),
            float(np.mean(winner_running)), float(np.mean(winner_kept))))
    return sorted(agreements, key=lambda a: (a.reward_scorer, a.n0, a.variant.label, a.token_position))
