"""Post-hoc debias (Zhang et al., arXiv 2403.05262; ``yfzhang114/LLaVA-Align@dfbecfa``): the
calibrated POPE and MME scorers for records decoded with the ``debias`` method.

Each record carries ``meta["debias_top"] = {"naive": {token: p}, "none": {…}, "unk": {…}}``, the
first-step top-10 dictionaries (decoded, lower-cased, stripped tokens → probability) of the
decoded branch and of the two content-free inputs (see
:mod:`vcdflow.decoding.methods.debias`).

Per item ("individual" calibration, ``calibrate_mode = 'individual'``, ``mode = 'diagonal_W'``):

1. p = [p("yes"), p("no")] from a dictionary, 0 for an absent class (``get_prob_from_logits``,
   ``experiments/utils/metrics.py:115-126``: lower-cased key lookup);
2. p̂ = p_naive / Σ p_naive;
3. content-free prior p_cf: ``none`` / ``unk`` → that branch's p, **normalised for POPE**
   (``eval_pope_calibrate.py:133-135``) but **not for MME** (``convert_answer_to_mme_calibrate.py:130-131``);
   ``none_unk`` → (p_unk + p_none) / Σ (both scorers); then p_cf += 1e-4 elementwise
   (POPE ``:136``, MME ``:132``);
4. q = diag(p_cf)⁻¹ · p̂, q /= Σ q, answer = argmax q (ties → "yes", numpy's first index;
   ``eval_pope_calibrate.py:65-75,139-145``).

Modes: ``naive`` (POPE: argmax p̂ — the official POPE script scores ``naive`` from the
probabilities, not the text; MME: the decoded text, ``convert_answer_to_mme_calibrate.py:112-114``),
``none``, ``unk``, ``none_unk``.

**Uncalibrated items**: an item whose naive p = [0, 0] (neither "yes" nor "no" among its top 10),
or whose prior sums to 0 before the 1e-4 (normalising it divides by 0). The official code does
not fail there: 0/0 gives NaN, ``np.argmax([nan, nan])`` is 0, so the item is answered **"yes"**
(``eval_pope_calibrate.py:117,133-145``; MME "Yes", ``convert_answer_to_mme_calibrate.py:136-139``)
— the default here (``uncalibrated="yes"``); ``uncalibrated="text"`` keeps the decoded text
answer, scored by the usual parser, instead. Either way they are counted in ``n_uncalibrated``. A record without ``meta["debias_top"]`` (not decoded with
``debias``) is an error naming the item. Both scorers also return ``yes_ratio_before`` (the
decoded text's yes-ratio, for the yes-ratio shift the debias paper discusses).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from . import mme, pope

MODES = ("naive", "none", "unk", "none_unk")
EPS = 1e-4


def class_probs(top: Mapping[str, float]) -> list[float]:
    """[p("yes"), p("no")] from a first-step top-k dictionary (0 for an absent class)."""
    low = {str(k).lower().strip(): float(v) for k, v in top.items()}
    return [low.get("yes", 0.0), low.get("no", 0.0)]


def _top(rec: Mapping[str, Any], k: int) -> Mapping[str, Mapping[str, float]]:
    top = (rec.get("meta") or {}).get("debias_top")
    if not isinstance(top, Mapping) or not all(b in top for b in ("naive", "none", "unk")):
        raise ValueError(
            f"record {k} ({rec.get('item_id', '?')}): no meta['debias_top'] with naive/none/unk "
            f"(decode it with method 'debias')"
        )
    return top


def calibrate(top: Mapping[str, Mapping[str, float]], mode: str, normalise_single: bool = True) -> str | None:
    """The calibrated answer "yes"/"no" for one item, or None when it cannot be calibrated.
    ``normalise_single``: normalise a single content-free prior (POPE True, MME False)."""
    if mode not in MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; choose one of {', '.join(MODES)}")
    p = class_probs(top["naive"])
    s = p[0] + p[1]
    if s == 0:
        return None
    p_hat = [p[0] / s, p[1] / s]
    if mode == "naive":
        q = p_hat
    else:
        if mode == "none_unk":
            u, n = class_probs(top["unk"]), class_probs(top["none"])
            cf = [u[0] + n[0], u[1] + n[1]]
            norm = True
        else:
            cf = class_probs(top[mode])
            norm = normalise_single
        if norm:
            c = cf[0] + cf[1]
            if c == 0:
                return None
            cf = [cf[0] / c, cf[1] / c]
        cf = [x + EPS for x in cf]
        q = [p_hat[0] / cf[0], p_hat[1] / cf[1]]
        t = q[0] + q[1]
        q = [q[0] / t, q[1] / t]
    return "yes" if q[0] >= q[1] else "no"


UNCALIBRATED = ("yes", "text")


def _calibrated_records(
    records, mode: str, normalise_single: bool, text_naive: bool, word, uncalibrated: str = "yes"
) -> tuple[list, int]:
    if uncalibrated not in UNCALIBRATED:
        raise ValueError(
            f"unknown uncalibrated rule {uncalibrated!r}; choose one of {', '.join(UNCALIBRATED)}"
        )
    out, n_uncal = [], 0
    for k, rec in enumerate(records):
        if rec.get("error"):
            out.append(rec)
            continue
        if text_naive and mode == "naive":
            out.append(rec)
            continue
        ans = calibrate(_top(rec, k), mode, normalise_single)
        if ans is None:
            n_uncal += 1
            out.append(rec if uncalibrated == "text" else {**rec, "answer": word("yes")})
        else:
            out.append({**rec, "answer": word(ans)})
    return out, n_uncal


def pope_calibrated(
    records: Iterable[Mapping[str, Any]],
    mode: str = "none_unk",
    parser: str = "official",
    uncalibrated: str = "yes",
) -> dict[str, float]:
    """POPE scores (:func:`vcdflow.metrics.pope.score`) of the calibrated answers, plus
    ``n_uncalibrated`` and ``yes_ratio_before`` (the decoded text's yes-ratio)."""
    records = list(records)
    cal, n_uncal = _calibrated_records(records, mode, True, False, lambda a: a, uncalibrated)
    out = pope.score(cal, parser)
    out["n_uncalibrated"] = float(n_uncal)
    out["yes_ratio_before"] = pope.score(records, parser)["yes_ratio"]
    return out


def mme_calibrated(
    records: Iterable[Mapping[str, Any]],
    mode: str = "none_unk",
    parser: str = "official",
    uncalibrated: str = "yes",
) -> dict[str, float]:
    """MME scores (:func:`vcdflow.metrics.mme.score`) of the calibrated answers ("Yes"/"No"), plus
    ``n_uncalibrated`` and ``yes_ratio_before``."""
    records = list(records)
    cal, n_uncal = _calibrated_records(records, mode, False, True, lambda a: a.capitalize(), uncalibrated)
    out = mme.score(cal, parser)
    out["n_uncalibrated"] = float(n_uncal)
    rows = mme.score_items(records, parser)
    out["yes_ratio_before"] = 100.0 * sum(r["pred"] == "yes" for r in rows) / len(rows) if rows else math.nan
    return out
