"""POPE (Li et al., EMNLP 2023): item loader and the official scorer plus repo variants.

Files: ``{"question_id", "image", "text", "label"}`` records, as JSON lines (LF or CRLF:
``coco_pope_random.json`` is LF, popular/adversarial are CRLF) or as one pretty-printed
JSON array (the SEEM A-OKVQA / GQA files). Both are read by :func:`read_pope_file`.

Answer parsers (``parser=``), each mapping an answer to a yes/no prediction:

``"official"`` (default; RUCAIBox/POPE ``evaluate.py`` = LLaVA ``eval_pope.py``)
    if ``'.'`` in the text keep ``text.split('.')[0]``; drop ``','``; ``words =
    text.split(' ')``; "no" iff ``{'No', 'not', 'no'}`` meets ``words``, else "yes".
    Case-sensitive and split on single spaces only: ``"NO"``, ``"n't"`` and ``"No\\n..."``
    all count as "yes".
``"opera"`` (OPERA / HALC ``pope_eval.py::recorder``)
    drop every ``'.'`` and ``','`` (no first-sentence cut); ``split(' ')``; "no" iff a word is
    in ``{'No', 'not', 'no', 'NO'}`` or ends with ``"n't"``.
``"vcd"`` (DAMO-NLP-SG/VCD ``experiments/eval/eval_pope.py``)
    ``a = answer.lower().strip()``; gt yes: correct iff substring ``'yes'`` in ``a``; gt no:
    correct iff substring ``'no'`` in ``a`` ("snow", "not", "know" all match). The
    prediction used for TP/FP/yes-ratio is therefore gt-dependent.
``"lmms"`` (lmms-eval ``tasks/pope/utils.py``)
    ``pred = answer.lower().strip()`` must equal "yes"/"no" exactly (else "other", always
    wrong). TP/FP/FN count exact "yes"/"no" only. lmms-eval's ``pope_yes_ratio`` is computed
    from the *labels* (a bug, always 0.5 on balanced files); here ``yes_ratio`` is the share
    of exact "yes" predictions.

Metrics (yes = positive class; label ``'no'`` -> no, anything else -> yes, as official):
``accuracy = (TP+TN)/N``, ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``,
``f1 = 2PR/(P+R)``, ``yes_ratio = #pred yes / N``, all in percent. An undefined ratio
(0/0) is 0, as the guarded copies of the script do (the original raises).
LLaVA-1.5 reports :func:`mean_f1` over the random/popular/adversarial splits.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "PARSERS",
    "read_pope_file",
    "load_items",
    "parse_official",
    "parse_opera",
    "parse_lmms",
    "score_items",
    "score",
    "mean_f1",
    "image_id_from_name",
]


def image_id_from_name(name: str) -> Any:
    """``COCO_val2014_000000310196.jpg`` -> 310196, ``2405722.jpg`` -> 2405722,
    ``AMBER_12.jpg`` -> 12; a stem without trailing digits is returned as is."""
    stem = Path(name).stem
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else stem


def read_pope_file(path: str | os.PathLike) -> list[dict]:
    """Read a POPE question file (JSON lines with LF/CRLF, or a JSON array); validate it.

    Every record must have ``question_id`` (unique), ``image``, ``text`` and ``label`` in
    {yes, no}; an error names the file and line (JSON lines) or element (array).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"POPE file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 ({exc})") from exc
    recs: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        recs = [(f"element {i}", r) for i, r in enumerate(arr)]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                recs.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
    if not recs:
        raise ValueError(f"{path}: no POPE questions")
    out = []
    seen: dict[Any, str] = {}
    for where, rec in recs:
        if not isinstance(rec, dict):
            raise ValueError(f"{path} {where}: expected a JSON object")
        for key in ("question_id", "image", "text", "label"):
            if key not in rec:
                raise ValueError(f"{path} {where}: missing key {key!r}")
        if rec["label"] not in ("yes", "no"):
            raise ValueError(f"{path} {where}: label must be 'yes' or 'no', got {rec['label']!r}")
        qid = rec["question_id"]
        if qid in seen:
            raise ValueError(f"{path} {where}: question_id {qid!r} repeats ({seen[qid]})")
        seen[qid] = where
        out.append(rec)
    return out


def _split_from_name(path: Path) -> str:
    # coco_pope_random.json -> random; aokvqa_pope_seem_popular.json -> popular
    return path.stem.rsplit("_", 1)[-1]


def load_items(
    pope_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    split: str | None = None,
    prefix: str | None = None,
    check_images: bool = False,
) -> list[dict]:
    """POPE items in file order.

    ``split`` defaults to the last ``_`` part of the file stem (``coco_pope_random`` ->
    ``random``); ``item_id = prefix + str(question_id)`` with ``prefix`` defaulting to
    ``f"pope/{split}/"``. Keys: ``item_id``, ``image``, ``image_path``, ``image_id``
    (:func:`image_id_from_name`), ``question_id``, ``question`` (the ``text``), ``label``,
    ``split``.
    """
    path = Path(pope_file)
    recs = read_pope_file(path)
    split = split or _split_from_name(path)
    prefix = f"pope/{split}/" if prefix is None else prefix
    image_dir = Path(image_dir)
    items, missing = [], []
    for rec in recs:
        ipath = image_dir / rec["image"]
        if check_images and not ipath.is_file():
            missing.append(str(ipath))
        items.append(
            {
                "item_id": f"{prefix}{rec['question_id']}",
                "image": rec["image"],
                "image_path": str(ipath),
                "image_id": image_id_from_name(rec["image"]),
                "question_id": rec["question_id"],
                "question": rec["text"],
                "label": rec["label"],
                "split": split,
            }
        )
    if missing:
        raise FileNotFoundError(
            f"{path}: {len(missing)} images missing under {image_dir}, e.g. {missing[:3]}"
        )
    return items


# ----------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------
def parse_official(answer: str) -> str:
    """RUCAIBox/POPE ``evaluate.py`` (and LLaVA ``eval_pope.py``)."""
    text = answer
    if "." in text:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def parse_opera(answer: str) -> str:
    """OPERA / HALC ``recorder``."""
    text = answer.replace(".", "").replace(",", "")
    words = text.split(" ")
    neg = {"No", "not", "no", "NO"}
    if any(w in neg for w in words) or any(w.endswith("n't") for w in words):
        return "no"
    return "yes"


def parse_only(answer: str) -> str:
    """ONLY ``recorder`` (zifuwan/ONLY@109bffe eval_bench/pope_eval_llava.py:130-142, the same in
    ``pope_eval_instructblip.py:125-137``): OPERA's rule on the answer's first line only
    (``for line in out.split('\n'): … break``)."""
    return parse_opera(answer.split("\n")[0])


def parse_deco(answer: str) -> str:
    """DeCo's two steps: ``recorder`` (zjunlp/Deco@fee8d75 pope_llava.py:28-33) writes "Yes" iff
    the word "yes" is among ``re.split(r'[^\w]+', answer.lower())``, else "No"; then
    ``eval_tool/eval_pope.py:33-49``'s substring test on that word returns it. So: "yes" iff the
    word "yes" occurs (an answer with neither word is "no"; the substring rule alone would make
    "yesterday" a yes, or an answer without "no" to a no-question a yes)."""
    import re

    return "yes" if "yes" in re.split(r"[^\w]+", answer.lower()) else "no"


def parse_lmms(answer: str) -> str:
    """lmms-eval: exact match after ``lower().strip()``; anything else is ``'other'``."""
    a = answer.lower().strip()
    return a if a in ("yes", "no") else "other"


def _pred_vcd(answer: str, label: str) -> str:
    a = answer.lower().strip()
    if label == "yes":
        return "yes" if "yes" in a else "no"
    return "no" if "no" in a else "yes"


PARSERS: dict[str, Callable[..., str]] = {
    "official": parse_official,
    "opera": parse_opera,
    "only": parse_only,
    "deco": parse_deco,
    "vcd": _pred_vcd,
    "lmms": parse_lmms,
}


def _predict(answer: str, label: str, parser: str) -> str:
    if parser not in PARSERS:
        raise ValueError(f"unknown POPE parser {parser!r}; choose one of {sorted(PARSERS)}")
    if parser == "vcd":
        return _pred_vcd(answer, label)
    return PARSERS[parser](answer)


# ----------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------
def _label(rec: Mapping[str, Any], k: int) -> str:
    if "label" not in rec or rec["label"] is None:
        raise KeyError(f"POPE record {k} ({rec.get('item_id', '?')}) has no label")
    lab = str(rec["label"])
    # official: 'no' -> 0, anything else -> 1; VCD/lmms lower-case and strip first.
    return "no" if lab.lower().strip() == "no" else "yes"


def score_items(records: Iterable[Mapping[str, Any]], parser: str = "official") -> list[dict]:
    """Per-question outcome for records without ``error``: ``item_id``, ``label``, ``pred``
    (yes/no/other) and ``correct`` (1 iff ``pred == label``)."""
    rows = []
    for k, rec in enumerate(records):
        if rec.get("error"):
            continue
        if "item_id" not in rec:
            raise KeyError(f"POPE record {k} has no item_id")
        label = _label(rec, k)
        pred = _predict(rec.get("answer") or "", label, parser)
        rows.append({"item_id": rec["item_id"], "label": label, "pred": pred, "correct": int(pred == label)})
    return rows


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def score(records: Iterable[Mapping[str, Any]], parser: str = "official") -> dict[str, float]:
    """``accuracy, precision, recall, f1, yes_ratio`` (percent), ``n`` (questions scored),
    ``n_errors`` (records with ``error`` set, excluded) for one split."""
    records = list(records)
    n_errors = sum(1 for r in records if r.get("error"))
    rows = score_items(records, parser)
    tp = sum(1 for r in rows if r["pred"] == "yes" and r["label"] == "yes")
    fp = sum(1 for r in rows if r["pred"] == "yes" and r["label"] == "no")
    tn = sum(1 for r in rows if r["pred"] == "no" and r["label"] == "no")
    fn = sum(1 for r in rows if r["pred"] == "no" and r["label"] == "yes")
    n = len(rows)
    p = _ratio(tp, tp + fp)
    r = _ratio(tp, tp + fn)
    f1 = _ratio(2 * p * r, p + r)
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else math.nan,
        "precision": 100.0 * p,
        "recall": 100.0 * r,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(1 for x in rows if x["pred"] == "yes") / n if n else math.nan,
        "n": float(n),
        "n_errors": float(n_errors),
    }


def mean_f1(scores: Mapping[str, Mapping[str, float]] | Iterable[Mapping[str, float]]) -> float:
    """Mean of ``f1`` over splits (LLaVA-1.5's POPE number): a ``{split: scores}`` mapping or
    an iterable of score dicts."""
    vals = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if not vals:
        raise ValueError("mean_f1: no splits")
    return sum(v["f1"] for v in vals) / len(vals)
