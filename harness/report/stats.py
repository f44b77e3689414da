"""Uncertainty for the report: Student-t intervals over seeds and a bootstrap over prompts (DESIGN §6).

With two or more seeds the interval is over seeds (what a rerun with a new seed would give); with one seed
there is no seed-to-seed spread to measure, and a bootstrap over the evaluation prompts says at least how
much the numbers depend on which prompts were drawn.

The intervals of single algorithms use two-sided t quantiles tabulated below for 1..30 degrees of freedom
(three decimals, as in printed tables); beyond 30 the normal quantile stands in, which narrows a 95% interval
by at most 4% (t at 31 df is 2.040 against 1.960).

Comparisons are paired (`paired_difference`): seeds share task data, SFT policy and reward model, so the unit
of a comparison is the per-seed difference, and a difference is called real only after Holm's correction over
every comparison the report makes (`holm`). Their p-values and the power calculation (`seeds_needed`) need the
t distribution's tails and the noncentral t, from scipy.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

# Two-sided Student-t quantiles t_{1-(1-confidence)/2, df} for df = 1..30.
_T_QUANTILES = {
    0.90: (
        6.314,
        2.920,
        2.353,
        2.132,
        2.015,
        1.943,
        1.895,
        1.860,
        1.833,
        1.812,
        1.796,
        1.782,
        1.771,
        1.761,
        1.753,
        1.746,
        1.740,
        1.734,
        1.729,
        1.725,
        1.721,
        1.717,
        1.714,
        1.711,
        1.708,
        1.706,
        1.703,
        1.701,
        1.699,
        1.697,
    ),
    0.95: (
        12.706,
        4.303,
        3.182,
        2.776,
        2.571,
        2.447,
        2.365,
        2.306,
        2.262,
        2.228,
        2.201,
        2.179,
        2.160,
        2.145,
        2.131,
        2.120,
        2.110,
        2.101,
        2.093,
        2.086,
        2.080,
        2.074,
        2.069,
        2.064,
        2.060,
        2.056,
        2.052,
        2.048,
        2.045,
        2.042,
    ),
    0.99: (
        63.657,
        9.925,
        5.841,
        4.604,
        4.032,
        3.707,
        3.499,
        3.355,
        3.250,
        3.169,
        3.106,
        3.055,
        3.012,
        2.977,
        2.947,
        2.921,
        2.898,
        2.878,
        2.861,
        2.845,
        2.831,
        2.819,
        2.807,
        2.797,
        2.787,
        2.779,
        2.771,
        2.763,
        2.756,
        2.750,
    ),
}
_NORMAL_QUANTILES = {0.90: 1.645, 0.95: 1.960, 0.99: 2.576}


class ConfidenceInterval(NamedTuple):
    """A mean with its interval; unpacks as (mean, low, high, n)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width; NaN when there is no interval (fewer than two values)."""
        return (self.high - self.low) / 2


def t_quantile(degrees_of_freedom: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t quantile; the normal quantile beyond the 30 tabulated degrees of freedom."""
    level = _known_confidence(confidence)
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {degrees_of_freedom}")
    table = _T_QUANTILES[level]
    if degrees_of_freedom <= len(table):
        return table[degrees_of_freedom - 1]
    return _NORMAL_QUANTILES[level]


def _known_confidence(confidence: float) -> float:
    for level in _T_QUANTILES:
        if math.isclose(confidence, level):
            return level
    raise ValueError(f"confidence must be one of {sorted(_T_QUANTILES)}, got {confidence}")


def _finite(values: Sequence[float]):
    import numpy as np

    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> ConfidenceInterval:
    """Mean over seeds with a Student-t interval: mean ± t_{df=n-1} · s / √n (s with n-1 in the denominator).

    NaNs (a metric a seed did not log) are dropped first. One value gives the mean with NaN bounds: one
    seed says nothing about seed-to-seed spread. No values give NaN everywhere and n = 0.
    """
    finite = _finite(values)
    n = int(finite.size)
    if n == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, 0)
    mean = float(finite.mean())
    if n == 1:
        return ConfidenceInterval(mean, math.nan, math.nan, 1)
    standard_error = float(finite.std(ddof=1)) / math.sqrt(n)
    half_width = t_quantile(n - 1, confidence) * standard_error
    return ConfidenceInterval(mean, mean - half_width, mean + half_width, n)


def bootstrap_mean_ci(
    values: Sequence[float],
    groups: Sequence | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap of the mean, resampling whole groups (prompts) with replacement.

    Samples of one prompt are correlated, so resampling single samples would understate the noise;
    resampling prompts keeps each prompt's samples together. The statistic of a resample is the mean
    over all its samples (prompts weighted by their sample count, as the plain mean weights them).
    `groups=None` treats every value as its own group. `n` is the number of groups.
    """
    import numpy as np

    values_array = np.asarray(values, dtype=float).ravel()
    group_keys = np.arange(values_array.size) if groups is None else np.asarray(groups).ravel()
    if group_keys.size != values_array.size:
        raise ValueError(f"{values_array.size} values but {group_keys.size} group labels")
    keep = np.isfinite(values_array)
    values_array, group_keys = values_array[keep], group_keys[keep]
    if values_array.size == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, 0)

    _, group_index = np.unique(group_keys, return_inverse=True)
    group_sums = np.bincount(group_index, weights=values_array)
    group_counts = np.bincount(group_index).astype(float)
    n_groups = group_sums.size
    mean = float(values_array.mean())
    if n_groups == 1:
        return ConfidenceInterval(mean, math.nan, math.nan, 1)

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    resampled_means = group_sums[picks].sum(axis=1) / group_counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled_means, [tail, 1 - tail])
    return ConfidenceInterval(mean, float(low), float(high), int(n_groups))


# --- paired comparisons -------------------------------------------------------------------------


class PairedDifference(NamedTuple):
    """The mean over seeds of a per-seed difference, its paired-t interval and two-sided p-value against 0.

    `sd`: the standard deviation of the per-seed differences (n-1 in the denominator). With one seed the
    bounds, sd and p are NaN; with differences that are all equal the interval has no width and p is 0 (any
    nonzero mean) or 1 (a zero mean).
    """

    mean: float
    low: float
    high: float
    n: int
    sd: float
    p_value: float


def paired_difference(differences: Sequence[float], confidence: float = 0.95, null: float = 0.0) -> PairedDifference:
    """Paired t over the per-seed differences (NaNs dropped): mean ± t_{n-1}·sd/√n and the two-sided p-value of
    mean = `null`. `null` lets a one-sample comparison (a win rate against 1/2) use the same test."""
    from scipy import stats as scipy_stats

    finite = _finite(differences)
    n = int(finite.size)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(finite.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, 1, math.nan, math.nan)
    sd = float(finite.std(ddof=1))
    half_width = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    if sd == 0.0:
        p_value = 1.0 if mean == null else 0.0
    else:
        statistic = (mean - null) / (sd / math.sqrt(n))
        p_value = float(2 * scipy_stats.t.sf(abs(statistic), n - 1))
    return PairedDifference(mean, mean - half_width, mean + half_width, n, sd, p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over all of them; NaN stays NaN and does not count
    as a test): sort ascending, multiply the k-th smallest by (m - k + 1), make the sequence non-decreasing,
    cap at 1. A comparison is real at level alpha when its adjusted p-value is below alpha."""
    indexed = [(value, position) for position, value in enumerate(p_values) if not math.isnan(value)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (value, position) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * value))
        adjusted[position] = running
    return adjusted


# Seeds beyond this are reported as "more than" it: a difference that small is not worth the compute to settle.
MAX_SEEDS_NEEDED = 1000


def seeds_needed(mean: float, sd: float, alpha: float, power: float = 0.8) -> float:
    """The smallest number of seeds at which a two-sided paired t-test at level `alpha` detects a true mean
    difference `mean` with per-seed standard deviation `sd` with probability `power` (noncentral t). An
    estimate: it takes the observed mean and spread as the truth. inf when the mean is 0 or the answer exceeds
    MAX_SEEDS_NEEDED; NaN when there is no spread to go on (sd NaN)."""
    from scipy import stats as scipy_stats

    if math.isnan(mean) or math.isnan(sd):
        return math.nan
    if mean == 0.0:
        return math.inf
    if sd == 0.0:
        return 2.0
    effect = abs(mean) / sd

    def enough(n: int) -> bool:
        df = n - 1
        critical = scipy_stats.t.isf(alpha / 2, df)
        noncentrality = effect * math.sqrt(n)
        achieved = scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality)
        if math.isnan(achieved):
            # scipy's noncentral t fails far in its tail (a large noncentrality); the normal limit is exact there.
            achieved = scipy_stats.norm.sf(critical - noncentrality)
        return achieved >= power

    if not enough(MAX_SEEDS_NEEDED):
        return math.inf
    # Power grows with n: bisect for the first n that is enough.
    low, high = 1, MAX_SEEDS_NEEDED  # enough(high) holds; low is below any answer (n >= 2)
    while high - low > 1:
        middle = (low + high) // 2
        if middle >= 2 and enough(middle):
            high = middle
        else:
            low = middle
    return float(high)
