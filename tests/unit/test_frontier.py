"""The reward-versus-KL frontier (harness.report.frontier) against points, fronts and intervals computed by hand,
and the report's frontier section built from a real MLflow store holding a swept algorithm.

Every expected number below is worked out in the comment beside it, not by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness import record
from harness.report.frontier import (
    achievable_front,
    checkpoint_points,
    kl_levels,
    matched_kl_table,
    mean_fronts,
    reward_at,
)
from harness.report.stats import t_quantile

OFFLINE = record.FAMILY_OFFLINE_PREFERENCE
ONLINE = record.FAMILY_ONLINE_POLICY_GRADIENT
INFERENCE = record.FAMILY_INFERENCE_TIME
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the front and its interpolation ------------------------------------------------------------


def test_achievable_front_is_the_upper_concave_hull_by_hand():
    #   index  (kl,  reward)
    #   0      (0.0,  0.0)   the SFT point                                    a vertex
    #   1      (1.0,  0.5)   above the chord 0-3 (0.367 at KL 1)              a vertex
    #   2      (2.0,  0.4)   1 has less KL and more reward                    dominated
    #   3      (3.0,  1.1)   above the chord 1-... : the highest reward       a vertex, the last
    #   4      (3.0,  0.9)   3 has the same KL and more reward                dominated
    #   5      (4.0,  1.1)   3 has less KL and the same reward                dominated
    #   6      (0.5, -0.2)   0 has less KL and more reward                    dominated
    #   7      (nan,  2.0)   no KL                                            never on a front
    #   8      (1.0,  0.5)   the same point as 1: one of them is kept (the first)
    #   9      (2.5,  0.9)   on the Pareto staircase, but below the chord 1-3 (0.5 + 0.6 · 1.5/2 = 0.95)
    kl = [0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 0.5, math.nan, 1.0, 2.5]
    reward = [0.0, 0.5, 0.4, 1.1, 0.9, 1.1, -0.2, 2.0, 0.5, 0.9]
    front = achievable_front(kl, reward)
    assert front == [0, 1, 3]

    front_kl, front_reward = np.array(kl)[front], np.array(reward)[front]
    # Between (0, 0) and (1, 0.5): 0.5 · 0.5 = 0.25. Between (1, 0.5) and (3, 1.1): 0.5 + 0.6 · (1/2) = 0.8.
    assert reward_at(front_kl, front_reward, 0.5) == pytest.approx(0.25)
    assert reward_at(front_kl, front_reward, 2.0) == pytest.approx(0.8)
    assert reward_at(front_kl, front_reward, 3.0) == pytest.approx(1.1)  # the last point itself
    # Past the last point: its reward is reachable with any larger KL budget (flat). Below KL 0: nothing.
    assert reward_at(front_kl, front_reward, 3.5) == pytest.approx(1.1)
    assert math.isnan(reward_at(front_kl, front_reward, -0.1))


def _value(points_kl, points_reward, level):
    front = achievable_front(points_kl, points_reward)
    return reward_at(np.array(points_kl, dtype=float)[front], np.array(points_reward, dtype=float)[front], level)


def test_an_intermediate_checkpoint_does_not_lower_the_matched_value():
    """The issue's example: SFT (0, 0) and a final point (1, 1) give 0.5 at KL 0.5 (the mixture of the two);
    the staircase interpolation fell to 0.1 once a checkpoint at (0.5, 0.1) was added."""
    assert _value([0.0, 1.0], [0.0, 1.0], 0.5) == pytest.approx(0.5)
    assert _value([0.0, 1.0, 0.5], [0.0, 1.0, 0.1], 0.5) == pytest.approx(0.5)


def test_a_better_point_never_erases_a_value():
    """A point with less KL and more reward than the last one used to shorten the front: KL 2 became a dash.
    Now the value at 2 is the best reward reachable with KL at most 2: the new point's."""
    assert _value([0.0, 2.0], [0.0, 1.0], 2.0) == pytest.approx(1.0)
    assert _value([0.0, 2.0, 1.0], [0.0, 1.0, 1.5], 2.0) == pytest.approx(1.5)


def test_adding_any_point_never_lowers_a_value_nor_turns_it_into_a_dash():
    """Property over random point sets: for every level, the value with one more point is at least the value
    without it, and finite wherever it was (levels from 0 to past every point)."""
    rng = np.random.default_rng(20)
    levels = np.linspace(0.0, 6.0, 61)
    for _ in range(400):
        count = int(rng.integers(1, 8))
        kl = [0.0, *rng.uniform(0.0, 5.0, count)]
        reward = [float(rng.normal()), *rng.normal(0.5, 1.0, count)]
        before = [_value(kl, reward, level) for level in levels]
        extra_kl, extra_reward = float(rng.uniform(0.0, 5.0)), float(rng.normal(0.5, 1.0))
        after = [_value([*kl, extra_kl], [*reward, extra_reward], level) for level in levels]
        for level, old, new in zip(levels, before, after):
            assert math.isfinite(old) and math.isfinite(new), (kl, reward, level)
            assert new >= old - 1e-12, (kl, reward, extra_kl, extra_reward, level)
        # ... and on the matched-KL table itself, through the per-seed fronts.
        frame = _points(
            [("sft", "sft", None, 0, 0, 0.0, reward[0])]
            + [("a", "a", ONLINE, 0, step, k, r) for step, (k, r) in enumerate(zip(kl[1:], reward[1:]), 1)]
        )
        grown = pd.concat([frame, _points([("a", "a", ONLINE, 0, 99, extra_kl, extra_reward)])], ignore_index=True)
        _, table_before, _ = matched_kl_table(frame, "gold_reward", levels=[0.5, 2.0, 5.5])
        _, table_after, _ = matched_kl_table(grown, "gold_reward", levels=[0.5, 2.0, 5.5])
        assert (table_after["mean"].to_numpy() >= table_before["mean"].to_numpy() - 1e-12).all()
        assert table_after["mean"].notna().all()


def test_kl_levels_are_round_values_up_to_the_largest_reach():
    # Reaches 7.3, 3.0, 0.02: top = 7.3 (the largest); 1-2-5 values in (7.3/20, 7.3] = (0.365, 7.3] are
    # 0.5, 1, 2, 5; the smallest reach 0.02 ends below 0.5, so the largest series value within it, 0.02, joins.
    assert kl_levels([7.3, 3.0, 0.02]) == [0.02, 0.5, 1.0, 2.0, 5.0]
    # One algorithm: its own reach is the top; (0.05, 1] holds 0.1, 0.2, 0.5, 1.
    assert kl_levels([1.0]) == [0.1, 0.2, 0.5, 1.0]
    # Nothing moved off KL 0: no level.
    assert kl_levels([0.0, math.nan]) == []


# --- matched KL over seeds ----------------------------------------------------------------------


def _points(rows):
    """checkpoint_points' form from (algorithm, arm, family, seed, step, kl, gold)."""
    frame = pd.DataFrame(rows, columns=["algorithm", "arm", "family", "seed", "step", "kl", "gold_reward"])
    return frame.assign(kl_is_bound=False, proxy_reward=frame["gold_reward"] + 1.0)


SFT_POINTS = [("sft", "sft", None, seed, 0, 0.0, 0.0) for seed in (0, 1, 2)]
# Algorithm a: two arms (sweep points), one checkpoint each, three seeds.
A_POINTS = [
    ("a", "a@k=1", OFFLINE, 0, 4, 0.5, 0.4),
    ("a", "a@k=2", OFFLINE, 0, 4, 2.0, 1.0),
    ("a", "a@k=1", OFFLINE, 1, 4, 1.0, 0.5),
    ("a", "a@k=2", OFFLINE, 1, 4, 2.0, 0.9),
    ("a", "a@k=1", OFFLINE, 2, 4, 0.5, 0.2),
    ("a", "a@k=2", OFFLINE, 2, 4, 1.5, 0.8),
]
# Algorithm b: one arm, an intermediate checkpoint (step 1) and the final one (step 2), three seeds.
B_POINTS = [
    ("b", "b", ONLINE, 0, 1, 1.0, 0.2),
    ("b", "b", ONLINE, 0, 2, 4.0, 1.2),
    ("b", "b", ONLINE, 1, 1, 1.0, 0.3),
    ("b", "b", ONLINE, 1, 2, 4.0, 1.3),
    ("b", "b", ONLINE, 2, 1, 1.0, 0.1),
    ("b", "b", ONLINE, 2, 2, 4.0, 1.1),
]
# Algorithm c: two seeds; seed 1's front ends at KL 0.8.
C_POINTS = [("c", "c", ONLINE, 0, 1, 2.0, 0.5), ("c", "c", ONLINE, 1, 1, 0.8, 0.3)]


def _cell(table, algorithm, level):
    return table[(table["algorithm"] == algorithm) & (table["level"] == level)].iloc[0]


def test_matched_kl_reads_each_seeds_hull_then_a_t_interval_over_seeds():
    points = _points(SFT_POINTS + A_POINTS + B_POINTS + C_POINTS)
    levels, table, values = matched_kl_table(points, "gold_reward")
    # Reaches (the largest KL of its own points in every seed): a min(2.0, 2.0, 1.5) = 1.5, b 4.0,
    # c min(2.0, 0.8) = 0.8. top = 4.0, the largest: 1-2-5 values in (0.2, 4.0] are 0.5, 1, 2.
    assert levels == [0.5, 1.0, 2.0]

    # a at KL 1, per seed (each hull starts at that seed's SFT point (0, 0)):
    #   seed 0: (0,0) (0.5,0.4) (2,1.0); (0.5,0.4) is above the chord (0.25):   0.4 + 0.6 · (0.5 / 1.5) = 0.6
    #   seed 1: (0,0) (1,0.5) (2,0.9); (1,0.5) above the chord (0.45):            0.5
    #   seed 2: (0,0) (0.5,0.2) (1.5,0.8); (0.5,0.2) is BELOW the chord (0.8/3 = 0.26667), not a vertex:
    #           0.8 · (1 / 1.5) = 0.53333
    # mean 0.54444; deviations 0.05556, -0.04444, -0.01111: s = sqrt((0.0030864 + 0.0019753 + 0.0001235) / 2)
    # = 0.050918; half-width t(2) · s / √3 = 4.303 · 0.029398.
    a = _cell(table, "a", 1.0)
    assert a["mean"] == pytest.approx(1.6333333 / 3)
    assert (a["high"] - a["low"]) / 2 == pytest.approx(4.303 * 0.050918 / math.sqrt(3), rel=1e-4)
    assert (a["n"], a["seeds"], a["family"], a["short"]) == (3, 3, OFFLINE, False)
    # b at KL 1: its step-1 checkpoints lie below the chord from SFT to its step-2 checkpoint (at KL 1:
    # 1.2/4 = 0.3, 1.3/4 = 0.325, 1.1/4 = 0.275 against 0.2, 0.3, 0.1), so the chord's values: mean 0.3, s 0.025.
    b = _cell(table, "b", 1.0)
    assert b["mean"] == pytest.approx(0.3)
    assert (b["high"] - b["low"]) / 2 == pytest.approx(t_quantile(2) * 0.025 / math.sqrt(3))
    assert t_quantile(2) == 4.303
    # c at KL 0.5: seed 0 0.5 · 0.5 / 2.0 = 0.125; seed 1 0.3 · 0.5 / 0.8 = 0.1875; mean 0.15625;
    # s = 0.0625 / √2 = 0.0441942; half-width t(1) · s / √2 = 12.706 · 0.03125 = 0.3970625.
    c = _cell(table, "c", 0.5)
    assert c["mean"] == pytest.approx(0.15625)
    assert (c["high"] - c["low"]) / 2 == pytest.approx(0.3970625)
    assert not c["short"]
    # c at KL 1: seed 1's points stop at 0.8: its value is the best it reached, 0.3, held flat, and marked;
    # seed 0: 0.5 · 1 / 2 = 0.25. Mean 0.275 over both seeds: no dash.
    flat = _cell(table, "c", 1.0)
    assert flat["mean"] == pytest.approx(0.275) and (flat["n"], flat["seeds"], flat["short"]) == (2, 2, True)
    per_seed = values[(values["algorithm"] == "c") & (values["level"] == 1.0)].set_index("seed")
    assert per_seed["value"].to_dict() == pytest.approx({0: 0.25, 1: 0.3})
    assert per_seed["short"].to_dict() == {0: False, 1: True}


def test_one_seed_gives_the_value_without_an_interval():
    points = _points([SFT_POINTS[0], *[row for row in B_POINTS if row[3] == 0]])
    levels, table, _ = matched_kl_table(points, "gold_reward", levels=[2.5])
    # Seed 0 of b: hull (0,0) (4,1.2) ((1,0.2) lies below it); at 2.5: 1.2 · 2.5 / 4 = 0.75; one seed, no interval.
    row = _cell(table, "b", 2.5)
    assert row["mean"] == pytest.approx(0.75)
    assert math.isnan(row["low"]) and math.isnan(row["high"]) and row["n"] == 1


def test_the_figure_front_is_the_front_of_seed_means():
    points = _points(SFT_POINTS + A_POINTS + B_POINTS)
    fronts = mean_fronts(points, "gold_reward")
    # a@k=1 means: kl (0.5 + 1.0 + 0.5) / 3 = 0.66667, gold (0.4 + 0.5 + 0.2) / 3 = 0.36667;
    # a@k=2 means: kl (2 + 2 + 1.5) / 3 = 1.83333, gold (1.0 + 0.9 + 0.8) / 3 = 0.9. Both above the SFT mean (0, 0).
    a = fronts["a"]
    assert list(a["arm"]) == ["sft", "a@k=1", "a@k=2"]
    assert a["kl"].tolist() == pytest.approx([0.0, 2.0 / 3, 5.5 / 3])
    assert a["gold_reward"].tolist() == pytest.approx([0.0, 1.1 / 3, 0.9])
    # b: its two checkpoints' means (1.0, 0.2) and (4.0, 1.2), each over 3 seeds.
    # b: its two checkpoints' means (1.0, 0.2) and (4.0, 1.2); the first lies below the chord from SFT to the
    # second (0.3 at KL 1), so the hull is SFT and the final checkpoint.
    b = fronts["b"]
    assert list(b["step"]) == [0, 2] and b["gold_reward"].tolist() == pytest.approx([0.0, 1.2])
    assert b["seeds"].tolist() == [3, 3]


# --- points from the cell frame and histories -----------------------------------------------------


def _cell_row(run_id, arm, seed, family, gold, kl, bound=False):
    return {
        "run_id": run_id,
        "suite": "s",
        "arm": arm,
        "algorithm": record.algorithm_of(arm),
        "sweep_point": record.sweep_point_of(arm),
        "family": family,
        "kl_is_bound": bound,
        "seed": seed,
        "status": "complete",
        "config": "c",
        "start_time": pd.Timestamp(0, unit="s", tz="UTC"),
        "run": run_id,
        "eval/gold_reward": gold,
        "eval/proxy_reward": gold + 1,
        "eval/kl": kl,
    }


def test_checkpoint_points_read_every_evaluated_step_and_the_final_value_without_history():
    cells = pd.DataFrame(
        [
            _cell_row("s0", "sft", 0, None, 0.1, 0.02),  # the estimator's noise: the reference is put at KL 0
            _cell_row("d0", "dpo@beta=0.1", 0, OFFLINE, 0.9, 2.0),
            _cell_row("b0", "best_of_n@n=4", 0, INFERENCE, 0.4, 0.636, bound=True),  # no eval/ history: final only
        ]
    )
    histories = pd.DataFrame(
        [
            ("d0", "eval/kl", 5, 1.0),
            ("d0", "eval/gold_reward", 5, 0.5),
            ("d0", "eval/kl", 10, 2.0),
            ("d0", "eval/gold_reward", 10, 0.9),
            ("d0", "train/reward", 5, 7.0),
        ],
        columns=["run_id", "metric", "step", "value"],
    )
    points = checkpoint_points(cells, histories).set_index(["arm", "step"])
    assert points.loc[("sft", 0), ["kl", "gold_reward"]].tolist() == [0.0, 0.1]
    assert points.loc[("dpo@beta=0.1", 5), ["algorithm", "kl", "gold_reward"]].tolist() == ["dpo", 1.0, 0.5]
    assert points.loc[("dpo@beta=0.1", 10), ["kl", "gold_reward"]].tolist() == [2.0, 0.9]
    best_of_n = points.loc[("best_of_n@n=4", -1)]
    assert (best_of_n["algorithm"], best_of_n["kl"], best_of_n["kl_is_bound"]) == ("best_of_n", 0.636, True)
    assert len(points) == 4


def test_points_trained_from_another_sft_or_reward_model_stay_off_the_front():
    """An arm no newer run touched keeps an older configuration as its current one: its cells, trained from
    another SFT policy, must not join a front anchored on this SFT point."""
    now = {"sft.epochs": "4", "reward_model.epochs": "3", "evaluation.num_prompts": "64"}
    cells = pd.DataFrame(
        [
            {**_cell_row("s0", "sft", 0, None, 0.1, 0.0), **now},
            {**_cell_row("d0", "dpo@beta=0.1", 0, OFFLINE, 0.5, 1.0), **now, "algorithms.dpo.beta": "0.1"},
            {**_cell_row("old", "dpo@beta=0.3", 0, OFFLINE, 2.0, 0.5), **now, "sft.epochs": "2"},  # another SFT
            {**_cell_row("s1", "dpo@beta=0.1", 1, OFFLINE, 0.5, 1.0), **now},  # seed 1 has no SFT cell: no anchor
        ]
    )
    points = checkpoint_points(cells, None)
    assert sorted(points["arm"] + "-" + points["seed"].astype(str)) == ["dpo@beta=0.1-0", "sft-0"]


def test_training_curves_share_the_budget_fraction_axis():
    from harness.report.plots import _curves_on_budget_axis

    cells = pd.DataFrame([_cell_row("g0", "grpo", 0, ONLINE, 0.5, 1.0), _cell_row("p0", "ppo", 0, None, 0.5, 1.0)])
    histories = pd.DataFrame(
        # grpo logged the budget fraction: x is it, whatever its step numbers.
        [
            ("g0", "train/budget_fraction", 16, 0.5),
            ("g0", "train/kl_per_sequence", 16, 3.0),
            ("g0", "train/budget_fraction", 32, 1.0),
            ("g0", "train/kl_per_sequence", 32, 4.0),
            # an old ppo run did not: x is step / its last step, 2/4 and 4/4.
            ("p0", "train/kl", 2, 1.0),
            ("p0", "train/kl", 4, 2.0),
            ("p0", "eval/kl", 4, 9.0),
        ],  # eval history is not a training curve
        columns=["run_id", "metric", "step", "value"],
    )
    curves, fell_back = _curves_on_budget_axis(cells, histories)
    assert fell_back
    by_metric = {metric: list(zip(rows["x"], rows["value"])) for metric, rows in curves.groupby("metric")}
    assert by_metric == {"train/kl_per_sequence": [(0.5, 3.0), (1.0, 4.0)], "train/kl": [(0.5, 1.0), (1.0, 2.0)]}


# --- the report from a real MLflow store: one algorithm swept over two points, best-of-n beside it --------

SUITE = "tiny-frontier"
BASE_TIME_MS = 1_793_613_600_000
# Per arm and seed: (step, kl, gold) of each evaluated checkpoint; proxy = gold + 1.
STORE_POINTS = {
    ("sft", 0): [(0, 0.01, 0.0)],
    ("sft", 1): [(0, 0.01, 0.2)],
    ("dpo@beta=0.3", 0): [(2, 0.2, 0.1), (4, 0.5, 0.3)],
    ("dpo@beta=0.3", 1): [(2, 0.2, 0.3), (4, 0.5, 0.5)],
    ("dpo@beta=0.1", 0): [(2, 1.0, 0.4), (4, 2.0, 0.8)],
    ("dpo@beta=0.1", 1): [(2, 1.0, 0.6), (4, 2.0, 1.0)],
    # log 4 − 3/4 = 0.636294: best-of-4's KL bound.
    ("best_of_n@n=4", 0): [(0, math.log(4) - 0.75, 0.3)],
    ("best_of_n@n=4", 1): [(0, math.log(4) - 0.75, 0.5)],
}
# What each algorithm declares on its cells (record.TAG_FAMILY ... TAG_DATA), as the cell writer tags them.
DPO_DATA = (
    "pairs sampled from the SFT policy (two completions per training prompt, both stopped), labelled by the "
    "suite's reward model"
)
DECLARED = {
    "dpo": {
        record.TAG_FAMILY: OFFLINE,
        record.TAG_KL_KNOB: "beta",
        record.TAG_KL_KNOB_RAISES_KL: "false",
        record.TAG_CURVES: "loss,rewards/margins,rewards/accuracies",
        record.TAG_DATA: DPO_DATA,
    },
    "best_of_n": {
        record.TAG_FAMILY: INFERENCE,
        record.TAG_KL_KNOB: "n",
        record.TAG_KL_KNOB_RAISES_KL: "true",
        record.TAG_CURVES: "",
        record.TAG_DATA: "4 samples from the SFT policy per answer",
    },
}


@pytest.fixture(scope="module")
def frontier_store(tmp_path_factory):
    import mlflow
    from mlflow.entities import Metric, Param

    root = tmp_path_factory.mktemp("frontier")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(record.experiment_name(SUITE), artifact_location=(root / "a").as_uri())
    parent = client.create_run(
        experiment_id, start_time=BASE_TIME_MS, tags={record.TAG_KIND: record.KIND_INVOCATION, record.TAG_SUITE: SUITE}
    ).info.run_id
    for minute, ((arm, seed), checkpoints) in enumerate(STORE_POINTS.items(), start=1):
        name, point = record.algorithm_of(arm), record.sweep_point_of(arm)
        tags = {
            record.PARENT_RUN_TAG: parent,
            record.TAG_KIND: record.KIND_CELL,
            record.TAG_SUITE: SUITE,
            record.TAG_ARM: arm,
            record.TAG_ALGORITHM: name,
            record.TAG_SWEEP_POINT: point,
            record.TAG_SEED: str(seed),
            record.TAG_CELL: f"{arm}-s{seed}",
            record.TAG_CELL_HASH: f"{arm}-s{seed}",
            record.TAG_STATUS: record.STATUS_COMPLETE,
            record.TAG_TRAINING_REWARD: "proxy",
        }
        tags |= DECLARED.get(name, {})
        if name == "best_of_n":
            tags[record.TAG_KL_IS_BOUND] = "true"
        start = BASE_TIME_MS + minute * 60_000
        run_id = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{arm}-s{seed}").info.run_id
        metrics = [
            Metric(f"eval/{metric}", value, start, step)
            for step, kl, gold in checkpoints
            for metric, value in (("kl", kl), ("gold_reward", gold), ("proxy_reward", gold + 1))
        ]
        params = {"task.name": "synthetic_reviews", "evaluation.temperature": "1.0"}
        if name == "dpo":
            params |= {"algorithms.dpo.beta": point.split("=")[1], "algorithms.dpo.pairs_source": "reward_model"}
            metrics += [Metric("train/rewards/margins", 0.1 * step, start, step) for step in (1, 2, 3, 4)]
        client.log_batch(run_id, metrics=metrics, params=[Param(key, value) for key, value in params.items()])
        client.set_terminated(run_id, "FINISHED", end_time=start + 30_000)
    client.set_terminated(parent, "FINISHED", end_time=BASE_TIME_MS + 3_600_000)
    return {"uri": uri, "root": root}


def test_report_has_the_frontier_section_table_and_figure(frontier_store, tmp_path):
    from harness.report.markdown import write_report

    report = write_report(frontier_store["uri"], SUITE, tmp_path)
    text = report.read_text(encoding="utf-8")
    figure = tmp_path / "tiny-frontier_frontier.png"
    assert figure.read_bytes().startswith(PNG_SIGNATURE)
    section = text[text.index("## Reward vs KL frontier") : text.index("## Failed cells")]
    assert "](tiny-frontier_frontier.png)" in section and "nats per sequence" in section
    # Reaches: dpo 2.0 (both seeds), best_of_n 0.636294; top 2.0: levels 0.2, 0.5, 1, 2 in (0.1, 2.0].
    header = next(line for line in section.splitlines() if line.startswith("| algorithm"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "algorithm",
        "family",
        "seeds",
        "knob",
        "KL 0.2",
        "KL 0.5",
        "KL 1",
        "KL 2",
    ]
    # dpo pools both arms and every checkpoint. Seed 0's front: (0,0) (0.2,0.1) (0.5,0.3) (1,0.4) (2,0.8);
    # seed 1's: (0,0.2) (0.2,0.3) (0.5,0.5) (1,0.6) (2,1.0). At 0.5: 0.3 and 0.5, mean 0.4; at 0.2: 0.1, 0.3,
    # mean 0.2; s = 0.141421, half-width t(1) · s / √2 = 12.706 · 0.1 = 1.271.
    # Each seed's hull drops (0.2, ·) and (1, ·), which lie below its chords: seed 0 (0,0) (0.5,0.3) (2,0.8),
    # seed 1 (0,0.2) (0.5,0.5) (2,1.0). At 0.2: 0.12 and 0.32, mean 0.22; at 0.5: 0.3 and 0.5, mean 0.4;
    # s = 0.141421 at both, half-width t(1) · s / √2 = 12.706 · 0.1 = 1.271.
    # At 1: seed 0 0.3 + 0.5 · 0.5 / 1.5 = 0.46667, seed 1 0.66667, mean 0.567; at 2: 0.8 and 1.0, mean 0.9.
    dpo = next(line for line in section.splitlines() if line.startswith("| dpo "))
    assert "offline preference" in dpo and "0.220 ± 1.271" in dpo and "0.400 ± 1.271" in dpo
    assert "0.567 ± 1.271" in dpo and "0.900 ± 1.271" in dpo and "‡" not in dpo
    assert "| beta ↓ (0.1, 0.3) |" in dpo  # dpo's declared knob, less KL as it grows, and the values its arms took
    # best_of_n at 0.5, on the segment from its SFT point to (0.636294, gold): seed 0 0.3 · 0.5 / 0.636294 =
    # 0.235741, seed 1 0.2 + 0.3 · 0.5 / 0.636294 = 0.435741: mean 0.336, the same spread as dpo's.
    best = next(line for line in section.splitlines() if line.startswith("| best_of_n †"))
    assert "inference-time" in best and "0.336 ± 1.271" in best and " n ↑ (4) |" in best
    # Past its bound (0.636) its points stop: at 1 and 2 its best reward, 0.3 and 0.5 (mean 0.4), held flat, marked.
    assert best.count("0.400 ± 1.271 ‡") == 2
    assert "† KL is an upper bound" in section and "best_of_n take part in no comparison" in section
    # dpo is the only algorithm with a measured KL: no one can be said to lead.
    assert "**Who leads at matched KL:** fewer than two algorithms with a measured KL" in section
    # The arms are rows of their own in the results; the data line is what dpo's cells declared (both arms alike).
    assert "| dpo@beta=0.1 " in text and "| dpo@beta=0.3 " in text
    assert f"  - `dpo`: {DPO_DATA}\n" in text and text.count("  - `dpo`:") == 1
