"""HallusionBench (Guan et al., CVPR 2024): yes/no questions on figures and their edited
versions, scored per question (aAcc), per figure (fAcc) and per question pair (qAcc).

Data (``tianyi-lab/HallusionBench``): ``HallusionBench.json`` (1129 questions; keys
``category`` VD|VS, ``subcategory``, ``visual_input`` "0" (no image) | "1" (original) | "2"
(edited), ``set_id``, ``figure_id``, ``question_id``, ``question``, ``gt_answer`` "0"/"1",
``gt_answer_details``, ``filename`` ``./VD/<sub>/<set>_<fig>.png`` or null) and the image folder
``hallusion_bench/`` it is relative to (``utils.py:18-22``). Items with ``visual_input`` "0"
have ``image_path=None`` (a text-only question).

Correctness per question, two sources (``correctness=``):

* ``"yesno"`` (rule-based, needs no judge): lmms-eval's ``hb_aggregation_result_intern``
  (lmms-eval 0.7.3 ``lmms_eval/tasks/hallusion_bench/evaluate_hb.py:93-98``): the answer is
  "1" when ``"yes"`` occurs in ``prediction.lower()``, else "0"; correct ("1") when it equals
  ``gt_answer``, else "0".
* ``"gpt"`` (the official ``evaluate_by_chatgpt``, ``tianyi-lab/HallusionBench utils.py:26-73``):
  the judge gets the teacher prompt (utils.py:33-40) as one user message, default model
  ``gpt-4`` (utils.py:26), no temperature set; the reply maps to "0" if it contains
  ``incorrect``, else "1" if it contains ``correct``, else "2" (unclear) (utils.py:58-64).

Then, exactly as the official code: ``assign_correctness`` (utils.py:404-411: a VS question
with ``figure_id`` "0" is right when "1" **or** "2", every other question only when "1");
``aAcc`` = % of questions right (``get_eval_all``, utils.py:165-203; evaluation.py:78);
``fAcc`` = % of figures whose questions are all right, VS figure 0 (no image) left out
(``get_eval_fig``, utils.py:130-163; evaluation.py:112); ``qAcc`` = % of question groups
``category_subcategory_set_id_question_id`` (the same question over the original and edited
figures) all right (``get_eval_pair_all``, utils.py:205-338; evaluation.py:111);
``easy_aAcc`` / ``hard_aAcc`` are the leaderboard's "Acc per easy/hard question" columns, which
the official code computes **per question group** over ``visual_input != "2"`` / ``== "2"``
(``get_eval_pair_easy``/``_hard``, utils.py:340-402; evaluation.py:113-114). ``vd_*`` / ``vs_*``
repeat aAcc/fAcc/qAcc per category (evaluation.py:66-93). The official prints these rounded to 4
decimals; here they are not rounded. The LH/VI/Mixed failure analysis (which needs a second GPT
"same answer" check) is not computed.

Records with ``error`` set count in ``n_errors``; they are left out of aAcc, and the figure and
question group they belong to are left out of fAcc and qAcc.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .judge import Judge, judge_rows, single_judge, join_records

__all__ = [
    "GPT_MODEL_OFFICIAL",
    "load_items",
    "gpt_prompt",
    "gpt_correctness",
    "yesno_correctness",
    "judge_items",
    "score_items",
    "score",
]

GPT_MODEL_OFFICIAL = "gpt-4"  # utils.py:26
_KEYS = (
    "category",
    "subcategory",
    "visual_input",
    "set_id",
    "figure_id",
    "question_id",
    "question",
    "gt_answer",
    "gt_answer_details",
)


def load_items(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    prefix: str = "hallusionbench/",
    check_images: bool = False,
) -> list[dict]:
    """Items in file order. ``item_id`` is ``hallusionbench/<cat>_<sub>_<set>_<fig>_<q>``;
    ``label`` is ``gt_answer`` ("0"/"1"); the official fields are kept (as strings)."""
    path = Path(json_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"hallusionbench: {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions")
    root = Path(image_root) if image_root is not None else path.parent
    items, seen = [], set()
    for i, d in enumerate(data):
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise ValueError(f"{path}[{i}]: missing key(s) {missing}")
        rec = {k: str(d[k]) for k in _KEYS}
        if rec["category"] not in ("VD", "VS"):
            raise ValueError(f"{path}[{i}]: category must be VD or VS, got {rec['category']!r}")
        if rec["gt_answer"] not in ("0", "1"):
            raise ValueError(f"{path}[{i}]: gt_answer must be '0' or '1', got {rec['gt_answer']!r}")
        key = "_".join(rec[k] for k in ("category", "subcategory", "set_id", "figure_id", "question_id"))
        if key in seen:  # the official get_eval_all asserts the same (utils.py:175)
            raise ValueError(f"{path}[{i}]: duplicate question {key}")
        seen.add(key)
        fn = d.get("filename")
        img = None
        if rec["visual_input"] != "0":
            if not fn:
                raise ValueError(f"{path}[{i}]: visual_input {rec['visual_input']} but no filename")
            img = root / fn
            if check_images and not img.is_file():
                raise FileNotFoundError(f"{path}[{i}]: image {img} missing")
        items.append(
            {
                "item_id": f"{prefix}{key}",
                "image": fn,
                "image_path": str(img) if img is not None else None,
                "image_id": "_".join(rec[k] for k in ("category", "subcategory", "set_id", "figure_id")),
                "label": rec["gt_answer"],
                **rec,
            }
        )
    return items


def gpt_prompt(question: str, gt_answer_details: str, prediction: str) -> str:
    """The official correctness prompt (``tianyi-lab/HallusionBench utils.py:33-40``)."""
    prompt = (
        "Imagine you are an intelligent teacher. Thoroughly read the question, reference answer and the "
        "prediction answer to ensure a clear understanding of the information provided. Assess the "
        "correctness of the predictions. "
    )
    prompt += (
        "If the prediction answer does not conflict with the reference answer, please generate “correct”. "
        "If the prediction answer conflict with the reference answer, please generate “incorrect”. If the "
        'prediction answer is unclear about the answer, please generate "unclear". \n\n Question:'
    )
    return (
        prompt
        + question
        + "\nReference answer: "
        + gt_answer_details
        + "\nPrediction answer:"
        + prediction
        + "\nOutput:"
    )


def gpt_correctness(reply: str) -> str:
    """utils.py:58-64: "0" (incorrect), "1" (correct) or "2" (unclear)."""
    t = reply.lower()
    if "incorrect" in t:
        return "0"
    if "correct" in t:
        return "1"
    return "2"


def yesno_correctness(prediction: str, gt_answer: str) -> str:
    """lmms-eval evaluate_hb.py:96-97: "1" if the yes/no answer (``"yes" in lower()``) equals gt."""
    ans = "1" if (prediction or "").lower().find("yes") != -1 else "0"
    return "1" if ans == str(gt_answer) else "0"


def _join(records, items):
    return join_records(records, items, bench="hallusionbench", title="a HallusionBench", required=_KEYS)


def judge_items(records, items, judge: Judge | Mapping[str, Any], *, workers: int = 1) -> list[dict]:
    """Ask ``judge`` the official correctness question for every non-error record (one user
    message, no temperature set, as the official); adds ``judge_reply`` and ``judge`` (label) to
    each, for ``score(..., correctness="gpt")``."""

    def build(row):
        return [
            {
                "role": "user",
                "content": gpt_prompt(row["question"], row["gt_answer_details"], row.get("answer") or ""),
            }
        ]

    return judge_rows(_join(records, items), judge, build, workers=workers)


def score_items(
    records: Iterable[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] | None = None,
    correctness: str = "yesno",
) -> list[dict]:
    """Per-question rows (error records included with ``error`` set and ``correct`` None):
    ``item_id, category, subcategory, set_id, figure_id, question_id, visual_input, correctness
    ("0"/"1"/"2"), correct (0/1 after assign_correctness), error``."""
    if correctness not in ("yesno", "gpt"):
        raise ValueError(f"hallusionbench: correctness must be 'yesno' or 'gpt', got {correctness!r}")
    rows = []
    for it in _join(records, items):
        base = {
            k: it[k]
            for k in (
                "item_id",
                "category",
                "subcategory",
                "set_id",
                "figure_id",
                "question_id",
                "visual_input",
            )
        }
        if it.get("error"):
            rows.append({**base, "correctness": None, "correct": None, "error": it["error"]})
            continue
        if correctness == "yesno":
            c = yesno_correctness(it.get("answer") or "", it["gt_answer"])
        else:
            if "judge_reply" not in it:
                raise KeyError(
                    f"hallusionbench: record {it['item_id']!r} has no judge_reply (run judge_items first)"
                )
            c = gpt_correctness(it["judge_reply"])
        # assign_correctness, utils.py:404-411
        if it["category"] == "VS" and int(it["figure_id"]) == 0:
            ok = 1 if int(c) in (1, 2) else 0
        else:
            ok = 1 if int(c) == 1 else 0
        row = {**base, "correctness": c, "correct": ok, "error": None}
        if correctness == "gpt":
            row["judge"] = it.get("judge")
        rows.append(row)
    return rows


def _group_acc(rows, key, keep=lambda r: True) -> tuple[float, int]:
    groups: dict[str, list] = {}
    for r in rows:
        if keep(r):
            groups.setdefault(key(r), []).append(r["correct"])
    scored = [v for v in groups.values() if None not in v]  # a group with an error row is left out
    if not scored:
        return math.nan, 0
    return 100.0 * sum(1 for v in scored if all(v)) / len(scored), len(scored)


def _fig_key(r):
    return "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["figure_id"])])


def _q_key(r):
    return "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["question_id"])])


def _metrics(rows) -> dict[str, float]:
    ok = [r for r in rows if r["correct"] is not None]
    a = 100.0 * sum(r["correct"] for r in ok) / len(ok) if ok else math.nan
    f, _ = _group_acc(
        rows, _fig_key, keep=lambda r: not (r["category"] == "VS" and str(r["figure_id"]) == "0")
    )
    q, _ = _group_acc(rows, _q_key)
    return {"aAcc": a, "fAcc": f, "qAcc": q}


def score(
    records: Iterable[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] | None = None,
    correctness: str = "yesno",
) -> dict[str, float]:
    """``aAcc, fAcc, qAcc, easy_aAcc, hard_aAcc`` (percent), ``vd_aAcc, vd_fAcc, vd_qAcc,
    vs_aAcc, vs_fAcc, vs_qAcc``, ``n`` (questions scored), ``n_figures``, ``n_pairs``,
    ``n_errors``."""
    rows = score_items(records, items, correctness)
    if correctness == "gpt" and any(r["correct"] is not None for r in rows):
        single_judge([r for r in rows if r["correct"] is not None], "hallusionbench")
    out = _metrics(rows)
    out["easy_aAcc"], _ = _group_acc(rows, _q_key, keep=lambda r: str(r["visual_input"]) != "2")
    out["hard_aAcc"], _ = _group_acc(rows, _q_key, keep=lambda r: str(r["visual_input"]) == "2")
    for cat in ("VD", "VS"):
        for k, v in _metrics([r for r in rows if r["category"] == cat]).items():
            out[f"{cat.lower()}_{k}"] = v
    _, n_fig = _group_acc(
        rows, _fig_key, keep=lambda r: not (r["category"] == "VS" and str(r["figure_id"]) == "0")
    )
    _, n_pairs = _group_acc(rows, _q_key)
    out["n"] = float(sum(1 for r in rows if r["correct"] is not None))
    out["n_figures"] = float(n_fig)
    out["n_pairs"] = float(n_pairs)
    out["n_errors"] = float(sum(1 for r in rows if r["error"]))
    return out
