"""AMBER (Wang et al., 2023, arXiv 2311.07397): item loader and the official scoring.

Source of the logic: ``junyangwang0410/AMBER/inference.py``. Data: ``data/annotations.json``
(15220 entries ``{"id", "type", "truth", ["hallu"]}``; ids 1-1004 ``generative`` with object
lists ``truth``/``hallu``, the rest discriminative with ``truth`` yes/no and type
``discriminative-hallucination`` (existence), ``discriminative-attribute-{state,number,action}``
or ``discriminative-relation``/``relation``), ``data/query/query_*.json`` (``{"id", "image",
"query"}``), ``data/relation.json`` (object -> associated words) and ``data/safe_words.txt``.

Generative (per response):

1. nouns = ``WordNetLemmatizer().lemmatize(w)`` (noun POS) of every token whose
   ``nltk.pos_tag`` tag starts with ``NN``, over ``nltk.word_tokenize(response)`` (no lower-
   casing); keep the nouns in the vocabulary = keys of relation.json + all their associated
   words (repeats kept).
2. For each kept noun (in order): a global safe word -> skipped (not hallucinated, but
   still counted in CHAIR's denominator); exactly equal to a truth object or one of its
   associations (first match) -> covers that truth object; otherwise
   (a) exactly equal to a hallu object or association -> marks that hallu object,
   (b) the first hallu entry with ``similarity > threshold`` (0.8) -> marks that hallu object,
   (c) the first truth entry with ``similarity > threshold`` -> covers that truth object and
   the noun is safe; (d) else the noun is hallucinated.
3. ``chair`` = 100 * hallucinated nouns / kept nouns; ``cover`` = 100 * covered truth objects /
   truth objects; ``hal`` = 100 * share of responses with a hallucinated noun; ``cog`` = 100 *
   marked hallu objects / hallu objects (all micro over responses; duplicate objects count
   as many times as listed).

``similarity(a, b)`` is pluggable: the official one is spaCy ``en_core_web_lg``
``nlp(a).similarity(nlp(b))`` (:func:`spacy_similarity`, loaded from a given path); tests use a
stub. With ``similarity=None`` only exact matches count.

Discriminative: the official compares the raw response with ``"Yes"``/``"No"``
(``parser="exact"``); ``parser="pope"`` (default) first maps the answer to Yes/No with the
official POPE parser, ``"first_word"`` takes the first word (lower-cased, punctuation
stripped) if it is yes/no. "No" is the positive class: ``precision`` = correct No / predicted
No, ``recall`` = correct No / gt No, ``f1 = 2PR/(P+R+1e-4)`` (``+1e-3`` for the existence
dimension, as in the source); ``accuracy`` = correct / all.
Per-dimension metrics (existence, attribute = state+number+action, state, number, action,
relation) are reported as ``<dimension>/<metric>``.

Empty denominators: every ratio with nothing to count is 0, as the official prints it --
``inference.py`` starts each counter ``*_num`` at 0.001 (``data/metrics.txt:1-44``, read by
``init()``, ``inference.py:40-52``), so e.g. CHAIR over responses without a single kept noun
is ``0 / 0.001 = 0`` (``inference.py:259``), likewise Cover, Cog, P and R.

AMBER score = ½·(100 − chair + f1) (the paper's formula; the code does not compute it).
With ``official_rounding=True`` the figures are exactly what ``inference.py`` prints: every
denominator carries the 0.001 its counters start at (0.003 for attribute, which sums the
state, number and action counters, ``inference.py:292-294``; 0.001 for the others,
``inference.py:259-262, 270-272, 281-283``), each percentage is rounded to 1 decimal and
F1 is computed from the rounded P and R (``inference.py:273, 284, 295``). The offset shows
at small counts: one clean response prints Hal ``round(100 - 100 * 1 / 1.001, 1) = 0.1``,
one correct answer accuracy 99.9. Without it (the default) the ratios are exact.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from vcdflow.metrics.chair import NltkTools
from vcdflow.metrics.pope import image_id_from_name, parse_official as _pope_parse

__all__ = [
    "DIMENSIONS",
    "load_annotations",
    "load_items",
    "AmberEvaluator",
    "spacy_similarity",
    "parse_answer",
    "score_items",
    "score",
    "amber_score",
]

#: annotation type -> dimension
DIMENSIONS = {
    "generative": "generative",
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
    "discriminative-relation": "relation",
    "relation": "relation",
}
_ATTRIBUTE = ("state", "number", "action")


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"AMBER {what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def load_annotations(path: str | os.PathLike) -> dict[int, dict]:
    """``annotations.json`` -> ``{id: entry}``; validates type and truth of each entry."""
    path = Path(path)
    arr = _read_json(path, "annotations")
    if not isinstance(arr, list):
        raise ValueError(f"{path}: expected a JSON list")
    out: dict[int, dict] = {}
    for i, e in enumerate(arr):
        where = f"{path} element {i}"
        if not isinstance(e, dict) or "id" not in e or "type" not in e or "truth" not in e:
            raise ValueError(f"{where}: needs 'id', 'type' and 'truth'")
        if e["type"] not in DIMENSIONS:
            raise ValueError(f"{where}: unknown type {e['type']!r}")
        if e["type"] == "generative":
            if not isinstance(e["truth"], list) or not isinstance(e.get("hallu", []), list):
                raise ValueError(f"{where}: generative 'truth'/'hallu' must be lists")
        elif e["truth"] not in ("yes", "no"):
            raise ValueError(f"{where}: discriminative truth must be 'yes'/'no', got {e['truth']!r}")
        if e["id"] in out:
            raise ValueError(f"{where}: id {e['id']} repeats")
        out[e["id"]] = e
    return out


def load_items(
    query_file: str | os.PathLike,
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    prefix: str = "amber/",
    check_images: bool = False,
) -> list[dict]:
    """AMBER items in query-file order. Keys: ``item_id`` (``amber/<id>``), ``image``,
    ``image_path``, ``image_id`` (``AMBER_12.jpg`` -> 12), ``question_id`` (the AMBER id),
    ``question`` (the query), ``label`` (yes/no for discriminative, None for generative),
    ``amber_type`` and ``dimension``."""
    qpath = Path(query_file)
    queries = _read_json(qpath, "query file")
    if not isinstance(queries, list):
        raise ValueError(f"{qpath}: expected a JSON list")
    ann = load_annotations(annotation_file)
    image_dir = Path(image_dir)
    items, seen, missing = [], set(), []
    for i, q in enumerate(queries):
        where = f"{qpath} element {i}"
        if not isinstance(q, dict) or not {"id", "image", "query"} <= set(q):
            raise ValueError(f"{where}: needs 'id', 'image' and 'query'")
        if q["id"] in seen:
            raise ValueError(f"{where}: id {q['id']} repeats")
        seen.add(q["id"])
        if q["id"] not in ann:
            raise ValueError(f"{where}: id {q['id']} is not in {annotation_file}")
        a = ann[q["id"]]
        ipath = image_dir / q["image"]
        if check_images and not ipath.is_file():
            missing.append(str(ipath))
        items.append(
            {
                "item_id": f"{prefix}{q['id']}",
                "image": q["image"],
                "image_path": str(ipath),
                "image_id": image_id_from_name(q["image"]),
                "question_id": q["id"],
                "question": q["query"],
                "label": None if a["type"] == "generative" else a["truth"],
                "amber_type": a["type"],
                "dimension": DIMENSIONS[a["type"]],
            }
        )
    if missing:
        raise FileNotFoundError(
            f"{qpath}: {len(missing)} images missing under {image_dir}, e.g. {missing[:3]}"
        )
    return items


def spacy_similarity(model_path: str | os.PathLike) -> Callable[[str, str], float]:
    """The official similarity: spaCy ``en_core_web_lg`` loaded from ``model_path``,
    ``nlp(a).similarity(nlp(b))`` (docs and pairs cached)."""
    try:
        import spacy
    except ImportError as exc:
        raise ImportError(
            "AMBER's official similarity needs spaCy (pip install spacy) and en_core_web_lg"
        ) from exc
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"spaCy model not found: {path} (en_core_web_lg, installed or unpacked)")
    nlp = spacy.load(str(path))
    doc = functools.lru_cache(maxsize=None)(nlp)

    @functools.lru_cache(maxsize=None)
    def similarity(a: str, b: str) -> float:
        return float(doc(a).similarity(doc(b)))

    return similarity


class AmberEvaluator:
    """Holds the AMBER resources; ``generative(response, annotation)`` scores one caption.

    Args:
        annotation_file, relation_file, safe_words_file: AMBER ``data/`` files.
        nltk_data: NLTK data directory (punkt_tab, averaged_perceptron_tagger_eng, wordnet).
        similarity: ``f(a, b) -> float`` or None (exact matches only).
        threshold: similarity threshold (official ``--similarity_score`` 0.8, strict ``>``).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        relation_file: str | os.PathLike,
        safe_words_file: str | os.PathLike,
        nltk_data: str | os.PathLike,
        similarity: Callable[[str, str], float] | None = None,
        threshold: float = 0.8,
    ):
        self.annotations = load_annotations(annotation_file)
        rel_path = Path(relation_file)
        self.association: dict[str, list[str]] = _read_json(rel_path, "relation file")
        if not isinstance(self.association, dict):
            raise ValueError(f"{rel_path}: expected an object word -> [associated words]")
        vocab: set[str] = set()
        for k, v in self.association.items():
            if not isinstance(v, list):
                raise ValueError(f"{rel_path}: entry {k!r} must be a list")
            vocab.add(k)
            vocab.update(v)
        self.vocabulary = vocab
        sw_path = Path(safe_words_file)
        try:
            with open(sw_path, encoding="utf-8") as fh:
                self.safe_words = {line.split("\n")[0] for line in fh}
        except FileNotFoundError:
            raise FileNotFoundError(f"AMBER safe words file not found: {sw_path}") from None
        self.nltk = NltkTools(nltk_data)
        self.similarity = similarity
        self.threshold = threshold
        self._rel_path = rel_path

    def extract_nouns(self, text: str) -> list[str]:
        tagged = self.nltk.pos_tag(self.nltk.word_tokenize(text))
        return [self.nltk.lemmatize(w) for w, t in tagged if t.startswith("NN")]

    def _expand(self, objects: list[str], aid: Any) -> tuple[list[str], list[int]]:
        """Official list layout: associations of each object (owner = its index), then the
        objects themselves (owner = own index)."""
        words, owner = [], []
        for idx, obj in enumerate(objects):
            if obj not in self.association:
                raise ValueError(f"AMBER id {aid}: object {obj!r} is not a key of {self._rel_path}")
            words += self.association[obj]
            owner += [idx] * len(self.association[obj])
        words += objects
        owner += list(range(len(objects)))
        return words, owner

    def _similar(self, a: str, b: str) -> bool:
        return self.similarity is not None and self.similarity(a, b) > self.threshold

    def generative(self, response: str, annotation: Mapping[str, Any]) -> dict:
        truth, hallu = list(annotation["truth"]), list(annotation.get("hallu", []))
        safe_words, safe_owner = self._expand(truth, annotation["id"])
        ha_words, ha_owner = self._expand(hallu, annotation["id"])
        covered = [0] * len(truth)
        marked = [0] * len(hallu)
        nouns = [n for n in self.extract_nouns(response) if n in self.vocabulary]
        flags = [0] * len(nouns)
        for i, noun in enumerate(nouns):
            if noun in self.safe_words:
                continue
            if noun in safe_words:
                covered[safe_owner[safe_words.index(noun)]] = 1
                continue
            if noun in ha_words:
                marked[ha_owner[ha_words.index(noun)]] = 1
            for j, w in enumerate(ha_words):
                if self._similar(noun, w):
                    marked[ha_owner[j]] = 1
                    break
            safe = False
            for j, w in enumerate(safe_words):
                if self._similar(noun, w):
                    covered[safe_owner[j]] = 1
                    safe = True
                    break
            if not safe:
                flags[i] = 1
        return {
            "hallucinated": int(any(flags)),
            "mentions": len(nouns),
            "hallucinated_mentions": sum(flags),
            "hallucinated_objects": [n for n, f in zip(nouns, flags) if f],
            "covered": sum(covered),
            "truth_objects": len(truth),
            "cog_hits": sum(marked),
            "hallu_objects": len(hallu),
        }


def parse_answer(answer: str, parser: str = "pope") -> str:
    """Map a discriminative answer to what AMBER compares with "Yes"/"No"."""
    if parser == "exact":
        return answer
    if parser == "pope":
        return "Yes" if _pope_parse(answer) == "yes" else "No"
    if parser == "first_word":
        words = answer.strip().lower().split()
        first = words[0].strip(".,!?;:\"'") if words else ""
        return {"yes": "Yes", "no": "No"}.get(first, answer)
    raise ValueError(f"unknown AMBER parser {parser!r}; choose exact, pope or first_word")


def _annotation_of(rec: Mapping[str, Any], ann: Mapping[int, dict]) -> dict:
    aid = rec.get("question_id")
    if aid is None:
        tail = str(rec.get("item_id", "")).rsplit("/", 1)[-1]
        aid = int(tail) if tail.isdigit() else None
    if aid not in ann:
        raise ValueError(f"AMBER record {rec.get('item_id', '?')}: id {aid!r} is not in the annotations")
    return ann[aid]


def score_items(
    records: Iterable[Mapping[str, Any]],
    evaluator: AmberEvaluator,
    parser: str = "pope",
) -> list[dict]:
    """Per-record outcome (records with ``error`` skipped). Generative rows: ``item_id``,
    ``dimension`` ("generative"), ``hallucinated`` (0/1), ``mentions`` (kept nouns),
    ``hallucinated_mentions``, ``hallucinated_objects``, ``covered``, ``truth_objects``, ``cog_hits``, ``hallu_objects``.
    Discriminative rows: ``item_id``, ``dimension``, ``label``, ``pred`` and ``correct``."""
    rows = []
    for rec in records:
        if rec.get("error"):
            continue
        a = _annotation_of(rec, evaluator.annotations)
        answer = rec.get("answer") or ""
        if a["type"] == "generative":
            rows.append(
                {"item_id": rec["item_id"], "dimension": "generative", **evaluator.generative(answer, a)}
            )
        else:
            pred = parse_answer(answer, parser)
            ok = (a["truth"] == "yes" and pred == "Yes") or (a["truth"] == "no" and pred == "No")
            rows.append(
                {
                    "item_id": rec["item_id"],
                    "dimension": DIMENSIONS[a["type"]],
                    "label": a["truth"],
                    "pred": pred,
                    "correct": int(ok),
                }
            )
    return rows


#: What each official counter ``*_num`` starts at (``data/metrics.txt:1-44``).
OFFICIAL_COUNTER_START = 0.001


def _pct(num: float, den: float, official: bool, n_counters: int = 1) -> float:
    """100 * num / den as ``inference.py`` prints it (``official``: den + 0.001 per summed
    counter, rounded to 1 decimal) or exact; nothing to count (den 0) -> 0 either way."""
    if official:  # the official's operation order, so that ties round the same way
        return round(num / (den + OFFICIAL_COUNTER_START * n_counters) * 100, 1)
    return 100.0 * num / den if den else 0.0


def _disc(rows: list[dict], eps: float, rounding: bool, n_counters: int = 1) -> dict[str, float]:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    pred_no = sum(1 for r in rows if r["pred"] == "No")
    pred_no_ok = sum(1 for r in rows if r["pred"] == "No" and r["label"] == "no")
    gt_no = sum(1 for r in rows if r["label"] == "no")
    acc = _pct(correct, n, rounding, n_counters)
    p = _pct(pred_no_ok, pred_no, rounding, n_counters)  # inference.py:271 (ans_no_score / ans_no_num)
    r = _pct(pred_no_ok, gt_no, rounding, n_counters)  # inference.py:272 (no_score / no_num)
    f1 = 2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100  # inference.py:273
    return {"accuracy": acc, "precision": p, "recall": r, "f1": round(f1, 1) if rounding else f1}


def amber_score(chair: float, f1: float) -> float:
    """AMBER score = (100 - CHAIR + F1) / 2 (both in percent)."""
    return 0.5 * (100.0 - chair + f1)


def score(
    records: Iterable[Mapping[str, Any]],
    evaluator: AmberEvaluator,
    parser: str = "pope",
    official_rounding: bool = False,
) -> dict[str, float]:
    """Generative ``chair, cover, hal, cog``; discriminative ``accuracy, precision, recall,
    f1`` (all items) and ``<dimension>/<metric>`` for existence, attribute, state, number,
    action, relation; ``amber_score`` when both parts are present; ``n``, ``n_errors``,
    ``n_generative``, ``n_discriminative``. Metrics of an absent part are omitted."""
    records = list(records)
    n_errors = sum(1 for r in records if r.get("error"))
    rows = score_items(records, evaluator, parser)
    gen = [r for r in rows if r["dimension"] == "generative"]
    dis = [r for r in rows if r["dimension"] != "generative"]
    out: dict[str, float] = {}
    rnd = official_rounding
    if gen:
        kept = sum(r["mentions"] for r in gen)
        truth = sum(r["truth_objects"] for r in gen)
        hallu = sum(r["hallu_objects"] for r in gen)
        # inference.py:259-262; zero kept nouns / truth / hallu objects -> 0 as printed there
        out["chair"] = _pct(sum(r["hallucinated_mentions"] for r in gen), kept, rnd)
        out["cover"] = _pct(sum(r["covered"] for r in gen), truth, rnd)
        clean = sum(1 - r["hallucinated"] for r in gen)
        out["hal"] = (
            round(100 - clean / (len(gen) + OFFICIAL_COUNTER_START) * 100, 1)
            if rnd
            else 100.0 - 100.0 * clean / len(gen)
        )
        out["cog"] = _pct(sum(r["cog_hits"] for r in gen), hallu, rnd)
    if dis:
        out.update(_disc(dis, 1e-4, rnd))
        # (rows, F1 epsilon, official counters summed in each denominator)
        groups = {
            "existence": ([r for r in dis if r["dimension"] == "existence"], 1e-3, 1),  # inference.py:284
            "attribute": ([r for r in dis if r["dimension"] in _ATTRIBUTE], 1e-4, 3),  # inference.py:292-295
            "state": ([r for r in dis if r["dimension"] == "state"], 1e-4, 1),
            "number": ([r for r in dis if r["dimension"] == "number"], 1e-4, 1),
            "action": ([r for r in dis if r["dimension"] == "action"], 1e-4, 1),
            "relation": ([r for r in dis if r["dimension"] == "relation"], 1e-4, 1),
        }
        for name, (grows, eps, n_counters) in groups.items():
            if grows:
                for k, v in _disc(grows, eps, rnd, n_counters).items():
                    out[f"{name}/{k}"] = v
    if gen and dis:
        out["amber_score"] = amber_score(out["chair"], out["f1"])
    out["n"] = float(len(rows))
    out["n_errors"] = float(n_errors)
    out["n_generative"] = float(len(gen))
    out["n_discriminative"] = float(len(dis))
    return out
