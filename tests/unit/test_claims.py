"""Paired comparisons and the sentences built on them (harness.report.claims, harness.report.stats), against
values worked out by hand, and the report's verdicts from a real MLflow store where a claim must be made and
where it must not.

Oracles: for 2 degrees of freedom the t distribution's tail has the closed form P(|T| > t) = 1 - t / sqrt(2 + t²);
Holm's adjusted p-values are multiplied out below; the seeds-needed estimate is checked against a simulation of
the paired t-test it claims to size.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness import record
from harness.report import claims
from harness.report.stats import holm, paired_difference, seeds_needed, t_quantile


def test_paired_difference_by_hand():
    # Differences 0.1, 0.2, 0.15: mean 0.15, sd 0.05, half-width t(2) · 0.05 / √3 = 4.303 · 0.028868 = 0.124218.
    # t = 0.15 / 0.028868 = 5.19615 (t² = 27): p = 1 - 5.19615 / √29 = 0.035099.
    difference = paired_difference([0.1, 0.2, 0.15])
    assert difference.mean == pytest.approx(0.15) and difference.sd == pytest.approx(0.05)
    assert (difference.high - difference.low) / 2 == pytest.approx(t_quantile(2) * 0.05 / math.sqrt(3))
    assert difference.p_value == pytest.approx(1 - math.sqrt(27) / math.sqrt(29), rel=1e-6)
    # Against a constant (a win rate against 1/2): the same test on value - 1/2.
    win_rates = paired_difference([0.6, 0.7, 0.65], null=0.5)
    assert win_rates.p_value == pytest.approx(difference.p_value, rel=1e-9)
    # One seed: the mean, no interval, no test.
    one = paired_difference([0.3, math.nan])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.p_value)


def test_holm_by_hand():
    # m = 3 tested (the NaN is no test): sorted 0.01, 0.03, 0.04 -> 3 · 0.01 = 0.03, 2 · 0.03 = 0.06,
    # 1 · 0.04 = 0.04 raised to the running maximum 0.06; a large one caps at 1.
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def _simulated_power(effect: float, n: int, alpha: float, trials: int = 20000) -> float:
    rng = np.random.default_rng(7)
    draws = rng.normal(effect, 1.0, size=(trials, n))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / math.sqrt(n))
    from scipy import stats

    return float((np.abs(t) > stats.t.isf(alpha / 2, n - 1)).mean())


@pytest.mark.parametrize(("effect", "alpha"), [(0.8, 0.05), (1.5, 0.05 / 40)])
def test_seeds_needed_is_the_smallest_count_whose_simulated_power_reaches_the_target(effect, alpha):
    n = int(seeds_needed(effect, 1.0, alpha, power=0.8))
    # The normal approximation ((z_{alpha/2} + z_{0.8}) / d)² ignores the t's heavier tails: a lower bound.
    from scipy import stats

    normal = ((stats.norm.isf(alpha / 2) + stats.norm.isf(0.2)) / effect) ** 2
    assert normal <= n
    assert _simulated_power(effect, n, alpha) >= 0.8 - 0.015
    assert _simulated_power(effect, n - 1, alpha) < 0.8 + 0.015
    assert math.isinf(seeds_needed(0.0, 1.0, 0.05)) and math.isnan(seeds_needed(0.1, math.nan, 0.05))


def test_leader_only_when_every_paired_difference_is_real():
    seeds = pd.Index([0, 1, 2, 3], name="seed")
    base = np.array([0.0, 0.5, 1.0, 1.5])  # large seed effects, shared by every algorithm of a seed
    values = pd.DataFrame(
        {
            "x": base + 1.0 + np.array([0.01, -0.01, 0.02, -0.02]),
            "y": base + 0.5 + np.array([0.02, 0.0, -0.02, 0.0]),
            "z": base + 0.9 + np.array([0.3, -0.3, 0.2, -0.2]),
        },
        index=seeds,
    )
    book = claims.ClaimBook()
    claims.every_pair(book, claims.HEADLINE, "gold_reward", values, higher_is_better=True)
    book.settle()
    means = values.mean().to_dict()
    # x − y: 0.5 ± tiny; x − z: 0.1 with spread 0.27: not real. So x cannot be said to lead: z is level with it.
    by_pair = {(c.first, c.second): c for c in book.comparisons}
    assert by_pair[("x", "y")].winner == "x"
    assert not by_pair[("x", "z")].real and by_pair[("x", "z")].seeds_needed > 4
    assert claims.leader(book.comparisons, ["x", "y", "z"], means) == (None, ["x", "z"])
    # Without z, x leads.
    assert claims.leader([c for c in book.comparisons if "z" not in (c.first, c.second)], ["x", "y"], means) == (
        "x",
        [],
    )


def test_holm_over_many_comparisons_withholds_a_claim_one_test_alone_would_make():
    # p = 0.035 alone is below 0.05; among 3 tests with two at p ~ 1 it is still the smallest: 3 · 0.035 > 0.05.
    book = claims.ClaimBook()
    for differences in ([0.1, 0.2, 0.15], [0.1, -0.1, 0.0], [0.2, -0.2, 0.01]):
        book.add(
            claims.compare_with_constant(claims.WIN_RATE, "win_rate_vs_sft", np.array(differences) + 0.5, "a", 0.5)
        )
    book.settle()
    first = book.comparisons[0]
    assert first.difference.p_value < 0.05 and not first.real
    assert first.holm_p == pytest.approx(3 * first.difference.p_value)


# --- the report's sentences, from a real MLflow store -------------------------------------------------

SUITE = "claims"
BASE_TIME_MS = 1_793_613_600_000
SEED_EFFECT = [0.0, 0.5, 1.0, 1.5]
NOISE = [0.01, -0.01, 0.02, -0.02]


def _store(tmp_path, dpo_offset: float, dpo_noise: list[float]) -> str:
    """sft, ppo (sft + 1), dpo (sft + dpo_offset + noise) and a best-of-n far above all, whose KL is only a bound,
    on four seeds that share large seed effects; every cell at KL 1 (SFT at 0)."""
    import mlflow
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(record.experiment_name(SUITE), artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(
        experiment_id, start_time=BASE_TIME_MS, tags={record.TAG_KIND: record.KIND_INVOCATION, record.TAG_SUITE: SUITE}
    ).info.run_id
    gold = {
        "sft": [effect for effect in SEED_EFFECT],
        "ppo": [effect + 1.0 + noise for effect, noise in zip(SEED_EFFECT, NOISE)],
        "dpo": [effect + dpo_offset + noise for effect, noise in zip(SEED_EFFECT, dpo_noise)],
        "best_of_n@n=4": [effect + 5.0 for effect in SEED_EFFECT],
    }
    win_rate = {"ppo": [0.9, 0.92, 0.88, 0.9], "dpo": [0.55, 0.45, 0.6, 0.4], "best_of_n@n=4": [0.8, 0.8, 0.8, 0.8]}
    families = {
        "ppo": record.FAMILY_ACTOR_CRITIC,
        "dpo": record.FAMILY_OFFLINE_PREFERENCE,
        "best_of_n": record.FAMILY_INFERENCE_TIME,
    }
    minute = 0
    for arm, values in gold.items():
        name = record.algorithm_of(arm)
        for seed, value in enumerate(values):
            minute += 1
            tags = {
                record.PARENT_RUN_TAG: parent,
                record.TAG_KIND: record.KIND_CELL,
                record.TAG_SUITE: SUITE,
                record.TAG_ARM: arm,
                record.TAG_ALGORITHM: name,
                record.TAG_SWEEP_POINT: record.sweep_point_of(arm),
                record.TAG_SEED: str(seed),
                record.TAG_CELL: f"{arm}-s{seed}",
                record.TAG_CELL_HASH: f"{arm}-s{seed}",
                record.TAG_STATUS: record.STATUS_COMPLETE,
            }
            if name != record.BASELINE:
                tags[record.TAG_FAMILY] = families[name]
            if name == "best_of_n":
                tags[record.TAG_KL_IS_BOUND] = "true"
            start = BASE_TIME_MS + minute * 60_000
            run_id = client.create_run(
                experiment_id, start_time=start, tags=tags, run_name=f"{arm}-s{seed}"
            ).info.run_id
            metrics = {"gold_reward": value, "kl": 0.0 if name == record.BASELINE else 1.0}
            if arm in win_rate:
                metrics["win_rate_vs_sft"] = win_rate[arm][seed]
            client.log_batch(run_id, metrics=[Metric(f"eval/{key}", v, start, 1) for key, v in metrics.items()])
            client.set_terminated(run_id, "FINISHED", end_time=start + 30_000)
    client.set_terminated(parent, "FINISHED", end_time=BASE_TIME_MS + 3_600_000)
    return uri


def _report(tmp_path, dpo_offset, dpo_noise) -> str:
    from harness.report.markdown import write_report

    uri = _store(tmp_path, dpo_offset, dpo_noise)
    return write_report(uri, SUITE, tmp_path / "reports").read_text(encoding="utf-8")


def _row(text: str, first: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {first} "))


def test_report_says_no_clear_winner_where_a_rival_is_level_and_never_counts_a_bound(tmp_path):
    # dpo = sft + 0.9 + noise of spread 0.27: ppo − dpo = 0.1 ± 0.4, not real; best-of-n's mean is far above
    # both but its KL is only a bound, so it takes part in no matched-KL comparison.
    text = _report(tmp_path, 0.9, [0.3, -0.3, 0.2, -0.2])
    assert "On gold_reward: no clear winner among best_of_n@n=4, ppo, dpo" not in text  # it is best_of_n's lead
    # On the headline metric best-of-n's final gold is measured (not its KL): its lead there is real.
    assert "On gold_reward: **best_of_n@n=4 leads**" in text
    assert "- At KL 1: no clear winner among ppo, dpo" in text
    matched = text[text.index("**Who leads at matched KL**") :]
    assert "best_of_n" not in matched.split("<details>")[0]
    # ppo − sft is real although their unpaired intervals overlap (the seed effects dominate each mean).
    assert "real: ppo better" in _row(text, "ppo − sft")
    assert "not real" in _row(text, "ppo − dpo")
    # The win rates: ppo's is real against 1/2, dpo's is not, and the seeds it would need are estimated.
    win_rates = text[text.index("## Win rate against sft") :]
    assert "beats sft" in _row(win_rates, "ppo")
    assert "inside the noise (seeds needed" in _row(win_rates, "dpo")


def test_report_names_the_leader_when_every_paired_difference_is_real(tmp_path):
    text = _report(tmp_path, 0.5, [0.02, 0.0, -0.02, 0.0])
    assert "- At KL 1: **ppo leads**: its paired difference to each of the other 1 is real." in text
    assert "real: ppo better" in _row(text, "ppo − dpo")
