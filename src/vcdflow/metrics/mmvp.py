"""MMVP (Tong et al., CVPR 2024, "Eyes Wide Shut?"): 150 CLIP-blind image pairs, 300 two-option
questions; a pair counts only when **both** of its questions are answered right.

Data (``MMVP/MMVP`` on the HF hub, the files ``tsb0601/MMVP scripts/evaluate_mllm.py`` reads):
``Questions.csv`` (columns ``Index, Question, Options, Correct Answer``; ``Options`` like
``"(a) Open (b) Closed"``, ``Correct Answer`` ``"(a)"``/``"(b)"``) and ``MMVP Images/<Index>.jpg``
(evaluate_mllm.py:66-67; the script spells the folder ``MMVP Imgaes``, both spellings are
accepted). Rows ``2k-1, 2k`` (1-based ``Index``) are one pair.

Prompt (official, evaluate_mllm.py:56): ``question = Question + " " + Options``; items also carry
``question_lmms``, lmms-eval's form (``lmms_eval/tasks/mmvp/utils.py:93-123`` +
``mmvp.yaml:26``): ``Question\\nA. <opt 1>\\nB. <opt 2>\\nAnswer with the option's letter from
the given choices directly.``

Ground-truth fixes (``fixes="lmms"``, the default): lmms-eval's ``lmms-lab-eval/MMVP`` dataset
swaps two pairs whose answers were wrong in the original release — Index 99 (a)->(b) and 100
(b)->(a) (elephant tusks short/long), Index 279 (a)->(b) and 280 (b)->(a) (elderly person
sitting/standing) — per EvolvingLMMs-Lab/lmms-eval issue #1018 and tsb0601/MMVP issue #30
(lmms-eval 0.7.3 ``lmms_eval/tasks/mmvp/utils.py:11-23``, ``mmvp/README.md`` table). Each item
records ``label_original`` and ``label_fixed``; the loader checks that the rows it changes hold
the expected original answer (else it refuses, naming the row), so a corrected copy is never
flipped twice. ``fixes=None`` keeps the file's answers.

Scoring, two parsers:

* ``parser="lmms"`` (rule-based, lmms-eval 0.7.3 ``mmvp/utils.py``): the predicted letter is
  ``_extract_answer_letter`` (utils.py:32-67: the first of five regexes that matches, else the
  first character if A/B, else none); the target is ``(a)``/``(b)`` -> ``A``/``B``
  (utils.py:126-133); ``pair_index = (Index-1) // 2`` (utils.py:161-170); a pair is scored only
  when both its questions are present and counts when both are correct (utils.py:209-256).
  ``accuracy`` = share of questions right (utils.py:187-206).
* ``parser="gpt"`` (the paper's grader, ``tsb0601/MMVP scripts/gpt_grader.py``): a judge model
  gets the system text (gpt_grader.py:26) and the user text ``"Given the following question
  {question}, the correct answer is {answer}. Does the following answer correctly answers the
  question, answer:{response}?"`` (gpt_grader.py:56) at temperature 0.2 (gpt_grader.py:31); a
  question is right only when the whole reply matches ``^(yes|no)$`` (case-insensitive) and is
  "yes" (gpt_grader.py:41-46, 61); consecutive rows form pairs (gpt_grader.py:59-69), i.e. the
  same ``(Index-1)//2`` pairs for a file in order. The official model is ``gpt-4-0314``
  (gpt_grader.py:23); the judge used is recorded in every row (``judge``).

Records with ``error`` set are counted in ``n_errors`` and their pair is left out of
``pair_accuracy`` (like MME's acc+); ``accuracy`` is over the non-error questions.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .judge import Judge, judge_rows, single_judge, join_records

__all__ = [
    "GT_FIXES",
    "GT_FIXES_SOURCE",
    "POST_PROMPT_LMMS",
    "GPT_SYSTEM",
    "GPT_MODEL_OFFICIAL",
    "GPT_TEMPERATURE",
    "load_items",
    "extract_letter",
    "target_letter",
    "gpt_user_prompt",
    "gpt_grade",
    "judge_items",
    "score_items",
    "score",
]

#: lmms-eval's ground-truth corrections: 1-based Index -> (original answer, fixed answer).
GT_FIXES: dict[int, tuple[str, str]] = {
    99: ("(a)", "(b)"),
    100: ("(b)", "(a)"),
    279: ("(a)", "(b)"),
    280: ("(b)", "(a)"),
}
GT_FIXES_SOURCE = (
    "EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/mmvp/utils.py:11-23 (v0.7.3; "
    "lmms-eval issue #1018, tsb0601/MMVP issue #30)"
)
POST_PROMPT_LMMS = "\nAnswer with the option's letter from the given choices directly."  # mmvp.yaml:26
GPT_SYSTEM = (
    "You are a helpful and precise assistant for checking the quality of the answer. "
    "Please answer in only yes or no."
)  # gpt_grader.py:26
GPT_MODEL_OFFICIAL = "gpt-4-0314"  # gpt_grader.py:23
GPT_TEMPERATURE = 0.2  # gpt_grader.py:31
_YES_NO = re.compile(r"^(yes|no)$", re.IGNORECASE)  # gpt_grader.py:41

# lmms_eval/tasks/mmvp/utils.py:50-56, in order
_LETTER_PATTERNS = [
    r"^\s*\(?([AB])\)?\.?\s*$",
    r"^\s*\(?([AB])\)?[\.\s]",
    r"answer\s+is\s+\(?([AB])\)?",
    r"option\s+\(?([AB])\)?",
    r"\(?([AB])\)?(?:\s|$)",
]


def extract_letter(text: str) -> str:
    """lmms-eval's ``_extract_answer_letter`` (utils.py:32-67): ``"A"``, ``"B"`` or ``""``."""
    text = (text or "").strip()
    for pattern in _LETTER_PATTERNS:
        m = re.search(pattern, text, flags=re.IGNORECASE)
        if m:
            return m.group(1).upper()
    if text and text[0].upper() in ("A", "B"):
        return text[0].upper()
    return ""


def target_letter(answer: str) -> str:
    """lmms-eval's ``_normalize_answer`` (utils.py:126-133): ``"(a)"`` -> ``"A"``."""
    a = (answer or "").strip().lower()
    if "(a)" in a or a == "a":
        return "A"
    if "(b)" in a or a == "b":
        return "B"
    return a.upper()


def _parse_options(options: str) -> list[str]:
    """lmms-eval's ``_parse_options`` (utils.py:86-90)."""
    return [m.strip() for m in re.findall(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", options, re.IGNORECASE)]


def _col(row: Mapping[str, str], *names: str) -> str | None:
    low = {k.strip().lower(): v for k, v in row.items() if k is not None}
    for n in names:
        if n in low:
            return low[n]
    return None


def load_items(
    root: str | os.PathLike, *, fixes: str | None = "lmms", prefix: str = "mmvp/", check_images: bool = True
) -> list[dict]:
    """Items from an MMVP folder (``Questions.csv`` + ``MMVP Images/``), in file order.

    Keys: ``item_id`` (``mmvp/<Index>``), ``image`` (``<Index>.jpg``), ``image_path``,
    ``image_id`` (the Index), ``question_id`` (Index), ``question`` (official prompt),
    ``question_lmms``, ``options``, ``label`` (``"(a)"``/``"(b)"`` after fixes),
    ``label_original``, ``label_fixed`` (bool), ``pair_index`` (``(Index-1)//2``), ``index``.
    """
    if fixes not in ("lmms", None):
        raise ValueError(f"mmvp: fixes must be 'lmms' or None, got {fixes!r}")
    root = Path(root)
    csv_path = root / "Questions.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"mmvp: {csv_path} not found (expected the MMVP release folder)")
    img_dir = next((root / d for d in ("MMVP Images", "MMVP Imgaes", "images") if (root / d).is_dir()), None)
    if img_dir is None and check_images:
        raise FileNotFoundError(f"mmvp: no image folder 'MMVP Images' under {root}")
    items = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):
            idx_s = _col(row, "index", "lndex")
            q, opts, ans = _col(row, "question"), _col(row, "options"), _col(row, "correct answer")
            if idx_s is None or q is None or opts is None or ans is None:
                raise ValueError(
                    f"{csv_path}:{lineno}: needs columns Index, Question, Options, Correct Answer; "
                    f"got {sorted(k for k in row if k)}"
                )
            try:
                index = int(str(idx_s).strip())
            except ValueError:
                raise ValueError(f"{csv_path}:{lineno}: Index {idx_s!r} is not an integer") from None
            ans = ans.strip()
            if target_letter(ans) not in ("A", "B"):
                raise ValueError(f"{csv_path}:{lineno}: Correct Answer must be (a) or (b), got {ans!r}")
            label, fixed = ans, False
            if fixes == "lmms" and index in GT_FIXES:
                orig, new = GT_FIXES[index]
                if target_letter(ans) != target_letter(orig):
                    raise ValueError(
                        f"{csv_path}:{lineno}: Index {index} has answer {ans!r}, but the lmms-eval fix "
                        f"expects the original {orig!r} (already corrected copy? use fixes=None)"
                    )
                label, fixed = new, True
            image = f"{index}.jpg"
            path = (img_dir / image) if img_dir is not None else root / image
            if check_images and not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{lineno}: image {path} missing")
            options = _parse_options(opts)
            opt_str = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
            items.append(
                {
                    "item_id": f"{prefix}{index}",
                    "image": image,
                    "image_path": str(path),
                    "image_id": index,
                    "question_id": index,
                    "question": f"{q} {opts}",
                    "question_lmms": f"{q}\n{opt_str}{POST_PROMPT_LMMS}",
                    "options": options,
                    "label": label,
                    "label_original": ans,
                    "label_fixed": fixed,
                    "index": index,
                    "pair_index": (index - 1) // 2,
                }
            )
    return items


def gpt_user_prompt(question: str, answer: str, response: str) -> str:
    """The official grader's user message (gpt_grader.py:56)."""
    return (
        f"Given the following question {question}, the correct answer is {answer}. "
        f"Does the following answer correctly answers the question, answer:{response}?"
    )


def gpt_grade(reply: str) -> str:
    """gpt_grader.py:40-46: ``"yes"``/``"no"`` when the whole reply is yes/no, else the official
    ``"Could not determine yes or no."`` (counts as wrong)."""
    return reply.lower() if _YES_NO.match(reply) else "Could not determine yes or no."


def _join(records, items):
    return join_records(
        records, items, bench="mmvp", title="an MMVP", required=("index", "label", "question")
    )


def judge_items(
    records: Iterable[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] | None,
    judge: Judge | Mapping[str, Any],
    *,
    workers: int = 1,
) -> list[dict]:
    """Ask ``judge`` the official grader question for every non-error record; returns the records
    with ``judge_reply`` (text) and ``judge`` (label) added, ready for ``score(..., parser="gpt")``
    (see :func:`vcdflow.metrics.judge.judge_rows` for ``workers`` and resuming)."""

    def build(row):
        return [
            {"role": "system", "content": GPT_SYSTEM},
            {
                "role": "user",
                "content": gpt_user_prompt(row["question"], row["label"], row.get("answer") or ""),
            },
        ]

    return judge_rows(_join(records, items), judge, build, workers=workers, temperature=GPT_TEMPERATURE)


def score_items(
    records: Iterable[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] | None = None,
    parser: str = "lmms",
) -> list[dict]:
    """Per-question outcome (error records skipped): ``item_id, index, pair_index, pred, target,
    correct`` (+ ``judge`` for ``parser="gpt"``)."""
    if parser not in ("lmms", "gpt"):
        raise ValueError(f"mmvp: parser must be 'lmms' or 'gpt', got {parser!r}")
    rows = []
    for it in _join(records, items):
        if it.get("error"):
            continue
        if parser == "lmms":
            pred, tgt = extract_letter(it.get("answer") or ""), target_letter(it["label"])
            ok = pred == tgt
        else:
            if "judge_reply" not in it:
                raise KeyError(f"mmvp: record {it['item_id']!r} has no judge_reply (run judge_items first)")
            pred, tgt = gpt_grade(it["judge_reply"]), "yes"
            ok = pred == "yes"
        row = {
            "item_id": it["item_id"],
            "index": int(it["index"]),
            "pair_index": (int(it["index"]) - 1) // 2,
            "pred": pred,
            "target": tgt,
            "correct": int(ok),
        }
        if parser == "gpt":
            row["judge"] = it.get("judge")
        rows.append(row)
    return rows


def score(
    records: Iterable[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] | None = None,
    parser: str = "lmms",
) -> dict[str, float]:
    """``pair_accuracy`` (the MMVP number: % of pairs with both right), ``accuracy`` (% of
    questions), ``n`` (questions), ``n_pairs`` (complete pairs), ``n_errors``."""
    records = list(records)
    n_errors = sum(1 for r in records if r.get("error"))
    rows = score_items(records, items, parser)
    if parser == "gpt" and rows:
        single_judge(rows, "mmvp")
    pairs: dict[int, list[int]] = {}
    for r in rows:
        pairs.setdefault(r["pair_index"], []).append(r["correct"])
    complete = [v for v in pairs.values() if len(v) == 2]
    n = len(rows)
    return {
        "pair_accuracy": 100.0 * sum(1 for v in complete if all(v)) / len(complete) if complete else math.nan,
        "accuracy": 100.0 * sum(r["correct"] for r in rows) / n if n else math.nan,
        "n": float(n),
        "n_pairs": float(len(complete)),
        "n_errors": float(n_errors),
    }
