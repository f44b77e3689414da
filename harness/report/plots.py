"""The report's figures, each a PNG beside the Markdown:

- reward against KL and against √KL: DESIGN §5 compares algorithms by where their checkpoints land in
  (KL, reward), not at equal beta (the betas of PPO, GRPO and DPO are different knobs); Gao et al. (2022)
  plot reward against d = √KL, where over-optimisation curves are close to their functional form;
- the reward-versus-KL frontier (`harness.report.frontier`): every arm's checkpoints (seed means) faint, each
  algorithm's achievable front (upper concave hull) as a line; colour by algorithm, marker by family, hollow where the KL
  is an upper bound (best-of-n);
- the training comparison, first: every algorithm's training reward and KL per sequence (record.
  TRAIN_KL_PER_SEQUENCE, nats) against the fraction of the training budget (record.TRAIN_BUDGET_FRACTION), on
  shared axes, an axis clipped (and said so) when one algorithm's line is more than twice the next;
- each algorithm's own curves (what it declared on its cell runs, record.TAG_CURVES) in a second figure, grouped per family, one panel per
  family and curve, since two families' statistics of one name need not share a unit (PPO's and GRPO's train/kl
  do not);
- gold reward against what training cost (tokens generated, wall time).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so a report never opens a window,
never changes the caller's backend and leaves no global figure state behind. Every figure shows the
complete cells of each algorithm's current configuration, one point per seed. In every figure an algorithm
has its own colour (ten distinct hues, then their light shades) and its family's marker, so thirteen and more
stay apart; at DPI 100 a figure is at most about 1200 pixels wide and well under 1 MB.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from harness import record
from harness.metrics.catalog import axis_label, names_in
from harness.report.frame import (
    BASELINE_ALGORITHM,
    COST_PREFIX,
    CURVE_X,
    EVAL_PREFIX,
    SHARED_CURVES,
    algorithm_order,
    complete_cells,
    declared_curves,
    split_configurations,
)
from harness.report.frontier import KL, REWARDS, build_frontier, mean_points

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

KL_AXIS_LABEL = axis_label("kl")
SQRT_KL_AXIS_LABEL = axis_label("kl", sqrt=True)
DPI = 100  # a 12-inch figure is 1200 pixels wide: a laptop screen's width, and well under 1 MB
_SEED_LINESTYLES = ("-", "--", ":", "-.")
_BASELINE_STYLE = {"color": "black", "marker": "*", "s": 180}
# (metric, y-axis label, panel title)
_REWARDS = tuple((name, axis_label(name), name.replace("_", " ")) for name in names_in("reward"))
_COSTS = (
    (record.COST_TOKENS_GENERATED, "tokens generated during training", "against tokens generated"),
    (record.COST_WALL_TIME_S, "training wall time (s)", "against training wall time"),
)
CURVE_X_LABEL = "fraction of the training budget"
# The comparison figure's panels: (train/ name, y-axis label, panel title).
_COMPARED_CURVES = (
    ("reward", "reward of the sampled completions", "training reward, online algorithms"),
    (record.TRAIN_KL_PER_SEQUENCE, "KL to the reference per sequence (nats)", "training KL, every algorithm"),
)
# One line more than this many times the next highest sets no scale: the axis is clipped above the runner-up.
OUTLIER_RATIO = 2.0
_CLIP_MARGIN = 1.3
_CURVE_X_FALLBACK = " (step / last step where it was not logged)"
_CURVE_COLUMNS = 4
# A marker per family (record.FAMILIES), in the frontier figure; an algorithm of no known family gets X.
_FAMILY_MARKERS = dict(zip(record.FAMILIES, ("o", "s", "D", "^", "P")))
_UNKNOWN_FAMILY_MARKER = "X"
_FAINT = 0.3
# The arms of one algorithm in the curves: its first arm solid, then dashed, dotted, dash-dotted.
_ARM_LINESTYLES = ("-", "--", ":", "-.")


def _reported_cells(df: "pd.DataFrame") -> "pd.DataFrame":
    current, _ = split_configurations(df)
    return complete_cells(current)


def _algorithm_styles(algorithms: list[str], families: dict | None = None) -> dict[str, dict]:
    """A fixed colour and marker per arm (or per registry algorithm, in the frontier figure), assigned in report
    order so reruns draw the same figure: the colour tells algorithms apart, the marker is the family's
    (`families`: each of `algorithms` -> its family)."""
    # The baseline comes first so it heads the legend; the others keep one colour per registry algorithm, so the
    # arms of a sweep (dpo@beta=0.03, dpo@beta=0.3) share their algorithm's colour and are told apart by the
    # line style of their curves (_ARM_LINESTYLES), not by 39 colours no reader can match.
    styles = {BASELINE_ALGORITHM: dict(_BASELINE_STYLE)} if BASELINE_ALGORITHM in algorithms else {}
    others = [name for name in algorithms if name != BASELINE_ALGORITHM]
    registry_names = list(dict.fromkeys(record.algorithm_of(name) for name in others))
    palette = dict(zip(registry_names, _distinct_colours(len(registry_names))))
    families = families or {}
    arms_seen: dict[str, int] = {}
    for name in others:
        algorithm = record.algorithm_of(name)
        marker = _FAMILY_MARKERS.get(families.get(name), _UNKNOWN_FAMILY_MARKER)
        arms_seen[algorithm] = arms_seen.get(algorithm, 0) + 1
        linestyle = _ARM_LINESTYLES[(arms_seen[algorithm] - 1) % len(_ARM_LINESTYLES)]
        styles[name] = {"color": palette[algorithm], "marker": marker, "s": 50, "linestyle": linestyle}
    return styles


def _distinct_colours(count: int) -> list:
    """`count` colours, the ten hues of tab20 in their dark shade first, then their light shades: tab20 in its
    own order pairs each dark shade with its light one, so neighbours in the legend (DPO and Dr. GRPO, IPO and
    KTO) looked alike. Past twenty, a perceptually even colormap."""
    import matplotlib

    if count > 20:
        return [matplotlib.colormaps["turbo"](index / max(count - 1, 1)) for index in range(count)]
    tab20 = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [tab20(order[index]) for index in range(count)]


def _families_of(frame: "pd.DataFrame", by: str = "arm") -> dict:
    """Each arm (`by` "arm") or registry algorithm (`by` "algorithm") of `frame` -> its family, from the family
    column (record.TAG_FAMILY of its cells)."""
    if "family" not in frame:
        return {}
    known = frame.dropna(subset=["family"])
    return dict(zip(known[by], known["family"]))


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=DPI, format="png")
    logger.info("wrote %s", out_path)
    return out_path


def _say_empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="dimgray")


def _legend_below(figure, axes, columns: int = 6) -> None:
    """One legend for the whole figure, below the panels: each panel shows the same algorithms."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        # No more columns than the figure's width holds at "small" type (about 13 characters an inch, the handle
        # taking five): a legend wider than its figure is cut at the edge.
        fitting = int(figure.get_figwidth() * 13 // (max(len(label) for label in labels) + 5))
        figure.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            ncols=max(1, min(len(labels), columns, fitting)),
            fontsize="small",
        )


def _label(algorithm: str) -> str:
    return f"{algorithm} (baseline)" if algorithm == BASELINE_ALGORITHM else algorithm


# --- reward against KL --------------------------------------------------------------------------


def _marker_style(style: dict) -> dict:
    """A style for scatter: the line style is for curves only (it would dash the markers' edges)."""
    return {key: value for key, value in style.items() if key != "linestyle"}


def _scatter_by_algorithm(ax, cells: "pd.DataFrame", x, y_column: str, styles: dict) -> None:
    for arm, style in styles.items():
        points = cells[cells["arm"] == arm]
        if points.empty:
            continue
        ax.scatter(
            x(points),
            points[y_column],
            label=_label(arm),
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            **_marker_style(style),
        )


def _baseline_line(ax, cells: "pd.DataFrame", y_column: str, label: str) -> None:
    """The line every algorithm has to clear: the SFT policy's mean over seeds."""
    baseline = cells[cells["arm"] == BASELINE_ALGORITHM][y_column].dropna()
    if not baseline.empty:
        ax.axhline(baseline.mean(), color="black", linestyle="--", linewidth=0.8, alpha=0.6, label=label, zorder=1)


def _checkpoint_paths(ax, cells: "pd.DataFrame", histories, reward_metric: str, transform, styles: dict) -> None:
    """A thin line per cell through its intermediate evaluations, in training order, ending at the final
    point: how reward was bought with KL during training, not only where it ended."""
    if histories is None or histories.empty:
        return
    for run_id, arm in zip(cells["run_id"], cells["arm"]):
        runs = histories[histories["run_id"] == run_id]
        kl = runs[runs["metric"] == EVAL_PREFIX + "kl"].set_index("step")["value"]
        reward = runs[runs["metric"] == reward_metric].set_index("step")["value"]
        path = kl.to_frame("kl").join(reward.to_frame("reward"), how="inner").sort_index()
        if len(path) > 1 and arm in styles:
            ax.plot(
                transform(path["kl"]),
                path["reward"],
                color=styles[arm].get("color"),
                linewidth=0.9,
                alpha=0.6,
                marker=".",
                markersize=4,
                zorder=2,
            )


def _draw_reward_panel(ax, cells: "pd.DataFrame", reward: tuple, use_sqrt: bool, styles: dict, histories=None) -> None:
    import numpy as np

    name, y_label, title = reward
    kl_column, reward_column = EVAL_PREFIX + "kl", EVAL_PREFIX + name
    ax.set_xlabel(SQRT_KL_AXIS_LABEL if use_sqrt else KL_AXIS_LABEL)
    ax.set_ylabel(y_label)
    ax.set_title(f"{title} against √KL (Gao et al. 2022)" if use_sqrt else f"{title} against KL")
    ax.grid(True, alpha=0.3)
    if kl_column not in cells or reward_column not in cells:
        _say_empty(ax, f"{name} or kl not logged")
        return
    plotted = cells.dropna(subset=[kl_column, reward_column])
    if plotted.empty:
        _say_empty(ax, f"no cell logged both {name} and kl")
        return
    # The exact KL is never negative; clip float noise below zero before the square root.
    x = (lambda points: np.sqrt(points[kl_column].clip(lower=0.0))) if use_sqrt else (lambda points: points[kl_column])
    transform = (lambda kl: np.sqrt(kl.clip(lower=0.0))) if use_sqrt else (lambda kl: kl)
    _checkpoint_paths(ax, plotted, histories, reward_column, transform, styles)
    _scatter_by_algorithm(ax, plotted, x, reward_column, styles)
    _baseline_line(ax, plotted, reward_column, f"{BASELINE_ALGORITHM} mean")


def plot_reward_vs_kl(df: "pd.DataFrame", out_path: str | Path, title: str | None = None, histories=None) -> Path:
    """Gold (top) and proxy (bottom) reward against KL (left) and √KL (right), one point per complete
    (algorithm, seed) cell, and a line through its intermediate checkpoints when `histories` (run_id, metric,
    step, value) has eval/* at several steps. Writes a PNG at 120 dpi to `out_path` and returns its path."""
    cells = _reported_cells(df)
    styles = _algorithm_styles(algorithm_order(cells["arm"]), _families_of(cells))
    figure = _new_figure(11, 8.5)
    axes = figure.subplots(len(_REWARDS), 2, squeeze=False)
    for row, reward in enumerate(_REWARDS):
        for column, use_sqrt in enumerate((False, True)):
            _draw_reward_panel(axes[row][column], cells, reward, use_sqrt, styles, histories)
    _legend_below(figure, axes.ravel())
    suites = ", ".join(sorted(set(df["suite"].dropna()))) or "harness"
    figure.suptitle(title or f"{suites}: reward against KL to the reference policy (one point per seed)")
    return _save(figure, out_path)


# --- the frontier ------------------------------------------------------------------------------


def plot_frontier(
    df: "pd.DataFrame", histories: "pd.DataFrame | None", out_path: str | Path, title: str | None = None
) -> Path:
    """Gold reward (and proxy reward, where logged) against KL: the seed-mean point of every arm's every
    evaluated checkpoint, faint; each algorithm's achievable front (the upper concave hull of its points) as a line from the SFT point (see
    `frontier`). Writes a PNG and returns its path."""

    frontiers = [build_frontier(df, histories, metric) for metric in REWARDS]
    shown = [frontier for frontier in frontiers if not frontier.points.empty] or frontiers[:1]
    figure = _new_figure(6.2 * len(shown) + 0.6, 5.4)
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    algorithms = algorithm_order(set().union(*(frontier.points["algorithm"] for frontier in shown)))
    families = {}
    for frontier in shown:
        families.update(_families_of(frontier.points, by="algorithm"))
    colours = _algorithm_styles(algorithms, families)
    for ax, frontier in zip(axes, shown):
        _draw_frontier(ax, frontier, colours)
    _legend_below(figure, axes, columns=3)  # its labels are long: the algorithm, its family, the bound
    suites = ", ".join(sorted(set(df["suite"].dropna()))) or "harness"
    figure.suptitle(
        title or f"{suites}: reward against KL, each algorithm's achievable front over its sweep and checkpoints"
    )
    return _save(figure, out_path)


def _draw_frontier(ax, frontier, colours: dict) -> None:

    ax.set_xlabel(KL_AXIS_LABEL)
    ax.set_ylabel(axis_label(frontier.metric))
    ax.set_title(f"{frontier.metric.replace('_', ' ')}: seed means (faint) and achievable fronts (lines)")
    ax.grid(True, alpha=0.3)
    points = frontier.points
    if points.empty:
        _say_empty(ax, f"no cell logged both {frontier.metric} and kl")
        return
    means = mean_points(points)
    baseline = means[means["algorithm"] == BASELINE_ALGORITHM]
    for algorithm, front in frontier.fronts.items():
        colour = colours[algorithm]["color"]
        own = means[means["algorithm"] == algorithm]
        family = own["family"].dropna().iloc[0] if own["family"].notna().any() else None
        marker = _FAMILY_MARKERS.get(family, _UNKNOWN_FAMILY_MARKER)
        for is_bound, group in own.groupby("kl_is_bound"):
            # Hollow where the KL is an upper bound: the true point lies at or left of it.
            face = "none" if is_bound else colour
            ax.scatter(
                group[KL],
                group[frontier.metric],
                marker=marker,
                s=30,
                facecolors=face,
                edgecolors=colour,
                alpha=_FAINT,
                zorder=2,
            )
        bound = bool(own["kl_is_bound"].any())
        name = f"{algorithm} ({family or 'family unknown'}{'; KL is an upper bound' if bound else ''})"
        ax.plot(
            front[KL],
            front[frontier.metric],
            color=colour,
            linewidth=1.6,
            marker=marker,
            markersize=6,
            markerfacecolor="none" if bound else colour,
            label=name,
            zorder=3,
        )
    if not baseline.empty:
        ax.scatter(
            baseline[KL],
            baseline[frontier.metric],
            label=f"{BASELINE_ALGORITHM} (KL 0: the reference)",
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
            **_BASELINE_STYLE,
        )


# --- training curves ----------------------------------------------------------------------------


def plot_training_comparison(
    df: "pd.DataFrame", histories: "pd.DataFrame", out_path: str | Path, title: str | None = None
) -> Path:
    """The figure that compares algorithms while they train: KL per sequence (record.TRAIN_KL_PER_SEQUENCE, nats,
    every algorithm that logs it) and the training reward (train/reward: the reward of the sampled completions,
    online algorithms) against the fraction of the budget, one line per algorithm (its seeds' mean), colour by
    algorithm, marker by family, on shared axes. One algorithm far above the others would flatten the rest, so
    a y-axis is clipped above the runner-up when the top line is more than twice as high, and its title says so."""
    cells = _reported_cells(df)
    styles = _algorithm_styles(algorithm_order(cells["arm"]), _families_of(cells))
    curves, fell_back = _curves_on_budget_axis(cells, histories)
    figure = _new_figure(12, 5.2)
    axes = figure.subplots(1, len(_COMPARED_CURVES), squeeze=False, sharex=True)[0]
    for ax, (name, y_label, panel_title) in zip(axes, _COMPARED_CURVES):
        rows = curves[curves["metric"] == record.TRAIN_PREFIX + name]
        _draw_compared_curve(ax, rows, f"{panel_title} ({record.TRAIN_PREFIX}{name})", y_label, styles, fell_back)
    _legend_below(figure, axes, columns=7)
    suites = ", ".join(sorted(set(df["suite"].dropna()))) or "harness"
    figure.suptitle(title or f"{suites}: every algorithm while it trains (mean over seeds; marker: family)")
    return _save(figure, out_path)


def _draw_compared_curve(ax, rows: "pd.DataFrame", title: str, y_label: str, styles: dict, fell_back: bool) -> None:
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(CURVE_X_LABEL + (_CURVE_X_FALLBACK if fell_back else ""), fontsize="small")
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    means = _seed_means(rows)
    if means.empty:
        ax.set_title(title, fontsize="medium")
        _say_empty(ax, "no algorithm logged it")
        return
    for arm, style in styles.items():
        line = means[means["arm"] == arm]
        if not line.empty:
            ax.plot(
                line["x"],
                line["value"],
                color=style["color"],
                marker=style["marker"],
                markersize=5,
                linestyle=style.get("linestyle", "-"),
                markevery=max(1, len(line) // 8),
                linewidth=1.5,
                label=_label(arm),
            )
    clipped = _clip_one_outlier(ax, means)
    ax.set_title(
        title + (f"\ny clipped at {clipped[0]:.3g}: {clipped[1]} reaches {clipped[2]:.3g}" if clipped else ""),
        fontsize="medium",
    )


def _seed_means(rows: "pd.DataFrame") -> "pd.DataFrame":
    """arm, x, value: the mean over seeds at each budget fraction (seeds log the same steps)."""
    if rows.empty:
        return rows.reindex(columns=["arm", "x", "value"])
    means = rows.groupby(["arm", "x"], as_index=False)["value"].mean()
    return means.sort_values(["arm", "x"], kind="mergesort")


def _clip_one_outlier(ax, means: "pd.DataFrame") -> tuple[float, str, float] | None:
    """Clip the y-axis above the runner-up when one algorithm's peak is more than OUTLIER_RATIO times the next
    highest (both positive): (the limit, the algorithm, its peak), or None when nothing was clipped."""
    peaks = means.groupby("arm")["value"].max().sort_values(ascending=False)
    if len(peaks) < 2 or not (peaks.iloc[1] > 0 and peaks.iloc[0] > OUTLIER_RATIO * peaks.iloc[1]):
        return None
    limit = _CLIP_MARGIN * float(peaks.iloc[1])
    low = min(float(means["value"].min()), 0.0)
    ax.set_ylim(low - 0.02 * (limit - low), limit)
    return limit, str(peaks.index[0]), float(peaks.iloc[0])


def plot_training_curves(
    df: "pd.DataFrame", histories: "pd.DataFrame", out_path: str | Path, title: str | None = None
) -> Path:
    """Each algorithm's own diagnostics (the curves it declared on its cell runs; every train/ metric it logged
    when it declared none) grouped per family: one panel per (family, curve), a line per (arm, seed) of that family,
    colour by arm, line style by seed, x the fraction of the budget. Algorithms of one family share a trainer
    and so the unit of a curve's name; across families they need not (PPO's and GRPO's train/kl do not), so
    families never share a panel. The shared curves are in `plot_training_comparison`.
    `histories` is run_id, metric, step, value."""
    cells = _reported_cells(df)
    families = _families_of(cells)
    styles = _algorithm_styles(algorithm_order(cells["arm"]), families)
    curves, fell_back = _curves_on_budget_axis(cells, histories)
    panels = _family_panels(curves, families, declared_curves(cells))
    columns = min(max(len(panels), 1), _CURVE_COLUMNS)
    rows = max(1, -(-len(panels) // columns))
    figure = _new_figure(3.3 * columns + 0.6, 2.7 * rows + 1.2)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    if not panels:
        _say_empty(axes[0], "no training curves logged")
    for ax, (title_text, y_label, panel) in zip(axes, panels):
        _draw_curves(ax, panel, title_text, y_label, styles, fell_back)
    for ax in axes[len(panels) :] if panels else axes:
        ax.set_axis_off()
    _legend_below(figure, axes[: len(panels)], columns=7)
    suites = ", ".join(sorted(set(df["suite"].dropna()))) or "harness"
    figure.suptitle(title or f"{suites}: each algorithm's own training curves, per family (line style: seed)")
    return _save(figure, out_path)


def _curves_on_budget_axis(cells: "pd.DataFrame", histories: "pd.DataFrame") -> tuple["pd.DataFrame", bool]:
    """The train/ history of the reported cells with x: the run's budget fraction at that step, or step / its
    last train/ step where the run logged no budget fraction (runs from before it was logged). Also whether
    any run fell back."""
    import pandas as pd

    columns = ["run_id", "arm", "algorithm", "seed", "metric", "step", "value", "x"]
    if histories is None or histories.empty:
        return pd.DataFrame(columns=columns), False
    identity = cells[["run_id", "arm", "algorithm", "seed"]]
    train = histories[histories["metric"].str.startswith(record.TRAIN_PREFIX)]
    train = train.merge(identity, on="run_id")
    x_metric = record.TRAIN_PREFIX + CURVE_X
    fraction = train[train["metric"] == x_metric][["run_id", "step", "value"]].rename(columns={"value": "x"})
    train = train[train["metric"] != x_metric].merge(fraction, on=["run_id", "step"], how="left")
    logged = set(fraction["run_id"])
    last_step = train.groupby("run_id")["step"].transform("max").clip(lower=1)
    fallback = ~train["run_id"].isin(logged)
    train.loc[fallback, "x"] = train.loc[fallback, "step"] / last_step[fallback]
    return train.dropna(subset=["x"])[columns], bool(fallback.any())


def _family_panels(curves: "pd.DataFrame", families: dict, declared: dict) -> list[tuple[str, str, "pd.DataFrame"]]:
    """(title, y label, rows) per panel: per family (record.FAMILIES order, then unknown; `families`: arm ->
    family), each curve its algorithms declare (`declared`: registry algorithm -> its curves), in the order they
    declare them; the shared curves are left to the comparison figure."""
    shared = {record.TRAIN_PREFIX + name for name in SHARED_CURVES}
    own = curves[~curves["metric"].isin(shared)]
    by_family: dict = {}
    for arm in algorithm_order(own["arm"]):
        by_family.setdefault(families.get(arm), []).append(arm)
    panels = []
    for family in sorted(by_family, key=lambda name: (name not in record.FAMILIES, _family_rank(name))):
        arms = by_family[family]
        rows = own[own["arm"].isin(arms)]
        metrics = []
        for algorithm in algorithm_order(rows["algorithm"]):
            its_curves = [record.TRAIN_PREFIX + name for name in declared.get(algorithm, ())]
            logged = set(rows[rows["algorithm"] == algorithm]["metric"])
            metrics += [metric for metric in its_curves or sorted(logged) if metric in logged]
        for metric in dict.fromkeys(metrics):
            name = metric.removeprefix(record.TRAIN_PREFIX)
            panels.append((f"{family or 'family unknown'}: {name}", name, rows[rows["metric"] == metric]))
    return panels


def _family_rank(family) -> int:
    return record.FAMILIES.index(family) if family in record.FAMILIES else len(record.FAMILIES)


def _draw_curves(ax, curves: "pd.DataFrame", title: str, y_label: str, styles: dict, fell_back: bool) -> None:
    seeds = sorted(set(curves["seed"]))
    for arm, style in styles.items():
        for seed_index, seed in enumerate(seeds):
            line = curves[(curves["arm"] == arm) & (curves["seed"] == seed)].sort_values("step")
            if line.empty:
                continue
            # Markers keep short runs (a handful of logged steps) readable as points, not a bare polyline.
            ax.plot(
                line["x"],
                line["value"],
                color=style["color"],
                linewidth=1.2,
                marker=style["marker"],
                markersize=4,
                markevery=max(1, len(line) // 6),
                linestyle=_SEED_LINESTYLES[seed_index % len(_SEED_LINESTYLES)],
                label=_label(arm),
            )
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(CURVE_X_LABEL + (_CURVE_X_FALLBACK if fell_back else ""), fontsize="small")
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize="small")
    ax.grid(True, alpha=0.3)


# --- reward against cost ------------------------------------------------------------------------


def plot_reward_vs_cost(df: "pd.DataFrame", out_path: str | Path, title: str | None = None) -> Path:
    """Gold reward against tokens generated (left) and wall time (right) of training, one point per complete
    (algorithm, seed) cell; the baseline trains nothing and is drawn as its mean reward. Writes a PNG."""
    cells = _reported_cells(df)
    styles = _algorithm_styles(algorithm_order(cells["arm"]), _families_of(cells))
    figure = _new_figure(11, 4.8)
    axes = figure.subplots(1, len(_COSTS), squeeze=False)[0]
    reward_column = EVAL_PREFIX + "gold_reward"
    for ax, (cost, x_label, panel_title) in zip(axes, _COSTS):
        _draw_cost_panel(ax, cells, reward_column, COST_PREFIX + cost, x_label, panel_title, styles)
    _legend_below(figure, axes)
    suites = ", ".join(sorted(set(df["suite"].dropna()))) or "harness"
    figure.suptitle(title or f"{suites}: gold reward against training cost (one point per seed)")
    return _save(figure, out_path)


def _draw_cost_panel(ax, cells, reward_column: str, cost_column: str, x_label: str, title: str, styles) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(axis_label("gold_reward"))
    ax.set_title(f"gold reward {title}")
    ax.grid(True, alpha=0.3)
    if reward_column not in cells or cost_column not in cells:
        _say_empty(ax, f"{reward_column.removeprefix(EVAL_PREFIX)} or {cost_column} not logged")
        return
    trained = cells[cells["arm"] != BASELINE_ALGORITHM].dropna(subset=[reward_column, cost_column])
    trained_styles = {name: style for name, style in styles.items() if name != BASELINE_ALGORITHM}
    _scatter_by_algorithm(ax, trained, lambda points: points[cost_column], reward_column, trained_styles)
    _baseline_line(ax, cells, reward_column, f"{BASELINE_ALGORITHM} mean (no training)")
    if trained.empty:
        _say_empty(ax, f"no trained cell logged {cost_column}")
        return
    # Spend is compared from nothing: an axis starting at 0 shows how many times more one algorithm used
    # (and keeps DPO, which generates no tokens, visibly at zero); a small margin keeps its marker whole.
    largest = float(trained[cost_column].max())
    if largest > 0:
        ax.set_xlim(left=-0.04 * largest, right=1.06 * largest)
