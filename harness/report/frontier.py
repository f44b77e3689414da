"""Reward against KL frontiers: where each algorithm's checkpoints land in (KL, reward), its upper-left Pareto
front, and its reward at matched KL with intervals over seeds (issue 12).

One point per evaluated checkpoint: every arm of an algorithm (its sweep points, each in its current
configuration) and every checkpoint the evaluator scored (intermediate ones are eval/* history at their
training step, the final one is logged at the last step; a cell without eval/ history contributes its final
values). KL is eval/kl, KL(π‖π_ref) summed over the response, in nats per sequence. The SFT policy is the
point (0, its reward): it is the reference, and the step-0 policy of every algorithm.

Decisions, each for a reason:

- **Anchoring.** Each algorithm's front is computed over its own points *and* the SFT point at KL 0: every
  algorithm starts from the SFT policy, and keeping it means a front reaches every KL from 0 up to its largest
  non-dominated KL. A dash ("does not reach") is therefore only ever above a front's largest KL. A point below
  the SFT reward is dominated by the SFT point and leaves the front; an algorithm that never beats SFT has the
  SFT point for its whole front and reaches no KL above 0.
- **Interpolation.** Piecewise linear between front points. It is not optimistic: a mixture that answers
  with policy A with probability λ and policy B otherwise has reward λ·r_A + (1-λ)·r_B and, KL being convex,
  KL at most λ·KL_A + (1-λ)·KL_B; so the interpolated reward is reached at the level or below it.
- **Levels.** Round values of the 1-2-5 series (…, 0.1, 0.2, 0.5, 1, 2, 5, …) in (top/20, top], where top is
  the second-largest reach among the algorithms (the largest with one algorithm): the highest level at which
  two algorithms can still be compared, and three or four levels spanning a factor of 20 below it. When an
  algorithm's reach ends below the lowest of them, the largest series value within its reach is added, so that
  every algorithm that moved off KL 0 has a column it reaches (at most five levels).
- **Intervals over seeds.** A seed is a replicate of the whole procedure: its own SFT and reward model, its
  cell of every arm. So each seed gets its own front (its cells' checkpoints and its own SFT point), interpolated
  at the level; the table shows the mean over seeds of those values and the Student-t interval over them
  (`stats.mean_ci`). Seeds are independent, so the interval is honest; choosing the front's points on the seed
  mean and reading every seed there would use all seeds for the choice and understate the spread. The price:
  taking the best of each seed's own (noisy) checkpoints lifts every per-seed front a little, a little more for
  an algorithm with more arms and checkpoints to choose from; the figure's line, the front of the seed means,
  can lie slightly below the table's mean.
  An algorithm reaches a level only when every seed's front does (else a dash: the seeds that reach farther
  would bias the mean). Fewer than two seeds: the value alone, no interval. A seed without a complete SFT cell has no
  anchor and nothing to check its cells' SFT policy and reward model against: its points stay off the frontier.
- **One SFT chain.** A point joins a front only when its cell's prepared chain and evaluation settings (task,
  model, SFT, reward model, evaluation) are those of its seed's SFT cell: "current" is decided per arm, and an arm
  no newer run touched keeps an older configuration, trained from another SFT policy or reward model.
- **Bounds.** best-of-n has no policy model to measure: its eval/kl is the analytic bound log n − (n−1)/n
  (`record.TAG_KL_IS_BOUND`). Its true point lies at or left of the drawn one, so its front and its matched-KL
  values are conservative (a lower bound on its reward at that KL); the report marks them and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import record
from harness.report.frame import (
    BASELINE_ALGORITHM,
    EVAL_PREFIX,
    algorithm_order,
    complete_cells,
    config_params,
    split_configurations,
)
from harness.report.stats import mean_ci, overlaps

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
POINT_COLUMNS = ["algorithm", "arm", "family", "kl_is_bound", "seed", "step", KL, GOLD, PROXY]


# --- points ------------------------------------------------------------------------------------


def checkpoint_points(cells: "pd.DataFrame", histories: "pd.DataFrame | None") -> "pd.DataFrame":
    """One row per evaluated checkpoint of every complete cell of each arm's current configuration, and one per
    SFT cell at KL 0: algorithm (registry name; BASELINE for SFT), arm, family, kl_is_bound, seed, step, kl,
    gold_reward, proxy_reward (NaN where not logged). `histories`: run_id, metric, step, value."""
    import pandas as pd

    current, _ = split_configurations(cells)
    reported = _sharing_their_baseline(complete_cells(current))
    identity = reported[["run_id", "algorithm", "seed"]].rename(columns={"algorithm": "arm"})
    identity = identity.assign(
        algorithm=_column(reported, "algorithm_name", reported["algorithm"].map(record.algorithm_of)),
        family=_column(reported, "family", None),
        kl_is_bound=_column(reported, "kl_is_bound", False).eq(True),
    )
    trained = identity[identity["algorithm"] != BASELINE_ALGORITHM]
    trained_runs = set(trained["run_id"])
    logged = _history_points(histories, trained_runs)
    # A cell whose eval/ history MLflow does not hold (or holds without KL) still has its final values.
    unlogged = reported[reported["run_id"].isin(trained_runs - set(logged["run_id"]))]
    points = trained.merge(pd.concat([logged, _final_points(unlogged)], ignore_index=True), on="run_id")
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
        return config_params(BASELINE_ALGORITHM, {key: value for key, value in row.items() if isinstance(value, str)})

    rows = cells.to_dict("records")
    baselines = {row["seed"]: chain(row) for row in rows if row["algorithm"] == BASELINE_ALGORITHM}
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


def pareto_front(kl, reward) -> list[int]:
    """Positions of the upper-left Pareto front, by increasing KL: the points that no other point dominates
    (no other has KL <= and reward >= with one of them strict). Of identical points one is kept; NaNs never are.
    """
    import numpy as np

    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    finite = np.flatnonzero(np.isfinite(kl) & np.isfinite(reward))
    # Smallest KL first, the highest reward first among equal KLs: a point is on the front exactly when its
    # reward beats every point before it in this order (those are all the points that could dominate it).
    order = finite[np.lexsort((-reward[finite], kl[finite]))]
    front, best = [], -math.inf
    for index in order:
        if reward[index] > best:
            front.append(int(index))
            best = reward[index]
    return front


def interpolate(front_kl, front_reward, level: float) -> float:
    """The piecewise-linear front at KL `level`; NaN outside [its smallest KL, its largest KL]."""
    import numpy as np

    if len(front_kl) == 0 or not front_kl[0] <= level <= front_kl[-1]:
        return math.nan
    return float(np.interp(level, front_kl, front_reward))


def _front_of(candidates: "pd.DataFrame", metric: str) -> "pd.DataFrame":
    positions = pareto_front(candidates[KL], candidates[metric])
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


def reach(fronts_by_seed: dict[int, "pd.DataFrame"]) -> float:
    """The largest KL every seed's front reaches."""
    if not fronts_by_seed:
        return math.nan
    return min(float(front[KL].max()) if not front.empty else 0.0 for front in fronts_by_seed.values())


def kl_levels(reaches) -> list[float]:
    """Shared KL levels for the matched-KL table (module docstring): round 1-2-5 values in (top/20, top], top the
    second-largest reach, and the largest one within the smallest reach when that ends below them."""
    positive = sorted((value for value in reaches if math.isfinite(value) and value > 0), reverse=True)
    if not positive:
        return []
    top = positive[1] if len(positive) > 1 else positive[0]
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

    @property
    def has_bound(self) -> bool:
        return bool(self.points["kl_is_bound"].any())


TABLE_COLUMNS = ["algorithm", "family", "kl_is_bound", "level", "mean", "low", "high", "n", "seeds"]


def matched_kl_table(points: "pd.DataFrame", metric: str, levels: list[float] | None = None,
                     confidence: float = 0.95) -> tuple[list[float], "pd.DataFrame"]:
    """(levels, one row per (trained algorithm, level)): the mean over seeds of each seed's front interpolated
    at the level, its t interval (NaN bounds with one seed), n (seeds whose front reaches it: all of them, or
    the mean is NaN: a dash) and seeds (the algorithm's seed count). `levels`: `kl_levels` of the reaches
    unless given."""
    import pandas as pd

    fronts = seed_fronts(points, metric)
    if levels is None:
        levels = kl_levels(reach(by_seed) for by_seed in fronts.values())
    rows = []
    for algorithm, by_seed in fronts.items():
        own = points[points["algorithm"] == algorithm]
        family = own["family"].dropna().iloc[0] if own["family"].notna().any() else None
        for level in levels:
            values = [interpolate(front[KL].to_numpy(), front[metric].to_numpy(), level) for front in by_seed.values()]
            reached = [value for value in values if math.isfinite(value)]
            # Every seed's front must reach the level: the seeds that reach farther would bias the mean.
            mean, low, high, _ = mean_ci(values if len(reached) == len(values) else [], confidence)
            rows.append({"algorithm": algorithm, "family": family, "kl_is_bound": bool(own["kl_is_bound"].any()),
                         "level": level, "mean": mean, "low": low, "high": high, "n": len(reached),
                         "seeds": len(values)})
    return levels, pd.DataFrame(rows, columns=TABLE_COLUMNS)


def build_frontier(cells: "pd.DataFrame", histories: "pd.DataFrame | None", metric: str = GOLD,
                   confidence: float = 0.95) -> Frontier:
    points = checkpoint_points(cells, histories)
    points = points.dropna(subset=[metric])
    levels, table = matched_kl_table(points, metric, confidence=confidence)
    return Frontier(metric, points, mean_fronts(points, metric), levels, table)


# --- which family leads ------------------------------------------------------------------------


def format_level(level: float) -> str:
    return f"{level:g}"


def family_label(row) -> str:
    return row["family"] if isinstance(row["family"], str) and row["family"] else f"{row['algorithm']} (family unknown)"


def dominance_sentence(table: "pd.DataFrame", digits: int = 3) -> str:
    """Which family has the highest interpolated reward at each level: its best algorithm against the best of
    the runner-up family, "no clear winner" when their intervals overlap (or either has none: one seed)."""
    parts = []
    for level in dict.fromkeys(table["level"]):
        rows = table[(table["level"] == level)].dropna(subset=["mean"])
        rows = rows.assign(_family=[family_label(row) for _, row in rows.iterrows()])
        best_per_family = rows.sort_values("mean", ascending=False, kind="mergesort").drop_duplicates("_family")
        at = f"at KL {format_level(level)}:"
        if best_per_family.empty:
            continue
        leader = best_per_family.iloc[0]
        if len(best_per_family) == 1:
            parts.append(f"{at} only {leader['_family']} reaches it ({_named(leader, digits)})")
            continue
        runner_up = best_per_family.iloc[1]
        pair = f"{leader['_family']} ({_named(leader, digits)}) and {runner_up['_family']} ({_named(runner_up, digits)})"
        leader_interval = (leader["mean"], leader["low"], leader["high"], leader["n"])
        runner_interval = (runner_up["mean"], runner_up["low"], runner_up["high"], runner_up["n"])
        if overlaps(leader_interval, runner_interval):
            no_interval = any(math.isnan(row["low"]) for row in (leader, runner_up))
            why = "one seed: no interval" if no_interval else "their intervals overlap"
            parts.append(f"{at} no clear winner between {pair} ({why})")
        else:
            parts.append(f"{at} {leader['_family']} leads ({_named(leader, digits)}, clear of {runner_up['_family']}: "
                         f"{_named(runner_up, digits)})")
    if not parts:
        return "No two algorithms' fronts reach a shared KL above 0: nothing to compare at matched KL."
    bound = table[table["kl_is_bound"]]["algorithm"].drop_duplicates().tolist()
    caveat = (f" The KL of {', '.join(bound)} is an upper bound, so its values are lower bounds on its reward at "
              "that KL." if bound else "")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "." + caveat


def _named(row, digits: int) -> str:
    text = f"{row['mean']:.{digits}f}"
    if not math.isnan(row["low"]):
        text += f" ± {(row['high'] - row['low']) / 2:.{digits}f}"
    return f"{row['algorithm']} {text}"
