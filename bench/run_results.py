"""Everything one `python -m bench` run produced, over the parts it ran: the input of its report and plots."""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.paired.experiment import PairedResults
from bench.shared.records import OverheadRow, Pool, RunRecord, ThroughputRow


@dataclass
class BenchResults:
    """`metadata` holds free-form context (models, device, date)."""

    runs: list[RunRecord]
    pools: list[Pool]
    throughput: list[ThroughputRow] = field(default_factory=list)
    overhead: list[OverheadRow] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    paired: PairedResults | None = None  # the paired part, when it ran
