"""Per-sample values behind the eval metrics, for the bootstrap over prompts.

eval/samples.jsonl has one row per (prompt_index, sample_index) with the scores of that completion. The
sample-level metrics of the registry (harness.metrics.catalog) are means of one of its fields, so they can be
resampled from it; corpus-level ones (BLEU, distinct-n, the KL at the training temperature) cannot, and get no
per-sample values here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from harness.metrics.catalog import METRICS, VS_SFT, sample_fields

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PROMPT_KEY = "prompt_index"
PAIR_KEYS = ["prompt_index", "sample_index"]
WIN_RATE_METRIC = VS_SFT.gold_win_rate
# eval metric -> the samples.jsonl field whose mean over completions it is (the samples schema).
PER_SAMPLE_FIELDS = sample_fields()
_GOLD = "gold_reward"


def per_sample_values(
    samples: "pd.DataFrame | None", metric: str, baseline: "pd.DataFrame | None" = None
) -> "pd.DataFrame | None":
    """(prompt_index, value) per completion for a sample-level metric (value: the field times its scale; null
    fields left out); None when not available.

    `baseline`: the SFT baseline's samples of the same seed, read only for samples files written before the
    evaluator stored win_vs_sft, whose gold win points are then paired here.
    """
    field = PER_SAMPLE_FIELDS.get(metric)
    if samples is None or field is None or PROMPT_KEY not in samples:
        return None
    if field not in samples:
        return _gold_win_points(samples, baseline) if metric == WIN_RATE_METRIC else None
    values = samples[[PROMPT_KEY, field]].rename(columns={field: "value"}).dropna(subset=["value"])
    return values.astype({"value": float}).assign(value=lambda frame: frame["value"] * METRICS[metric].field_scale)


def _gold_win_points(candidate: "pd.DataFrame", baseline: "pd.DataFrame | None") -> "pd.DataFrame | None":
    """The gold win points of a samples file from before win_vs_sft: each completion's gold reward against the
    baseline's at the same (prompt_index, sample_index), 1 / 1/2 / 0; None when either side lacks gold."""
    import numpy as np

    needed = PAIR_KEYS + [_GOLD]
    if baseline is None or any(column not in frame for frame in (candidate, baseline) for column in needed):
        return None
    pairs = candidate[needed].merge(baseline[needed], on=PAIR_KEYS, suffixes=("_candidate", "_baseline"))
    unmatched = len(candidate) - len(pairs)
    if unmatched:
        logger.warning("%d candidate completions have no baseline completion at the same (prompt, sample)", unmatched)
    if pairs.empty:
        return None
    difference = pairs[f"{_GOLD}_candidate"].to_numpy(float) - pairs[f"{_GOLD}_baseline"].to_numpy(float)
    points = np.where(difference > 0, 1.0, np.where(difference == 0, 0.5, 0.0))
    return pairs[[PROMPT_KEY]].assign(value=points)
