"""Post-hoc debias's calibrated POPE and MME scores as extra metric rows of the same result.

A result decoded with the ``debias`` method carries ``meta["debias_top"]`` on its records (the
first-step top-10 yes/no dictionaries of the decoded, "none" and "unk" branches). For such a
result the POPE and MME registry entries add, beside the usual rows, the calibrated scores of
:mod:`vcdflow.metrics.calibrated` — decided by the records, not by the method's name:

* POPE: ``accuracy_calibrated``, ``precision_calibrated``, ``recall_calibrated``,
  ``f1_calibrated``, ``yes_ratio_calibrated`` (mode ``none_unk``: the prior of both content-free
  inputs), ``n_uncalibrated`` (items with neither "yes" nor "no" among their top 10, or a zero
  prior: they keep their decoded text answer, counted here), and the same with suffix
  ``_naive`` / ``_none`` / ``_unk`` for the other calibration modes; ``yes_ratio_before``.
* MME: ``hallucination_calibrated``, ``perception_calibrated``, ``cognition_calibrated`` (when
  complete), ``n_uncalibrated`` for ``none_unk`` and the ``_none`` / ``_unk`` modes (MME's
  ``naive`` is the decoded text, i.e. the uncalibrated score); ``yes_ratio_before``.

Records without ``debias_top`` (every other method) add nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .base import Benchmark

DEFAULT_MODE = "none_unk"
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
MME_METRICS = ("hallucination", "perception", "cognition")


def has_debias_top(records) -> bool:
    """True when every non-error record carries ``meta["debias_top"]`` (and there is one)."""
    ok = [r for r in records if not r.get("error")]
    return bool(ok) and all(isinstance((r.get("meta") or {}).get("debias_top"), Mapping) for r in ok)


def _suffix(mode: str) -> str:
    return "" if mode == DEFAULT_MODE else f"_{mode}"


def pope_rows(bench: Mapping[str, Any], records) -> dict[str, float]:
    from ..metrics.calibrated import MODES, pope_calibrated

    parser = bench.get("parser") or "official"
    out: dict[str, float] = {}
    for mode in (DEFAULT_MODE, *[m for m in MODES if m != DEFAULT_MODE]):
        s = pope_calibrated(records, mode, parser)
        out.update({f"{m}_calibrated{_suffix(mode)}": s[m] for m in POPE_METRICS})
        out[f"n_uncalibrated{_suffix(mode)}"] = s["n_uncalibrated"]
        out["yes_ratio_before"] = s["yes_ratio_before"]
    return out


def mme_rows(bench: Mapping[str, Any], records) -> dict[str, float]:
    from ..metrics.calibrated import mme_calibrated

    parser = bench.get("parser") or "official"
    out: dict[str, float] = {}
    for mode in (DEFAULT_MODE, "none", "unk"):
        s = mme_calibrated(records, mode, parser)
        out.update({f"{m}_calibrated{_suffix(mode)}": s[m] for m in MME_METRICS if m in s})
        out[f"n_uncalibrated{_suffix(mode)}"] = s["n_uncalibrated"]
        out["yes_ratio_before"] = s["yes_ratio_before"]
    return out


def with_calibration(benchmark: Benchmark, rows) -> Benchmark:
    """``benchmark`` whose ``score`` also returns ``rows(bench, records)`` for debias results."""
    base = benchmark.score

    def score(bench, records):
        scores, per_item = base(bench, records)
        if has_debias_top(records):
            scores = {**scores, **rows(bench, records)}
        return scores, per_item

    return replace(benchmark, score=score)
