"""Statistics of the report against hand-computed values and independent approximations."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from vcdflow.report.stats import (
    bootstrap_ci,
    mcnemar_exact,
    mean_std,
    paired_bootstrap_p,
    ratio_of_sums,
)


def test_mean_std_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # Σ(x−2.5)² = 5, divided by n−1 = 3
    assert std == pytest.approx(statistics.stdev([1, 2, 3, 4]))


def test_mean_std_one_value_has_no_std():
    mean, std = mean_std([87.1])
    assert mean == 87.1 and math.isnan(std)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")]])
def test_mean_std_rejects_empty_and_nan(bad):
    with pytest.raises(ValueError):
        mean_std(bad)


def test_mcnemar_known_answers():
    # 10 items only A got right, none only B: p = 2 · 0.5^10.
    a = [1] * 10 + [1, 0] * 20
    b = [0] * 10 + [1, 0] * 20
    res = mcnemar_exact(a, b)
    assert (res.a_only, res.b_only) == (10, 0)
    assert res.pvalue == pytest.approx(2 * 0.5**10, rel=1e-12)
    # 7 vs 2 discordant: p = 2 · Σ_{k≤2} C(9,k) / 2^9 = 92/512.
    a = [1] * 7 + [0] * 2 + [1] * 5
    b = [0] * 7 + [1] * 2 + [1] * 5
    res = mcnemar_exact(a, b)
    expected = 2 * sum(math.comb(9, k) for k in range(3)) / 2**9
    assert (res.a_only, res.b_only) == (7, 2)
    assert res.pvalue == pytest.approx(expected, rel=1e-12)
    # symmetric: swapping arguments swaps counts, same p
    swapped = mcnemar_exact(b, a)
    assert (swapped.a_only, swapped.b_only, swapped.pvalue) == (2, 7, pytest.approx(expected))


def test_mcnemar_no_discordant_pairs_is_p1():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).pvalue == 1.0
    assert mcnemar_exact([1, 1, 0, 0], [0, 1, 1, 0]).pvalue == 1.0  # 1 vs 1


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([1, 2], [1, 0])
    with pytest.raises(ValueError, match="items"):
        mcnemar_exact([1, 0, 1], [1, 0])


def test_bootstrap_ci_matches_normal_approximation_for_a_proportion():
    rng = np.random.default_rng(1)
    x = (rng.random(3000) < 0.3).astype(float)
    p = x.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / x.size)
    lo, hi = bootstrap_ci(x, n_boot=3000, seed=0)
    assert lo == pytest.approx(p - half, abs=0.003)
    assert hi == pytest.approx(p + half, abs=0.003)


def test_bootstrap_ci_is_seeded_and_level_controls_width():
    x = np.arange(50, dtype=float)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    lo90, hi90 = bootstrap_ci(x, seed=3, level=0.9)
    lo95, hi95 = bootstrap_ci(x, seed=3, level=0.95)
    assert lo95 <= lo90 < hi90 <= hi95


def test_bootstrap_ci_over_three_seed_values_is_min_max():
    # Resampling 3 values: P(all three = min) = 1/27 > 2.5%, so the percentile CI is [min, max].
    assert bootstrap_ci([539.0, 541.5, 544.2], n_boot=2000, seed=0) == (539.0, 544.2)


def test_bootstrap_ci_ratio_of_sums_against_a_plain_loop():
    """Weights-based replicates equal an index-based bootstrap of Σnum/Σden (same draws)."""
    rng = np.random.default_rng(5)
    num = rng.integers(0, 3, 60).astype(float)
    den = np.full(60, 3.0)
    lo, hi = bootstrap_ci(num, n_boot=3000, seed=0, denom=den)
    r = random.Random(11)
    reps = []
    for _ in range(3000):
        idx = [r.randrange(60) for _ in range(60)]
        reps.append(sum(num[i] for i in idx) / sum(den[i] for i in idx))
    reps.sort()
    assert lo == pytest.approx(reps[int(0.025 * 3000)], abs=0.02)
    assert hi == pytest.approx(reps[int(0.975 * 3000)], abs=0.02)


def test_ratio_of_sums_averages_over_seed_columns():
    num = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], dtype=float)
    assert ratio_of_sums(num) == pytest.approx((0.75 + 0.75) / 2)
    den = np.array([[2, 1], [2, 1], [2, 1], [2, 1]], dtype=float)
    assert ratio_of_sums(num, den) == pytest.approx((3 / 8 + 3 / 4) / 2)


def test_paired_bootstrap_identical_is_one_and_huge_effect_is_minimum():
    x = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=float)
    assert paired_bootstrap_p(x, x.copy(), n_boot=500, seed=0) == 1.0
    a = np.ones(200)
    b = np.zeros(200)
    b[:5] = 1
    assert paired_bootstrap_p(a, b, n_boot=999, seed=0) == pytest.approx(1 / 1000)


def test_paired_bootstrap_matches_paired_z_test_for_large_n():
    rng = np.random.default_rng(7)
    n = 2000
    a = (rng.random(n) < 0.30).astype(float)
    b = np.where(rng.random(n) < 0.8, a, (rng.random(n) < 0.27).astype(float))
    d = a - b
    # The bootstrap counts ties |d*−d| = |d| as extreme, so compare with the z-test with a
    # continuity correction of half a lattice step (1/2n).
    z = (abs(d.mean()) - 1 / (2 * n)) / (d.std(ddof=1) / math.sqrt(n))
    p_z = math.erfc(z / math.sqrt(2))
    p = paired_bootstrap_p(a, b, n_boot=10000, seed=1)
    assert 0.05 < p_z < 0.6  # the case is informative (neither 0 nor 1)
    assert p == pytest.approx(p_z, abs=0.012)


def test_paired_bootstrap_rejects_unpaired_shapes():
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap_p(np.zeros(5), np.zeros(6))


def test_a_beam_run_is_never_the_greedy_baseline():
    """Under a paper protocol the keys are label@protocol: the label named like the mode wins,
    and a beam-search run of the greedy engine method (beam5) is a row of its own."""
    from vcdflow.report.analysis import Analysis, baselines

    runs = {
        "beam5@opera": {
            "method": "greedy",
            "mode": "greedy",
            "params": {},
            "protocol": "opera",
            "label": "beam5",
            "search": {
                "num_beams": 5,
                "length_penalty": 1.0,
                "early_stopping": False,
                "length_norm": "total",
            },
        },
        "greedy@opera": {
            "method": "greedy",
            "mode": "greedy",
            "params": {},
            "protocol": "opera",
            "label": "greedy",
            "search": None,
        },
        "opera@opera": {
            "method": "opera",
            "mode": "greedy",
            "params": {},
            "protocol": "opera",
            "label": "opera",
        },
        "beam5": {
            "method": "greedy",
            "mode": "greedy",
            "params": {},
            "protocol": "unified",
            "label": "beam5",
            "search": {"num_beams": 5},
        },
        "greedy": {
            "method": "greedy",
            "mode": "greedy",
            "params": {},
            "protocol": "unified",
            "label": "greedy",
        },
    }
    base = baselines(runs)
    assert base[("opera", "greedy")] == "greedy@opera"
    assert base[("unified", "greedy")] == base["greedy"] == "greedy"
    # only a beam run of the engine's greedy: no greedy baseline under that protocol
    assert ("opera", "greedy") not in baselines({k: v for k, v in runs.items() if k != "greedy@opera"})
    rows = Analysis.row_groups(type("A", (), {"runs": runs})(), list(runs))
    names = {(r["name"], r["protocol"]) for r in rows}
    assert ("greedy (5 beams)", "opera") in names and ("baseline", "opera") in names
    assert [r["labels"] for r in rows if r["name"] == "baseline" and r["protocol"] == "opera"] == [
        {"greedy": "greedy@opera"}
    ]
