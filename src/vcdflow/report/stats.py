"""Pure statistics for the report: summaries, bootstrap CIs and paired tests.

Every function here takes plain arrays and returns plain numbers; nothing reads files.

Conventions
-----------
* **Ratio-of-sums statistics.** Every per-item metric the report re-derives is a ratio of
  sums over items, ``Σ num_i / Σ den_i`` (a mean when ``den`` is 1): POPE accuracy
  (``num = correct``), yes-ratio, precision, recall, F1 (``2TP / (2TP + FP + FN)`` =
  ``2TP / (#predicted yes + #labelled yes)``), CHAIR_s
  (``num = hallucinated``) and CHAIR_i (``num = hallucinated mentions, den = mentions``, a
  micro average, as in OPERA's ``chair.py``). Bootstrap replicates are therefore computed
  with multinomial resampling *weights* (``w @ num / w @ den``), which is exact and fast.
* **Several seeds.** A 2-D input ``(n_items, n_seeds)`` holds the same items decoded under
  each seed. Items are resampled *jointly* (one index draw shared by all seeds: the item is
  the sampling unit), the statistic is computed per seed and then averaged over seeds —
  the same estimator as the "mean over seeds" printed in the tables.
* **Reproducibility.** Every random function takes ``seed`` and uses
  ``numpy.random.default_rng(seed)``; the same call gives the same numbers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
from scipy.stats import binomtest

__all__ = [
    "mean_std",
    "bootstrap_ci",
    "mcnemar_exact",
    "McNemarResult",
    "paired_bootstrap_p",
    "ratio_of_sums",
]

#: Default number of bootstrap resamples for confidence intervals.
N_BOOT_CI = 2000
#: Default number of bootstrap resamples for paired-bootstrap p-values (resolution 1e-4).
N_BOOT_TEST = 10000
# Replicates drawn per chunk while building the (cached) weight matrix.
_CHUNK = 250


def mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation of per-seed values.

    ``std`` is the sample standard deviation (``ddof=1``, i.e. divided by n−1, as VCD's
    "mean ± std of 5 runs"); it is ``nan`` when there are fewer than ``ddof + 1`` values
    (one seed has no spread). NaN inputs are an error, not silently dropped.
    """
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("mean_std: no values")
    if np.isnan(arr).any():
        raise ValueError("mean_std: values contain NaN")
    mean = float(arr.mean())
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else float("nan")
    return mean, std


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape (n_items,) or (n_items, n_seeds), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: no items")
    if np.isnan(arr).any():
        raise ValueError(f"{name}: contains NaN")
    return arr


def _num_den(values, denom, name: str) -> tuple[np.ndarray, np.ndarray]:
    num = _as_2d(values, name)
    den = np.ones_like(num) if denom is None else _as_2d(denom, f"{name} denominators")
    if den.shape != num.shape:
        raise ValueError(f"{name}: values {num.shape} and denominators {den.shape} differ in shape")
    return num, den


def ratio_of_sums(values, denom=None) -> float:
    """``Σ values / Σ denom`` per seed (column), averaged over seeds; a mean if ``denom`` is None.

    A seed whose denominator sums to 0 contributes ``nan`` (e.g. precision with no "yes").
    """
    num, den = _num_den(values, denom, "ratio_of_sums")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = num.sum(0) / den.sum(0)
    return float(np.mean(per_seed))


def _draw_weights(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """(b, n) resampling counts: row r counts how often each item is drawn in replicate r."""
    idx = rng.integers(0, n, size=(b, n))
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


@functools.lru_cache(maxsize=2)
def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """All ``n_boot`` replicates' counts for ``n`` items under ``seed`` (cached, read-only).

    Every call with the same (n, n_boot, seed) would draw the same numbers anyway, so the
    report draws them once and reuses them for every cell of that size. Memory:
    ``n_boot × n × 8`` bytes per cached matrix (2000 × 3000 POPE items: 48 MB); two are kept.
    """
    rng = np.random.default_rng(seed)
    w = np.concatenate([_draw_weights(rng, min(_CHUNK, n_boot - s), n) for s in range(0, n_boot, _CHUNK)])
    w.setflags(write=False)
    return w


def _replicates(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the seed-averaged ratio of sums (items resampled jointly)."""
    n, k = num.shape
    w = _weights(n, n_boot, seed)
    sums = w @ np.concatenate([num, den], axis=1)  # (n_boot, 2k): Σ num and Σ den per seed
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(sums[:, :k] / sums[:, k:], axis=1)


def bootstrap_ci(
    values,
    n_boot: int = N_BOOT_CI,
    seed: int = 0,
    level: float = 0.95,
    *,
    denom=None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a mean or ratio of sums.

    ``values`` is ``(n,)`` or ``(n_items, n_seeds)``; the statistic is
    :func:`ratio_of_sums` (``Σ values / Σ denom`` per seed, averaged over seeds; the plain
    mean when ``denom`` is None). ``n_boot`` resamples of the ``n`` rows are drawn with
    replacement (``numpy.random.default_rng(seed)``); the interval is the
    ``(1−level)/2`` and ``(1+level)/2`` quantiles of the replicates (Efron & Tibshirani 1993,
    percentile method). Replicates with an undefined ratio (denominator 0) are dropped.

    With a 1-D input of per-seed metric values this is the bootstrap over seeds.
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    num, den = _num_den(values, denom, "bootstrap_ci")
    reps = _replicates(num, den, n_boot, seed)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


class McNemarResult(NamedTuple):
    """Discordant counts and exact two-sided p-value of a paired comparison."""

    a_only: int  #: items A got right and B got wrong
    b_only: int  #: items B got right and A got wrong
    pvalue: float


def _binary(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of 0/1 outcomes, got shape {arr.shape}")
    bad = ~np.isin(arr, (0, 1, True, False))
    if bad.any():
        raise ValueError(
            f"{name}: outcomes must be 0/1; item {int(np.argmax(bad))} is {arr[np.argmax(bad)]!r}"
        )
    return arr.astype(bool)


def mcnemar_exact(a, b) -> McNemarResult:
    """Exact McNemar test of paired binary outcomes (same items, two methods).

    ``a`` and ``b`` are 0/1 correctness per item, aligned. With discordant counts
    ``n_ab`` (a right, b wrong) and ``n_ba`` (b right, a wrong), under H0 (equal accuracy)
    ``n_ab ~ Binomial(n_ab + n_ba, 1/2)``; the p-value is the two-sided exact binomial
    p (``scipy.stats.binomtest``), e.g. ``n_ab = 10, n_ba = 0`` gives ``2·0.5^10``.
    No discordant pairs gives ``p = 1``.
    """
    a_arr, b_arr = _binary(a, "mcnemar_exact a"), _binary(b, "mcnemar_exact b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"mcnemar_exact: a has {a_arr.size} items, b has {b_arr.size}")
    n_ab = int(np.sum(a_arr & ~b_arr))
    n_ba = int(np.sum(~a_arr & b_arr))
    if n_ab + n_ba == 0:
        return McNemarResult(0, 0, 1.0)
    p = binomtest(n_ab, n_ab + n_ba, 0.5, alternative="two-sided").pvalue
    return McNemarResult(n_ab, n_ba, float(min(1.0, p)))


def paired_bootstrap_p(
    a,
    b,
    n_boot: int = N_BOOT_TEST,
    seed: int = 0,
    *,
    denom_a=None,
    denom_b=None,
) -> float:
    """Two-sided paired-bootstrap p-value for ``stat(a) − stat(b)`` on the same items.

    ``stat`` is :func:`ratio_of_sums` (mean by default; e.g. CHAIR_s from per-caption
    ``hallucinated``, CHAIR_i with ``denom = mentions``). Items (rows) are resampled with
    replacement, *the same rows for a and b* (pairing kept; with 2-D inputs also the same
    rows for every seed). With observed difference ``d`` and replicates ``d*``, the null
    distribution is the replicates shifted to mean zero (Efron & Tibshirani 1993, §16.4;
    Koehn 2004 for MT), and

        p = (1 + #{ |d* − d| ≥ |d| }) / (1 + n_boot)

    so ``p`` is never 0 (smallest value ``1/(n_boot+1)``) and is 1 when ``d = 0``.
    """
    if n_boot < 1:
        raise ValueError(f"paired_bootstrap_p: n_boot must be >= 1, got {n_boot}")
    num_a, den_a = _num_den(a, denom_a, "paired_bootstrap_p a")
    num_b, den_b = _num_den(b, denom_b, "paired_bootstrap_p b")
    if num_a.shape != num_b.shape:
        raise ValueError(
            f"paired_bootstrap_p: a {num_a.shape} and b {num_b.shape} are not paired (shapes differ)"
        )
    n = num_a.shape[0]
    d_obs = ratio_of_sums(num_a, den_a) - ratio_of_sums(num_b, den_b)
    if not np.isfinite(d_obs):
        return float("nan")
    w = _weights(n, n_boot, seed)
    sums = w @ np.concatenate([num_a, den_a, num_b, den_b], axis=1)
    k = num_a.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.mean(sums[:, :k] / sums[:, k : 2 * k], axis=1) - np.mean(
            sums[:, 2 * k : 3 * k] / sums[:, 3 * k :], axis=1
        )
    ok = np.isfinite(d)
    # Tolerance guards against float noise making |d*−d| ≥ |d| fail by 1 ulp.
    extreme = int(np.sum(np.abs(d[ok] - d_obs) >= abs(d_obs) - 1e-12))
    total = int(ok.sum())
    return float((1 + extreme) / (1 + total))
