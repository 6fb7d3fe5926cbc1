"""Metrics that carry their protocol: perplexity (more evaluation modules are re-exported here as they land)."""

from __future__ import annotations

from aeflib.evaluation.efficiency import (
    BatchTiming,
    EfficiencyResult,
    analytic_macs,
    counted_macs,
    efficiency,
    efficiency_ratios,
)
from aeflib.evaluation.perplexity import PROTOCOLS, PerplexityProtocol, PerplexityResult, perplexity
from aeflib.evaluation.timing import LatencyComparison, LatencyRatio, LatencySpread, compare_latency
from aeflib.evaluation.zeroshot import (
    TASK_SETS,
    TaskScore,
    ZeroShotResult,
    ZeroShotUnavailableError,
    write_table,
    zeroshot,
)

__all__ = [
    "PROTOCOLS",
    "PerplexityProtocol",
    "PerplexityResult",
    "perplexity",
    "BatchTiming",
    "EfficiencyResult",
    "analytic_macs",
    "counted_macs",
    "efficiency",
    "efficiency_ratios",
    "LatencyComparison",
    "LatencyRatio",
    "LatencySpread",
    "compare_latency",
    "TASK_SETS",
    "TaskScore",
    "ZeroShotResult",
    "ZeroShotUnavailableError",
    "write_table",
    "zeroshot",
]
