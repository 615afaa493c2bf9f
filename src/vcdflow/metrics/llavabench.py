"""LLaVA-Bench (in the wild) (Liu et al., LLaVA): 60 questions on 24 images, each answer rated
by a chat judge against a GPT-4 reference answer; the number is the **relative score**
(model / reference, in percent).

Data (``liuhaotian/llava-bench-in-the-wild``): ``questions.jsonl`` (``question_id, image,
text, category`` conv|detail|complex), ``context.jsonl`` (``image, caption`` — a string or a
list of strings), ``answers_gpt4.jsonl`` (``question_id, text``: the reference answers) and
``images/``. Items keep file order (the official script zips the three files line by line,
``haotian-liu/LLaVA llava/eval/eval_gpt_review_bench.py:79``).

Judging (``eval_gpt_review_bench.py``): system text "You are a helpful and precise assistant for
checking the quality of the answer." (:18), user text ``[Context]\\n{caption}\\n\\n[Question]\\n
{question}\\n\\n[Assistant 1]\\n{reference}\\n\\n[End of Assistant 1]\\n\\n[Assistant 2]\\n{answer}
\\n\\n[End of Assistant 2]\\n\\n[System]\\n{rule prompt}\\n\\n`` (:86-102; a caption list is
joined with newlines, :86-89; the rule prompt and role ``Assistant`` are
``llava/eval/table/rule.json:8-10``, the same text for the three categories), temperature 0.2
(:23), ``max_tokens`` 1024 (:59), official judge ``gpt-4-0314`` (:15). The reply's first line
gives the two scores: ``parser="official"`` (``parse_score``, :36-49: first line, commas to
spaces, split on single spaces, exactly two fields, else ``[-1, -1]``) or ``parser="lmms"``
(lmms-eval 0.7.3 ``lmms_eval/tasks/llava-in-the-wild/utils.py:40-58``: the first two numbers of
the first line after ``,``/``;`` -> space, else ``[-1, -1]``).

Summary (``llava/eval/summarize_gpt_review.py:40-59``): per category and ``all``, the mean of
the score pairs (failed parses ``[-1, -1]`` included, as in the official), each mean rounded to 3
decimals, then ``relative = round(mean_model / mean_reference * 100, 1)``,
``reference_score = round(mean_reference * 10, 1)``, ``model_score = round(mean_model * 10, 1)``.

Every judged row carries ``judge`` (``"<kind>:<model>"``); :func:`judged_by` gives the label(s)
to write beside the numbers. Records with ``error`` set count in ``n_errors`` and are not judged.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .judge import Judge, judge_rows, judged_by, single_judge, join_records

__all__ = [
    "SYSTEM",
    "RULE_PROMPT",
    "ROLE",
    "GPT_MODEL_OFFICIAL",
    "TEMPERATURE",
    "MAX_TOKENS",
    "CATEGORIES",
    "load_items",
    "review_content",
    "parse_score_official",
    "parse_score_lmms",
    "judge_items",
    "score_items",
    "score",
    "judged_by",
]

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."  # :18
ROLE = "Assistant"  # rule.json:8-10
RULE_PROMPT = (  # llava/eval/table/rule.json:8 (llava_bench_conv; :9-10 detail/complex are identical)
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \nPlease rate the "
    "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall "
    "score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease first "
    "output a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. "
    "The two scores are separated by a space.\nIn the subsequent line, please provide a comprehensive explanation "
    "of your evaluation, avoiding any potential bias and ensuring that the order in which the responses were "
    "presented does not affect your judgment."
)
GPT_MODEL_OFFICIAL = "gpt-4-0314"  # :15
TEMPERATURE = 0.2  # :23
MAX_TOKENS = 1024  # :59
CATEGORIES = ("conv", "detail", "complex")


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"llavabench: {path} not found") from None
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
    return out


def load_items(
    root: str | os.PathLike, *, prefix: str = "llavabench/", check_images: bool = False
) -> list[dict]:
    """Items from the release folder. Keys: ``item_id`` (``llavabench/<question_id>``),
    ``image``, ``image_path``, ``image_id``, ``question_id``, ``question``, ``category``,
    ``caption`` (joined context), ``reference`` (the GPT-4 answer), ``label`` (None)."""
    root = Path(root)
    qs = _read_jsonl(root / "questions.jsonl")
    ctx = {c["image"]: c for c in _read_jsonl(root / "context.jsonl")}
    refs = _read_jsonl(root / "answers_gpt4.jsonl")
    if len(refs) != len(qs):
        raise ValueError(
            f"llavabench: {root}/answers_gpt4.jsonl has {len(refs)} lines, questions.jsonl {len(qs)}"
        )
    items = []
    for i, (q, ref) in enumerate(zip(qs, refs), 1):
        for k in ("question_id", "image", "text", "category"):
            if k not in q:
                raise ValueError(f"{root}/questions.jsonl:{i}: missing {k!r}")
        if q["category"] not in CATEGORIES:
            raise ValueError(f"{root}/questions.jsonl:{i}: category {q['category']!r} not in {CATEGORIES}")
        if ref.get("question_id") != q["question_id"]:
            raise ValueError(
                f"{root}/answers_gpt4.jsonl:{i}: question_id {ref.get('question_id')!r} != {q['question_id']!r}"
            )
        if q["image"] not in ctx:
            raise ValueError(
                f"{root}/context.jsonl: no context for image {q['image']!r} (questions.jsonl:{i})"
            )
        cap = ctx[q["image"]].get("caption")
        cap_str = "\n".join(cap) if isinstance(cap, list) else cap  # :86-89
        path = root / "images" / q["image"]
        if check_images and not path.is_file():
            raise FileNotFoundError(f"{root}/questions.jsonl:{i}: image {path} missing")
        items.append(
            {
                "item_id": f"{prefix}{q['question_id']}",
                "image": q["image"],
                "image_path": str(path),
                "image_id": q["image"],
                "question_id": q["question_id"],
                "question": q["text"],
                "category": q["category"],
                "caption": cap_str,
                "reference": ref["text"],
                "label": None,
            }
        )
    return items


def review_content(caption: str, question: str, reference: str, answer: str) -> str:
    """The official user message (eval_gpt_review_bench.py:98-102)."""
    return (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{ROLE} 1]\n{reference}\n\n[End of {ROLE} 1]\n\n"
        f"[{ROLE} 2]\n{answer}\n\n[End of {ROLE} 2]\n\n"
        f"[System]\n{RULE_PROMPT}\n\n"
    )


def parse_score_official(review: str) -> list[float]:
    """eval_gpt_review_bench.py:36-49."""
    try:
        sp = review.split("\n")[0].replace(",", " ").split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        return [-1, -1]
    except Exception:  # noqa: BLE001 - the official catches everything
        return [-1, -1]


def parse_score_lmms(review: str) -> list[float]:
    """lmms-eval llava-in-the-wild/utils.py:40-58."""
    try:
        lines = review.strip().split("\n")
        if lines:
            nums = re.findall(r"-?\d+(?:\.\d+)?", lines[0].replace(",", " ").replace(";", " "))
            if len(nums) >= 2:
                return [float(nums[0]), float(nums[1])]
        return [-1, -1]
    except Exception:  # noqa: BLE001
        return [-1, -1]


_PARSERS = {"official": parse_score_official, "lmms": parse_score_lmms}


def _join(records, items):
    return join_records(
        records,
        items,
        bench="llavabench",
        title="a LLaVA-Bench",
        required=("category", "caption", "question", "reference"),
    )


def judge_items(records, items, judge: Judge | Mapping[str, Any], *, workers: int = 1) -> list[dict]:
    """Ask ``judge`` the official review for every non-error record; adds ``judge_reply`` and
    ``judge`` to each (``score`` reads them)."""

    def build(row):
        return [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": review_content(
                    row["caption"], row["question"], row["reference"], row.get("answer") or ""
                ),
            },
        ]

    return judge_rows(
        _join(records, items), judge, build, workers=workers, temperature=TEMPERATURE, max_tokens=MAX_TOKENS
    )


def score_items(records, items=None, parser: str = "official") -> list[dict]:
    """Per judged record: ``item_id, category, reference_score, model_score, parsed`` (False
    when the reply gave ``[-1, -1]``), ``judge``."""
    if parser not in _PARSERS:
        raise ValueError(f"llavabench: parser must be one of {sorted(_PARSERS)}, got {parser!r}")
    rows = []
    for it in _join(records, items):
        if it.get("error"):
            continue
        if "judge_reply" not in it:
            raise KeyError(f"llavabench: record {it['item_id']!r} has no judge_reply (run judge_items first)")
        s = _PARSERS[parser](it["judge_reply"])
        rows.append(
            {
                "item_id": it["item_id"],
                "category": it["category"],
                "reference_score": s[0],
                "model_score": s[1],
                "parsed": s != [-1, -1],
                "judge": it.get("judge"),
            }
        )
    return rows


def _summ(pairs) -> tuple[float, float, float]:
    if not pairs:
        return math.nan, math.nan, math.nan
    stats = [
        round(x, 3) for x in np.asarray(pairs, dtype=float).mean(0).tolist()
    ]  # summarize_gpt_review.py:56-57
    rel = round(stats[1] / stats[0] * 100, 1) if stats[0] else math.nan  # :59
    return rel, round(stats[0] * 10, 1), round(stats[1] * 10, 1)


def score(
    records: Iterable[Mapping[str, Any]],
    items: Sequence[Mapping[str, Any]] | None = None,
    parser: str = "official",
) -> dict[str, float]:
    """``relative`` (all questions), ``relative_<cat>`` for conv/detail/complex,
    ``reference_score`` and ``model_score`` (all, the judge's mean score x10), ``n`` (judged),
    ``n_parse_failures``, ``n_errors``. Judge: see :func:`judged_by`."""
    records = list(records)
    rows = score_items(records, items, parser)
    if rows:
        single_judge(rows, "llavabench")
    out: dict[str, float] = {}
    rel, ref, mod = _summ([[r["reference_score"], r["model_score"]] for r in rows])
    out.update({"relative": rel, "reference_score": ref, "model_score": mod})
    for c in CATEGORIES:
        out[f"relative_{c}"] = _summ(
            [[r["reference_score"], r["model_score"]] for r in rows if r["category"] == c]
        )[0]
    out["n"] = float(len(rows))
    out["n_parse_failures"] = float(sum(1 for r in rows if not r["parsed"]))
    out["n_errors"] = float(sum(1 for r in records if r.get("error")))
    return out
