"""Reward against KL frontiers: where each algorithm's checkpoints land in (KL, reward), its achievable
front, and its reward at matched KL with intervals over seeds (issue 12).

One point per evaluated checkpoint: every arm of an algorithm (its sweep points, each in its current
configuration) and every checkpoint the evaluator scored (intermediate ones are eval/* history at their
training step, the final one is logged at the last step; a cell without eval/ history contributes its final
values). KL is eval/kl, KL(π‖π_ref) summed over the response, in nats per sequence. The SFT policy is the
point (0, its reward): it is the reference, and the step-0 policy of every algorithm.

Decisions, each for a reason:

- **Anchoring.** Each algorithm's front is computed over its own points *and* the SFT point at KL 0: every
  algorithm starts from the SFT policy, so a front covers every KL from 0 on.
- **The front is the upper concave hull** of those points, rising to the point of highest reward and flat
  after it. A mixture that answers with policy A with probability λ and policy B otherwise has reward
  λ·r_A + (1-λ)·r_B and, KL being convex in the policy, KL at most λ·KL_A + (1-λ)·KL_B: every chord between two
  evaluated points is reachable at its KL or less, and so is every point's reward at any larger KL. The value
  at level L is therefore the best reward reachable with KL at most L, the hull at L (or its top past its last
  point). Two consequences the matched-KL table relies on: adding a point (another checkpoint, another arm)
  never lowers a value, and no value disappears; an algorithm with many evaluated checkpoints is not
  penalised against one with few. Where an algorithm's own points stop short of L (the value is its best
  reward at a smaller KL, held flat), the table marks it.
- **Levels.** Round values of the 1-2-5 series (…, 0.1, 0.2, 0.5, 1, 2, 5, …) in (top/20, top], where top is the
  largest KL an algorithm's points reach in every seed: since every value is defined at every level (held flat
  past an algorithm's last point, and marked), the table spans what the farthest-reaching algorithm explored.
  When an algorithm's reach ends below the lowest of them, the largest series value within its reach is added,
  so that every algorithm that moved off KL 0 has a column inside its own reach (at most five levels).
- **Intervals over seeds.** A seed is a replicate of the whole procedure: its own SFT and reward model, its
  cell of every arm. So each seed gets its own front (its cells' checkpoints and its own SFT point), interpolated
  at the level; the table shows the mean over seeds of those values and the Student-t interval over them
  (`stats.mean_ci`). Seeds are independent, so the interval is honest; choosing the front's points on the seed
  mean and reading every seed there would use all seeds for the choice and understate the spread. The price:
  taking the best of each seed's own (noisy) checkpoints lifts every per-seed front a little, a little more for
  an algorithm with more arms and checkpoints to choose from; the figure's line, the front of the seed means,
  can lie slightly below the table's mean.
  Fewer than two seeds: the value alone, no interval. A seed without a complete SFT cell has no
  anchor and nothing to check its cells' SFT policy and reward model against: its points stay off the frontier.
- **One SFT chain.** A point joins a front only when its cell's prepared chain and evaluation settings (task,
  model, SFT, reward model, evaluation) are those of its seed's SFT cell: "current" is decided per arm, and an arm
  no newer run touched keeps an older configuration, trained from another SFT policy or reward model.
- **Bounds and estimates.** best-of-n has no policy model to measure: its eval/kl is the analytic bound
  log n − (n−1)/n (`record.TAG_KL_IS_BOUND`). Where the cell logged `BEST_OF_N_KL_ESTIMATE` (KL(best-of-n ‖ SFT)
  estimated from the candidates it drew), the point sits at that estimate and is an estimate like every other
  point; without it, the point sits at the bound, its values are lower bounds on its reward at that KL, the
  report marks them, and no comparison is made with it (a lead over a point whose KL is only a bound shows
  nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.report.frame import (
    BASELINE_ALGORITHM,
    EVAL_PREFIX,
    algorithm_order,
    complete_cells,
    row_config_params,
    split_configurations,
)
from harness.report.stats import mean_ci

if TYPE_CHECKING:
    import pandas as pd

KL = "kl"
GOLD = "gold_reward"
PROXY = "proxy_reward"
REWARDS = (GOLD, PROXY)
# The step of a cell's only point when MLflow holds no eval/ history for it (a final evaluation, step unknown).
FINAL_ONLY_STEP = -1
# Levels: the 1-2-5 series within this factor below the top level.
LEVEL_SPAN = 20.0
SERIES = (1, 2, 5)
# family, kl_knob and kl_knob_raises_kl: what the algorithm declared on its cells (frame.IDENTITY_COLUMNS).
POINT_COLUMNS = [
    "algorithm",
    "arm",
    "family",
    "kl_knob",
    "kl_knob_raises_kl",
    "kl_is_bound",
    "seed",
    "step",
    KL,
    GOLD,
    PROXY,
]
# best-of-n's KL(best-of-n || SFT) estimated from its drawn candidates (harness/metrics/catalog.py); eval/kl is the bound.
BEST_OF_N_KL_ESTIMATE = "best_of_n_kl_estimate"


# --- points ------------------------------------------------------------------------------------


def checkpoint_points(cells: "pd.DataFrame", histories: "pd.DataFrame | None") -> "pd.DataFrame":
    """One row per evaluated checkpoint of every complete cell of each arm's current configuration, and one per
    SFT cell at KL 0: algorithm (registry name; BASELINE for SFT), arm, family, kl_knob, kl_knob_raises_kl,
    kl_is_bound, seed, step, kl, gold_reward, proxy_reward (NaN where not logged). `histories`: run_id, metric,
    step, value."""
    import pandas as pd

    current, _ = split_configurations(cells)
    reported = _sharing_their_baseline(complete_cells(current))
    identity = reported[["run_id", "algorithm", "arm", "seed"]].assign(
        family=_column(reported, "family", None),
        kl_knob=_column(reported, "kl_knob", None),
        kl_knob_raises_kl=_column(reported, "kl_knob_raises_kl", False).eq(True),
        kl_is_bound=_column(reported, "kl_is_bound", False).eq(True),
    )
    trained = identity[identity["algorithm"] != BASELINE_ALGORITHM]
    trained_runs = set(trained["run_id"])
    logged = _history_points(histories, trained_runs)
    # A cell whose eval/ history MLflow does not hold (or holds without KL) still has its final values.
    unlogged = reported[reported["run_id"].isin(trained_runs - set(logged["run_id"]))]
    points = trained.merge(pd.concat([logged, _final_points(unlogged)], ignore_index=True), on="run_id")
    points = _estimated_kl_where_logged(points, reported)
    baseline = identity[identity["algorithm"] == BASELINE_ALGORITHM].merge(_final_points(reported), on="run_id")
    # The reference against itself: KL 0 by construction, whatever an estimator's noise says.
    baseline = baseline.assign(step=0, **{KL: 0.0})
    frame = pd.concat([baseline, points], ignore_index=True)
    return frame.reindex(columns=POINT_COLUMNS).dropna(subset=[KL]).reset_index(drop=True)


def _sharing_their_baseline(cells: "pd.DataFrame") -> "pd.DataFrame":
    """The cells whose prepared chain and evaluation settings (record.cell_sections of the baseline: task, model,
    SFT, reward model, evaluation) are those of their seed's SFT cell. "Current" is decided per arm, so an arm no
    newer run touched (a sweep point since dropped, or one left out when the SFT settings changed) keeps an
    older configuration as its current one; its points come from another SFT policy or reward model and must not
    join a front anchored on this SFT point."""

    def chain(row) -> dict:
        return row_config_params(BASELINE_ALGORITHM, row)

    rows = cells.to_dict("records")
    baselines = {row["seed"]: chain(row) for row in rows if row["arm"] == BASELINE_ALGORITHM}
    keep = [row["seed"] in baselines and chain(row) == baselines[row["seed"]] for row in rows]
    return cells[keep]


def _column(frame: "pd.DataFrame", name: str, default):
    import pandas as pd

    if name in frame:
        return frame[name]
    return default if isinstance(default, pd.Series) else pd.Series(default, index=frame.index, dtype=object)


def _history_points(histories, run_ids: set) -> "pd.DataFrame":
    """eval/kl and the rewards at every step a run logged them, one row per (run_id, step)."""
    import pandas as pd

    wanted = [EVAL_PREFIX + name for name in (KL, *REWARDS)]
    if histories is None or histories.empty:
        return pd.DataFrame(columns=["run_id", "step", KL, *REWARDS])
    rows = histories[histories["run_id"].isin(run_ids) & histories["metric"].isin(wanted)]
    if rows.empty:
        return pd.DataFrame(columns=["run_id", "step", KL, *REWARDS])
    wide = rows.pivot_table(index=["run_id", "step"], columns="metric", values="value", aggfunc="last")
    wide = wide.rename(columns=lambda metric: metric.removeprefix(EVAL_PREFIX)).reset_index()
    wide.columns.name = None
    return wide.reindex(columns=["run_id", "step", KL, *REWARDS]).dropna(subset=[KL])


def _estimated_kl_where_logged(points: "pd.DataFrame", cells: "pd.DataFrame") -> "pd.DataFrame":
    """A cell whose KL is a bound but which logged an estimate (best-of-n: BEST_OF_N_KL_ESTIMATE, one final
    checkpoint) sits at the estimate, and its KL is no longer only a bound."""
    column = EVAL_PREFIX + BEST_OF_N_KL_ESTIMATE
    if column not in cells:
        return points
    estimates = points["run_id"].map(cells.set_index("run_id")[column].astype(float))
    estimated = points["kl_is_bound"] & estimates.notna()
    return points.assign(
        **{KL: points[KL].where(~estimated, estimates)}, kl_is_bound=points["kl_is_bound"] & ~estimated
    )


def _final_points(cells: "pd.DataFrame") -> "pd.DataFrame":
    """Each cell's final eval/ values, at FINAL_ONLY_STEP."""
    frame = cells[["run_id"]].assign(step=FINAL_ONLY_STEP)
    for name in (KL, *REWARDS):
        frame[name] = cells[EVAL_PREFIX + name] if EVAL_PREFIX + name in cells else float("nan")
    return frame


def mean_points(points: "pd.DataFrame") -> "pd.DataFrame":
    """The mean over seeds of each (algorithm, arm, checkpoint step): kl and rewards, `seeds` how many."""
    grouped = points.groupby(["algorithm", "arm", "step"], sort=False, dropna=False)
    means = grouped[[KL, *REWARDS]].mean()
    means["seeds"] = grouped["seed"].nunique()
    means["family"] = grouped["family"].first()
    means["kl_is_bound"] = grouped["kl_is_bound"].any()
    return means.reset_index()


# --- the front ---------------------------------------------------------------------------------


def achievable_front(kl, reward) -> list[int]:
    """Positions of the vertices of the upper concave hull of the points, by increasing KL, from the smallest KL
    up to the highest reward (module docstring): the points whose reward no mixture of the others beats at their
    KL or less. Of identical points one is kept; points on a chord between two vertices are not vertices; NaNs
    never are."""
    import numpy as np

    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    finite = np.flatnonzero(np.isfinite(kl) & np.isfinite(reward))
    # Smallest KL first, the highest reward first among equal KLs; a point that does not beat every point before
    # it is dominated (less or equal reward at more or equal KL) and never a vertex of the rising hull.
    order = finite[np.lexsort((-reward[finite], kl[finite]))]
    rising, best = [], -math.inf
    for index in order:
        if reward[index] > best:
            rising.append(int(index))
            best = reward[index]
    hull: list[int] = []
    for index in rising:
        # Drop the last vertex while it lies on or below the chord from the one before it to this point.
        while len(hull) >= 2 and _on_or_below_chord(kl, reward, hull[-2], hull[-1], index):
            hull.pop()
        hull.append(index)
    return hull


def _on_or_below_chord(kl, reward, left: int, middle: int, right: int) -> bool:
    cross = (kl[middle] - kl[left]) * (reward[right] - reward[left]) - (reward[middle] - reward[left]) * (
        kl[right] - kl[left]
    )
    return cross >= 0


def reward_at(front_kl, front_reward, level: float) -> float:
    """The best reward reachable with KL at most `level` on a front (`achievable_front`): the hull at the level,
    its highest reward past its last point; NaN below its smallest KL or for an empty front."""
    import numpy as np

    if len(front_kl) == 0 or level < front_kl[0]:
        return math.nan
    if level >= front_kl[-1]:
        return float(front_reward[-1])
    return float(np.interp(level, front_kl, front_reward))


def _front_of(candidates: "pd.DataFrame", metric: str) -> "pd.DataFrame":
    positions = achievable_front(candidates[KL], candidates[metric])
    return candidates.iloc[positions].reset_index(drop=True)


def mean_fronts(points: "pd.DataFrame", metric: str) -> dict[str, "pd.DataFrame"]:
    """Per trained algorithm, the front of its seed-mean points with the SFT mean point at KL 0 (the figure's
    lines): rows of `mean_points`, by increasing KL."""
    means = mean_points(points)
    baseline = means[means["algorithm"] == BASELINE_ALGORITHM]
    fronts = {}
    for algorithm in _trained_algorithms(points):
        own = means[means["algorithm"] == algorithm]
        fronts[algorithm] = _front_of(_concat(baseline, own), metric)
    return fronts


def _trained_algorithms(points: "pd.DataFrame") -> list[str]:
    return [name for name in algorithm_order(points["algorithm"]) if name != BASELINE_ALGORITHM]


def _concat(*frames):
    import pandas as pd

    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=POINT_COLUMNS)


# --- matched KL --------------------------------------------------------------------------------


def seed_fronts(points: "pd.DataFrame", metric: str) -> dict[str, dict[int, "pd.DataFrame"]]:
    """Per trained algorithm, per seed it has cells for: the front of that seed's checkpoints of every arm and
    that seed's SFT point."""
    baseline = points[points["algorithm"] == BASELINE_ALGORITHM]
    fronts = {}
    for algorithm in _trained_algorithms(points):
        own = points[points["algorithm"] == algorithm]
        fronts[algorithm] = {
            int(seed): _front_of(_concat(baseline[baseline["seed"] == seed], own[own["seed"] == seed]), metric)
            for seed in sorted(set(own["seed"]))
        }
    return fronts


def reaches(points: "pd.DataFrame") -> dict[str, float]:
    """Per trained algorithm, the largest KL its own points reach in every seed (the smallest over seeds of each
    seed's largest KL): how far it was seen to go, whatever the reward there."""
    trained = points[points["algorithm"] != BASELINE_ALGORITHM]
    per_seed = trained.groupby(["algorithm", "seed"])[KL].max()
    return {algorithm: float(per_seed[algorithm].min()) for algorithm in _trained_algorithms(points)}


def kl_levels(reaches) -> list[float]:
    """Shared KL levels for the matched-KL table (module docstring): round 1-2-5 values in (top/20, top], top the
    largest reach, and the largest one within the smallest reach when that ends below them."""
    positive = sorted((value for value in reaches if math.isfinite(value) and value > 0), reverse=True)
    if not positive:
        return []
    top = positive[0]
    # Never empty: the largest series value up to `top` is above top / 2.5.
    levels = [value for value in _series_up_to(top) if value > top / LEVEL_SPAN]
    if positive[-1] < levels[0]:
        levels.insert(0, _series_up_to(positive[-1])[-1])
    return levels


def _series_up_to(top: float) -> list[float]:
    """The 1-2-5 series values in (top/1000, top], ascending; written from their decimal text, so 0.2 is 0.2."""
    exponent = math.floor(math.log10(top))
    values = [float(f"{mantissa}e{power}") for power in range(exponent - 3, exponent + 1) for mantissa in SERIES]
    return [value for value in values if value <= top * (1 + 1e-12)]


@dataclass
class Frontier:
    """Everything the report shows about one reward's frontier."""

    metric: str
    points: "pd.DataFrame"  # checkpoint_points
    fronts: dict  # mean_fronts: algorithm -> its front of seed-mean points (with the SFT point)
    levels: list[float]
    table: "pd.DataFrame"  # matched_kl_table
    seed_values: "pd.DataFrame"  # matched_kl_values: what the table's means and the paired comparisons are over

    @property
    def has_bound(self) -> bool:
        return bool(self.points["kl_is_bound"].any())


SEED_VALUE_COLUMNS = ["algorithm", "family", "kl_is_bound", "level", "seed", "value", "short"]
TABLE_COLUMNS = ["algorithm", "family", "kl_is_bound", "level", "mean", "low", "high", "n", "seeds", "short"]


def matched_kl_values(points: "pd.DataFrame", metric: str, levels: list[float]) -> "pd.DataFrame":
    """One row per (trained algorithm, level, seed): value, the best reward that seed's front reaches with KL at
    most the level; short, whether that seed's own points all have less KL than the level (the value is held
    flat from a smaller KL)."""
    import pandas as pd

    rows = []
    for algorithm, by_seed in seed_fronts(points, metric).items():
        own = points[points["algorithm"] == algorithm]
        family = own["family"].dropna().iloc[0] if own["family"].notna().any() else None
        bound = bool(own["kl_is_bound"].any())
        for level in levels:
            for seed, front in by_seed.items():
                furthest = float(own.loc[own["seed"] == seed, KL].max())
                rows.append(
                    {
                        "algorithm": algorithm,
                        "family": family,
                        "kl_is_bound": bound,
                        "level": level,
                        "seed": seed,
                        "value": reward_at(front[KL].to_numpy(), front[metric].to_numpy(), level),
                        "short": furthest < level,
                    }
                )
    return pd.DataFrame(rows, columns=SEED_VALUE_COLUMNS)


def matched_kl_table(
    points: "pd.DataFrame", metric: str, levels: list[float] | None = None, confidence: float = 0.95
) -> tuple[list[float], "pd.DataFrame", "pd.DataFrame"]:
    """(levels, table, seed values): one table row per (trained algorithm, level) with the mean over seeds of
    `matched_kl_values`, its t interval (NaN bounds with one seed), n (seeds with a value), seeds (the
    algorithm's seed count) and short (some seed's points stop short of the level). `levels`: `kl_levels` of
    the algorithms' reaches unless given."""
    import pandas as pd

    if levels is None:
        levels = kl_levels(reaches(points).values())
    values = matched_kl_values(points, metric, levels)
    rows = []
    for (algorithm, level), group in values.groupby(["algorithm", "level"], sort=False):
        mean, low, high, n = mean_ci(group["value"].to_numpy(float), confidence)
        first = group.iloc[0]
        rows.append(
            {
                "algorithm": algorithm,
                "family": first["family"],
                "kl_is_bound": first["kl_is_bound"],
                "level": level,
                "mean": mean,
                "low": low,
                "high": high,
                "n": n,
                "seeds": len(group),
                "short": bool(group["short"].any()),
            }
        )
    return levels, pd.DataFrame(rows, columns=TABLE_COLUMNS), values


def build_frontier(
    cells: "pd.DataFrame", histories: "pd.DataFrame | None", metric: str = GOLD, confidence: float = 0.95
) -> Frontier:
    points = checkpoint_points(cells, histories)
    points = points.dropna(subset=[metric])
    levels, table, values = matched_kl_table(points, metric, confidence=confidence)
    return Frontier(metric, points, mean_fronts(points, metric), levels, table, values)


# --- labels ------------------------------------------------------------------------------------


def format_level(level: float) -> str:
    return f"{level:g}"
