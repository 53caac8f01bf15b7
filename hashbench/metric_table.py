"""What every recorded metric is: its label for tables and plots, its direction, its format.

Tables bold the best value of a column by the metric's own direction (lower is better for
times and memory), and ``hashbench report --metric`` accepts only the names listed here.
Metric names are the keys of a run record's ``metrics`` (nested ones dotted, as
``precision_at_k.100``), plus ``timings.*`` and ``peak_memory_mb``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from hashbench.errors import UserError

# Bump when what a metric computes changes: records say which version computed them, and
# `hashbench reeval` recomputes older ones from their stored codes.
# 1: records made before metrics were versioned. 2: Hamming distances held in a type wide
# enough for any code length (above 255 bits version 1 could wrap). 3: map_hits added.
METRICS_VERSION = "3"


@dataclass(frozen=True)
class MetricInfo:
    name: str  # as recorded: "map", "precision_at_k.100", "timings.fit"
    label: str  # for tables and plots: "mAP@1000", "P@100", "fit time (s)"
    higher_is_better: bool
    format: str  # format spec of one value
    description: str

    def formatted(self, value: float) -> str:
        return format(value, self.format)


_FIXED = {
    "map": ("mAP@{k}", True, ".4f", "mean average precision at the protocol's cut-off k, ties broken by database index"),
    "map_all": ("mAP@all", True, ".4f", "mean average precision over the whole database ranking"),
    "map_hits": (
        "mAP@{k} over queries with a hit", True, ".4f",
        "mean AP@k over the queries with a relevant item in the top k (TBH's released evaluator)",
    ),
    "map_tie_aware": ("tie-aware mAP@{k}", True, ".4f", "expected mAP@k over random orders inside equal-distance groups"),
    "map_optimistic": ("optimistic mAP@{k}", True, ".4f", "the best mAP@k over orders inside ties"),
    "map_pessimistic": ("pessimistic mAP@{k}", True, ".4f", "the worst mAP@k over orders inside ties"),
    "timings.fit": ("fit time (s)", False, ".3g", "seconds spent in fit"),
    "timings.encode": ("encode time (s)", False, ".3g", "seconds spent encoding query and database"),
    "timings.evaluate": ("evaluation time (s)", False, ".3g", "seconds spent computing the metrics"),
    "timings.total": ("total time (s)", False, ".3g", "fit + encode + evaluate, in seconds"),
    "peak_memory_mb": ("peak memory (MB)", False, ".0f", "peak resident memory of the process that ran the cell"),
}
_PATTERNS = [
    (re.compile(r"precision_at_k\.(\d+)"), "P@{0}", "precision in the top {0}"),
    (re.compile(r"recall_at_k\.(\d+)"), "R@{0}", "recall in the top {0}"),
    (re.compile(r"precision_radius(\d+)"), "P(r≤{0})", "precision within Hamming radius {0}"),
    (re.compile(r"recall_radius(\d+)"), "R(r≤{0})", "recall within Hamming radius {0}"),
    # a method's own metric (the record's extra_metrics, e.g. SpH's map_spherical)
    (re.compile(r"extra_metrics\.([A-Za-z0-9_]+)"), "{0}", "the method's own metric {0} (its record's extra_metrics)"),
]
EXAMPLES = ("map", "map_all", "map_tie_aware", "precision_radius2", "precision_at_k.100", "timings.fit")


def known_metric(name: str) -> bool:
    return name in _FIXED or any(pattern.fullmatch(name) for pattern, _, _ in _PATTERNS)


def metric_info(name: str, map_k: int | str | None = None) -> MetricInfo:
    """The table entry of ``name``; ``map_k`` fills in the cut-off of the mAP@k labels.

    Refuses anything that is not a metric (``map_k``, ``bits``, typos) with a suggestion.
    """
    if name in _FIXED:
        label, higher, spec, description = _FIXED[name]
        return MetricInfo(name, label.format(k="k" if map_k is None else map_k), higher, spec, description)
    for pattern, label, description in _PATTERNS:
        match = pattern.fullmatch(name)
        if match:
            return MetricInfo(name, label.format(match.group(1)), True, ".4f", description.format(match.group(1)))
    candidates = [*_FIXED, "precision_at_k.100", "recall_at_k.100", "precision_radius2", "recall_radius2"]
    # compared without regard to case: `mAP` suggests `map`
    lowered = {candidate.lower(): candidate for candidate in candidates}
    close = [lowered[match] for match in difflib.get_close_matches(name.lower(), list(lowered), n=1)]
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"--metric {name!r} is not a metric; {hint}known: {', '.join(EXAMPLES)} (and any precision_at_k.K, recall_at_k.K, timings.*, extra_metrics.NAME)")
