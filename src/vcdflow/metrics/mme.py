"""MME (Fu et al., 2023): item loaders and the official ``calculation.py`` scoring.

Data layouts (``MME_Benchmark_release_version``): one folder per subtask;
``artwork``, ``celebrity``, ``landmark``, ``posters``, ``scene`` hold ``images/`` and
``questions_answers_YN/<stem>.txt``; the other subtasks keep ``<stem>.<jpg|png>`` and
``<stem>.txt`` side by side. Each ``.txt`` has 2 lines ``question<TAB>Yes|No``. The HF
re-packaging ``lmms-lab/MME`` (parquet, 2374 rows: ``question_id`` shared by an image's
two questions, ``image``, ``question``, ``answer``, ``category``) is read by
:func:`load_items_parquet` / :func:`load_items_dataframe`.

Official scoring (BradyFU ``tools/eval_tool/calculation.py``), per subtask:

* answer parse (``parser="official"``): first every line break is deleted from the answer,
  as the tool's ``readme.txt:14`` requires before scoring ("if your responses contain "\n",
  please delet it"; ``calculation.py:98`` reads the file with ``readlines()``, so an answer
  must fit on one line; ``\r`` breaks a text-mode line too and is deleted as well). Then
  ``pred = answer.lower()`` (``calculation.py:116``); if ``pred`` is exactly "yes"/"no" take
  it; else if "yes" is in ``pred[:4]`` -> yes; elif "no" in ``pred[:4]`` -> no; else "other"
  (always wrong) (``calculation.py:23-37``). So ``"\n\nYes"`` is yes and ``"N\no"`` is no,
  where parsing the raw text would give "other" twice. (The official reads the answer with
  the line's trailing newline; that newline never changes the result.)
* ``acc`` = share of correct questions; ``acc_plus`` = share of images whose 2 questions are
  both correct (the official pairs consecutive lines; here records are paired by
  ``image_id``, which is the same for files in item order);
* subtask ``score = 100*acc + 100*acc_plus`` (max 200); ``perception`` = sum over the 10
  perception subtasks (max 2000), ``cognition`` over the 4 cognition ones (max 800),
  ``hallucination`` over existence, count, position, color (max 800, VCD and others). A
  total is reported only when all its subtasks were scored.

``parser="lmms"`` (lmms-eval ``tasks/mme/utils.py::parse_pred_ans``): ``lower().strip()``,
remove ``'.'``; exact yes/no; a one-character answer ``y``/``n`` -> yes/no (else other);
otherwise the same first-4-characters rule.

Errors: a record with ``error`` set is counted in ``n_errors``; its image pair is left out
of that subtask (acc and acc+ need both answers).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from vcdflow.io import atomic_write_bytes

__all__ = [
    "PERCEPTION",
    "COGNITION",
    "HALLUCINATION",
    "SUBTASKS",
    "PARSERS",
    "load_items",
    "load_items_parquet",
    "load_items_dataframe",
    "parse_official",
    "parse_lmms",
    "score_items",
    "score",
]

PERCEPTION = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
]
COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
HALLUCINATION = ["existence", "count", "position", "color"]
SUBTASKS = PERCEPTION + COGNITION
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_SUFFIX_RE = re.compile(r"\s+Please answer yes or no\.\s*$")


def _question_stem(q: str) -> str:
    """Question without the trailing " Please answer yes or no." (one or two spaces)."""
    return _SUFFIX_RE.sub("", q)


def _find_root(root: Path, subtasks: Sequence[str]) -> Path:
    if any((root / s).is_dir() for s in subtasks):
        return root
    for child in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if any((child / s).is_dir() for s in subtasks):
            return child
    raise FileNotFoundError(
        f"{root}: no MME subtask folders ({', '.join(subtasks[:3])}, ...) found here or one level down"
    )


def _read_qa(path: Path) -> list[tuple[str, str]]:
    pairs = []
    text = path.read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'question<TAB>Yes|No', got {line!r}")
        q, a = parts
        if a.strip().lower() not in ("yes", "no"):
            raise ValueError(f"{path}:{lineno}: answer must be Yes or No, got {a!r}")
        pairs.append((q, a.strip()))
    if len(pairs) != 2:
        raise ValueError(f"{path}: expected 2 questions, found {len(pairs)}")
    return pairs


def _find_image(folder: Path, stem: str, txt: Path) -> Path:
    found = [folder / f"{stem}{ext}" for ext in _IMAGE_EXTS if (folder / f"{stem}{ext}").is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"{txt}: expected one image {folder}/{stem}.(jpg|png), found {len(found)}")
    return found[0]


def _make_item(prefix, subtask, image_name, image_path, k, question, answer, question_id=None) -> dict:
    image_id = f"{subtask}/{image_name}"
    return {
        "item_id": f"{prefix}{image_id}/{k}",
        "image": image_name,
        "image_path": str(image_path),
        "image_id": image_id,
        "question_id": question_id,
        "question": question,
        "question_stem": _question_stem(question),
        "label": answer,
        "subtask": subtask,
        "category": "perception" if subtask in PERCEPTION else "cognition",
        "pair_index": k,
    }


def load_items(
    root: str | os.PathLike,
    *,
    subtasks: Sequence[str] | None = None,
    prefix: str = "mme/",
) -> list[dict]:
    """Items from the original MME release folder (both layouts), subtasks in the official
    order, images sorted by file name, the 2 questions of an image consecutive.

    Keys: ``item_id`` (``mme/<subtask>/<image>/<0|1>``), ``image``, ``image_path``,
    ``image_id`` (``<subtask>/<image>``, the scorer's pair key), ``question_id`` (None),
    ``question`` (raw, with " Please answer yes or no."), ``question_stem`` (without it),
    ``label`` ("Yes"/"No" as in the file), ``subtask``, ``category``, ``pair_index``.
    """
    subtasks = list(subtasks or SUBTASKS)
    bad = [s for s in subtasks if s not in SUBTASKS]
    if bad:
        raise ValueError(f"unknown MME subtasks {bad}; known: {SUBTASKS}")
    base = _find_root(Path(root), subtasks)
    items = []
    for sub in subtasks:
        folder = base / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"MME subtask folder missing: {folder}")
        if (folder / "questions_answers_YN").is_dir():
            txt_dir, img_dir = folder / "questions_answers_YN", folder / "images"
        else:
            txt_dir, img_dir = folder, folder
        txts = sorted(txt_dir.glob("*.txt"))
        if not txts:
            raise FileNotFoundError(f"{txt_dir}: no question files (*.txt)")
        for txt in txts:
            img = _find_image(img_dir, txt.stem, txt)
            for k, (q, a) in enumerate(_read_qa(txt)):
                items.append(_make_item(prefix, sub, img.name, img, k, q, a))
    return items


def _image_bytes(value: Any, where: str) -> tuple[bytes, str | None]:
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, name = bytes(value), None
    else:
        raise ValueError(f"{where}: unsupported image value of type {type(value).__name__}")
    if not data:
        raise ValueError(f"{where}: image has no bytes")
    return data, name


def load_items_dataframe(
    df,
    image_dir: str | os.PathLike,
    *,
    prefix: str = "mme/",
    source: str = "dataframe",
) -> list[dict]:
    """Items from an ``lmms-lab/MME``-style DataFrame (columns ``question_id``, ``image``,
    ``question``, ``answer``, ``category``). Images (HF ``{"bytes", "path"}`` structs or raw
    bytes) are written once to ``image_dir/<category>/<name>``; rows are grouped by
    ``question_id`` in first-appearance order so each image's 2 questions are consecutive
    (an id with a question count other than 2 is an error)."""
    from PIL import Image

    need = {"question_id", "image", "question", "answer", "category"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    groups: dict[Any, list[int]] = {}
    for i, qid in enumerate(df["question_id"].tolist()):
        groups.setdefault(qid, []).append(i)
    image_dir = Path(image_dir)
    items = []
    owner: dict[Path, Any] = {}
    for qid, rows in groups.items():
        if len(rows) != 2:
            raise ValueError(f"{source}: question_id {qid!r} has {len(rows)} questions, MME needs 2")
        sub = df["category"].iloc[rows[0]]
        if sub not in SUBTASKS:
            raise ValueError(f"{source}: row {rows[0]} has unknown category {sub!r}")
        data, name = _image_bytes(df["image"].iloc[rows[0]], f"{source} row {rows[0]}")
        if not name:
            name = Path(str(qid)).name
        name = Path(name).name
        if not Path(name).suffix:
            fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
            name = f"{name}.{'jpg' if fmt == 'jpeg' else fmt}"
        path = image_dir / sub / name
        if path in owner:
            raise ValueError(f"{source}: question_ids {owner[path]!r} and {qid!r} both map to image {path}")
        owner[path] = qid
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
        for k, r in enumerate(rows):
            if df["category"].iloc[r] != sub:
                raise ValueError(f"{source}: question_id {qid!r} spans categories")
            ans = str(df["answer"].iloc[r]).strip()
            if ans.lower().replace(".", "") not in ("yes", "no"):
                raise ValueError(f"{source}: row {r} answer must be Yes/No, got {ans!r}")
            items.append(
                _make_item(prefix, sub, name, path, k, str(df["question"].iloc[r]), ans, question_id=qid)
            )
    return items


def load_items_parquet(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    image_dir: str | os.PathLike,
    *,
    prefix: str = "mme/",
) -> list[dict]:
    """:func:`load_items_dataframe` on the ``lmms-lab/MME`` parquet shards (read with
    ``pandas.read_parquet``, which needs ``pyarrow`` or ``fastparquet``), shards concatenated
    in the given order."""
    import pandas as pd

    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    frames = []
    for p in paths:
        try:
            frames.append(pd.read_parquet(p))
        except ImportError as exc:
            raise ImportError(f"reading {p} needs a parquet engine (pip install pyarrow): {exc}") from exc
    df = pd.concat(frames, ignore_index=True)
    return load_items_dataframe(df, image_dir, prefix=prefix, source=", ".join(str(p) for p in paths))


# ----------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------
def parse_official(answer: str) -> str:
    """``calculation.py::parse_pred_ans`` (``calculation.py:23-37``) on ``answer.lower()``
    (``calculation.py:116``) after deleting the answer's line breaks, as the tool's
    ``readme.txt:14`` requires (BradyFU/Awesome-Multimodal-Large-Language-Models, branch
    ``Evaluation``, ``tools/eval_tool.zip``)."""
    pred = answer.replace("\r", "").replace("\n", "").lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def parse_lmms(answer: str) -> str:
    """lmms-eval ``parse_pred_ans`` (from Otter)."""
    pred = answer.lower().strip().replace(".", "")
    if pred in ("yes", "no"):
        return pred
    if len(pred) == 1:
        return {"y": "yes", "n": "no"}.get(pred, "other")
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


PARSERS: dict[str, Callable[[str], str]] = {"official": parse_official, "lmms": parse_lmms}


# ----------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------
def _subtask_of(rec: Mapping[str, Any]) -> str:
    sub = rec.get("subtask")
    if not sub:
        image_id = str(rec.get("image_id") or "")
        sub = image_id.split("/", 1)[0] if "/" in image_id else None
    if sub not in SUBTASKS:
        raise ValueError(
            f"MME record {rec.get('item_id', '?')}: cannot tell its subtask (need 'subtask' or "
            f"image_id '<subtask>/<image>'; got {sub!r})"
        )
    return sub


def _pairs(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[Mapping[str, Any]]]]:
    by_sub: dict[str, dict[str, list]] = {}
    for rec in records:
        sub = _subtask_of(rec)
        by_sub.setdefault(sub, {}).setdefault(str(rec["image_id"]), []).append(rec)
    for sub, imgs in by_sub.items():
        for img, recs in imgs.items():
            if len(recs) != 2:
                raise ValueError(f"MME {sub}: image {img} has {len(recs)} records, MME scores pairs of 2")
    return by_sub


def score_items(records: Iterable[Mapping[str, Any]], parser: str = "official") -> list[dict]:
    """Per-question outcome for pairs without errors: ``item_id``, ``subtask``,
    ``image_id``, ``label``, ``pred`` (yes/no/other), ``correct`` (0/1), ``pair_correct``
    (1 iff both questions of the image are correct)."""
    if parser not in PARSERS:
        raise ValueError(f"unknown MME parser {parser!r}; choose one of {sorted(PARSERS)}")
    parse = PARSERS[parser]
    rows = []
    for sub, imgs in _pairs(records).items():
        for img, recs in imgs.items():
            if any(r.get("error") for r in recs):
                continue
            pair = []
            for r in recs:
                gt = str(r.get("label") or "").lower().strip()
                if parser == "lmms":
                    gt = gt.replace(".", "")
                if gt not in ("yes", "no"):
                    raise ValueError(
                        f"MME record {r.get('item_id', '?')}: label must be yes/no, got {r.get('label')!r}"
                    )
                pred = parse(r.get("answer") or "")
                pair.append(
                    {
                        "item_id": r["item_id"],
                        "subtask": sub,
                        "image_id": img,
                        "label": gt,
                        "pred": pred,
                        "correct": int(pred == gt),
                    }
                )
            both = int(all(p["correct"] for p in pair))
            for p in pair:
                p["pair_correct"] = both
            rows.extend(pair)
    return rows


def score(records: Iterable[Mapping[str, Any]], parser: str = "official") -> dict[str, float]:
    """Per subtask ``<subtask>/score`` (0-200), ``<subtask>/acc`` and ``<subtask>/acc_plus``
    (percent); totals ``perception``, ``cognition``, ``hallucination`` when complete;
    ``n`` (questions scored), ``n_errors``. Keys with ``/`` become rows of that split in
    :func:`vcdflow.metrics.metric_rows`."""
    records = list(records)
    n_errors = sum(1 for r in records if r.get("error"))
    rows = score_items(records, parser)
    out: dict[str, float] = {}
    sub_scores: dict[str, float] = {}
    for sub in SUBTASKS:
        srows = [r for r in rows if r["subtask"] == sub]
        if not srows:
            continue
        acc = sum(r["correct"] for r in srows) / len(srows)
        n_img = len({r["image_id"] for r in srows})
        acc_plus = sum(r["pair_correct"] for r in srows) / 2 / n_img
        sub_scores[sub] = 100.0 * acc + 100.0 * acc_plus
        out[f"{sub}/score"] = sub_scores[sub]
        out[f"{sub}/acc"] = 100.0 * acc
        out[f"{sub}/acc_plus"] = 100.0 * acc_plus
    for name, members in (
        ("perception", PERCEPTION),
        ("cognition", COGNITION),
        ("hallucination", HALLUCINATION),
    ):
        if all(m in sub_scores for m in members):
            out[name] = sum(sub_scores[m] for m in members)
    out["n"] = float(len(rows))
    out["n_errors"] = float(n_errors)
    return out
