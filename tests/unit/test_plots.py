"""The report's figures for a suite of the size a user runs: the thirteen algorithms of tiny and the SFT
baseline in a real MLflow store (test_report.py's way of filling one), with one algorithm (reinforce_pp) whose
training KL spikes to 8 nats while the others stay under 1.3.

Every figure is drawn through `markdown.draw_plots`, as the report draws it; each Figure is caught on its way
to the PNG (wrapping `plots._save`, which then writes it), so the panels and the legend can be read back.
"""

from __future__ import annotations

import pytest
from test_report import DECLARED, SUITE, _log_cell, _new_store, _start_invocation, empty_database  # noqa: F401

from harness import record
from harness.algorithms.spec import algorithm as resolve
from harness.config import load_config
from harness.report import plots
from harness.report.markdown import PLOTS, draw_plots, plot_file_names
from harness.report.records import load_suite_records

ALGORITHMS = list(load_config("tiny").algorithms)  # 13
STEPS = 6
SPIKE = 8.0  # reinforce_pp's training KL at its peak; every other algorithm peaks at 0.1 * 13 = 1.3
MAX_BYTES = 1_000_000
MAX_WIDTH_PX = 1400


def _declared_tags(name: str) -> dict:
    """The tags a cell of `name` carries of what its algorithm declares (its SPEC), as the cell writer sets them;
    the report draws from these tags, never from the module."""
    if name == record.BASELINE:
        return DECLARED[name]
    spec = resolve(name).spec
    return {
        record.TAG_FAMILY: spec.family,
        record.TAG_KL_KNOB: spec.kl_knob,
        record.TAG_KL_KNOB_RAISES_KL: "true" if spec.kl_knob_raises_kl else "false",
        record.TAG_CURVES: ",".join(spec.curves),
        record.TAG_DATA: "",
    }


def _curves(algorithm: str, index: int, start_ms: int) -> list:
    """train/budget_fraction, train/kl_per_sequence and train/reward (online algorithms) at STEPS steps."""
    from mlflow.entities import Metric

    metrics = []
    for step in range(1, STEPS + 1):
        fraction = step / STEPS
        kl = SPIKE * fraction if algorithm == "reinforce_pp" else 0.1 * (index + 1) * fraction
        metrics += [
            Metric(record.TRAIN_PREFIX + record.TRAIN_BUDGET_FRACTION, fraction, start_ms + step, step),
            Metric(record.TRAIN_PREFIX + record.TRAIN_KL_PER_SEQUENCE, kl, start_ms + step, step),
        ]
        for name in resolve(algorithm).spec.curves:
            metrics.append(Metric(record.TRAIN_PREFIX + name, 0.05 * index + 0.1 * step, start_ms + step, step))
    return metrics


@pytest.fixture(scope="module")
def figures(empty_database, tmp_path_factory):
    """{plot key: (path, Figure)} of a 13-algorithm, one-seed suite."""
    import mlflow

    root = tmp_path_factory.mktemp("many")
    uri, _, client, experiment_id = _new_store(empty_database, root)
    parent = _start_invocation(client, experiment_id, 0)
    for index, algorithm in enumerate(["sft", *ALGORITHMS]):
        values = {"gold_reward": 0.1 * index, "proxy_reward": 0.2 * index, "kl": 0.3 * index}
        run_id = _log_cell(
            client,
            experiment_id,
            parent,
            root / "runs",
            algorithm=algorithm,
            seed=0,
            start_minute=index + 1,
            eval_values=values,
            history=False,
            declared=_declared_tags(algorithm),
        )
        if algorithm not in ("sft", "best_of_n"):  # best-of-n trains nothing and logs no curve
            client.log_batch(run_id, metrics=_curves(algorithm, index, 0))
    client.set_terminated(parent, status="FINISHED")
    mlflow.set_tracking_uri(uri)
    records = load_suite_records(uri, SUITE)
    caught = []
    save = plots._save

    def keep(figure, out_path):
        caught.append(figure)
        return save(figure, out_path)

    plots._save = keep
    try:
        paths = draw_plots(records, root / "report", plot_file_names(SUITE))
    finally:
        plots._save = save
    return {key: (path, figure) for (key, _, _), path, figure in zip(PLOTS, paths, caught)}


def _panels(figure) -> list:
    return [ax for ax in figure.axes if ax.axison]


def _legend_styles(figure) -> dict[str, tuple]:
    """label -> (RGBA colour, marker) of each entry of the figure's legend."""
    import matplotlib.colors as mcolors

    styles = {}
    for legend in figure.legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            if hasattr(handle, "get_color") and hasattr(handle, "get_marker"):  # a Line2D
                colour, marker = handle.get_color(), handle.get_marker()
            else:  # a scatter's PathCollection
                colour, marker = handle.get_facecolor()[0], None
            styles[text.get_text()] = (tuple(round(c, 3) for c in mcolors.to_rgba(colour)), marker)
    return styles


def test_every_figure_is_under_a_megabyte_and_a_laptop_screen_wide(figures):
    from matplotlib.image import imread

    assert set(figures) == {key for key, _, _ in PLOTS}
    for key, (path, _) in figures.items():
        assert path.stat().st_size < MAX_BYTES, (key, path.stat().st_size)
        height, width = imread(path).shape[:2]
        assert 600 <= width <= MAX_WIDTH_PX, (key, width)


def test_the_comparison_figure_has_two_shared_panels_and_clips_the_outlier(figures):
    _, figure = figures["training_comparison"]
    reward, kl = _panels(figure)
    assert "training reward" in reward.get_title() and "kl_per_sequence" in kl.get_title()
    # Every algorithm on one KL axis; reinforce_pp's 8 nats is clipped at 1.3 x the runner-up's 1.3 = 1.69.
    assert len(kl.get_lines()) == len(ALGORITHMS) - 1  # best_of_n trains nothing
    assert kl.get_ylim()[1] == pytest.approx(1.3 * 0.1 * (ALGORITHMS.index("ppo") + 2))
    assert "y clipped at 1.69: reinforce_pp reaches 8" in kl.get_title()
    # The reward panel: only the online algorithms log a train/reward; nothing there is an outlier.
    online = [name for name in ALGORITHMS if "reward" in resolve(name).spec.curves]
    assert len(reward.get_lines()) == len(online) and "clipped" not in reward.get_title()


def test_the_diagnostics_figure_has_a_panel_per_family_and_curve(figures):
    _, figure = figures["training_curves"]
    expected = set()
    for name in ALGORITHMS:
        family = resolve(name).spec.family
        expected |= {f"{family}: {curve}" for curve in resolve(name).spec.curves}
    titles = [ax.get_title() for ax in _panels(figure)]
    assert sorted(titles) == sorted(expected)
    assert len(titles) < 30  # the old figure had a panel per algorithm and curve: 47 for tiny


@pytest.mark.parametrize(
    "key", ["training_comparison", "training_curves", "reward_vs_kl", "reward_vs_cost", "frontier"]
)
def test_each_algorithm_has_its_own_colour_and_its_familys_marker(figures, key):
    _, figure = figures[key]
    styles = _legend_styles(figure)
    entries = {label.split(" ")[0]: style for label, style in styles.items() if not label.startswith("sft")}
    drawn = [name for name in ALGORITHMS if name in entries]
    assert len(drawn) >= (len(ALGORITHMS) - 1 if key.startswith("training") else len(ALGORITHMS)), entries
    colours = [entries[name][0] for name in drawn]
    assert len(set(colours)) == len(colours), key  # no two algorithms share a colour
    for name in drawn:
        marker = entries[name][1]
        if marker is not None:  # a line's marker is its family's
            assert marker == plots._FAMILY_MARKERS[resolve(name).spec.family], (key, name, marker)
