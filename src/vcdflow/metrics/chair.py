"""CHAIR (Rohrbach et al., EMNLP 2018) exactly as OPERA's ``chair.py`` computes it.

Source of the logic: ``shikiw/OPERA/chair.py`` (Python 3 port by Maxlinn of
``LisaAnne/Hallucination/utils/chair.py``; HALC copies it as ``eval/chair.py``).

Caption -> object mentions (``ChairEvaluator.caption_to_words``):

1. ``nltk.word_tokenize(caption.lower())``, ``nltk.pos_tag``, then
   ``WordNetLemmatizer().lemmatize(word, pos)`` with the tag mapped J->ADJ, V->VERB, N->NOUN,
   R->ADV, anything else -> NOUN.
2. Double words, greedy left to right over consecutive pairs: the 29 ``coco_double_words``
   map to themselves, ``baby X`` / ``adult X`` -> X for 12 animal words, ``passenger jet`` ->
   jet, ``passenger train`` -> train, ``bow tie`` -> tie, ``toilet seat`` -> toilet,
   ``wine glas`` -> wine glass.
3. If both ``toilet`` and ``seat`` occur, every ``seat`` is dropped.
4. Keep words in the synonym vocabulary; map each to its node word (first entry of its
   line). Repeats are kept.

The synonyms file is parsed with ``line.strip().split(', ')`` per line, keeping its quirks:
a double space makes the unusable entries ``' motor bike'`` and ``' cheesecake'``, so
``motor bike`` never fires; ``home plate`` and ``train track`` are double words but not
synonyms, so they never fire either.

Ground truth of an image = node words of its instance categories + node words of all its
ground-truth captions (same ``caption_to_words``), as a set. Metrics over captions:

* ``chair_s`` = 100 * #captions with >= 1 mention outside the ground truth / #captions
* ``chair_i`` = 100 * sum(hallucinated mentions) / sum(mentions)   (micro; repeats count)
* ``recall``  = 100 * sum(|correct mentions as a set|) / sum(|ground truth|)   (micro)
* ``length``  = mean number of tokens after the double-word merge (OPERA stores
  0.01 * this and prints it x100, i.e. the same number)

0/0 gives NaN (OPERA raises ``ZeroDivisionError``).

NLTK data: the scorer never downloads. Pass ``nltk_data``, a directory holding the
packages ``punkt_tab`` (``tokenizers/punkt_tab/english/``), ``averaged_perceptron_tagger_eng``
(``taggers/averaged_perceptron_tagger_eng/``) and ``wordnet`` (``corpora/wordnet`` or
``corpora/wordnet.zip``); ``nltk.data.path`` is set to that directory only. Tests and the
demo world build such a directory with :func:`vcdflow.metrics.nltk_mini.build_mini_nltk_data`.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_PROMPT",
    "NLTK_PACKAGES",
    "NltkDataMissing",
    "NltkTools",
    "ChairEvaluator",
    "read_synonyms",
    "load_items",
    "read_id_list",
    "score_items",
    "score",
]

DEFAULT_PROMPT = "Please describe this image in detail."

#: package name -> resource path that NLTK 3.10 looks up for it.
NLTK_PACKAGES = {
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
    "wordnet": "corpora/wordnet/",  # also finds corpora/wordnet.zip
}

# OPERA chair.py hard-coded rules (order and duplicates as in the source).
COCO_DOUBLE_WORDS = [
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "hot dog",
    "teddy bear",
    "home plate",
    "train track",
]
ANIMAL_WORDS = [
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
]
VEHICLE_WORDS = ["jet", "train"]


# ----------------------------------------------------------------------------------------
# NLTK with an explicit data directory
# ----------------------------------------------------------------------------------------
class NltkDataMissing(LookupError):
    """A required NLTK data package is not in the given ``nltk_data`` directory."""


_ACTIVE_ROOT: str | None = None


class NltkTools:
    """The real NLTK functions bound to one data directory (never downloads).

    ``word_tokenize`` and ``pos_tag`` are ``nltk.word_tokenize`` / ``nltk.pos_tag``; their
    process-wide caches (``_get_punkt_tokenizer``, ``_get_tagger``) are cleared whenever a
    different directory becomes active, so two data directories can be used in one process.
    ``lemmatize`` is ``WordNetLemmatizer.lemmatize`` on a ``WordNetCorpusReader`` built from
    this directory (the same reader class ``nltk.corpus.wordnet`` lazily creates).
    """

    def __init__(self, nltk_data: str | os.PathLike, packages: Iterable[str] = tuple(NLTK_PACKAGES)):
        root = Path(nltk_data).expanduser()
        if not root.is_dir():
            raise NltkDataMissing(
                f"NLTK data directory {root} does not exist; it must hold the packages "
                f"{', '.join(NLTK_PACKAGES)} (scoring never downloads)"
            )
        self.root = str(root.resolve())
        packages = tuple(packages)
        self._activate()
        import nltk

        for pkg in packages:
            resource = NLTK_PACKAGES[pkg]
            try:
                nltk.data.find(resource, paths=[self.root])
            except LookupError:
                raise NltkDataMissing(
                    f"NLTK data package {pkg!r} ({resource}) not found in {self.root}; install the "
                    f"pinned packages with vcdflow.data.nltk_packages.install_nltk_data({self.root!r}) "
                    f"(or `python -m nltk.downloader -d {self.root} {pkg}`); scoring never downloads"
                ) from None
        self._lemmatizer = None
        if "wordnet" in packages:
            self._lemmatizer = self._make_lemmatizer()

    def _activate(self) -> None:
        global _ACTIVE_ROOT
        import nltk
        import nltk.tag
        import nltk.tokenize

        nltk.data.path[:] = [self.root]
        if _ACTIVE_ROOT != self.root:
            nltk.tokenize._get_punkt_tokenizer.cache_clear()
            nltk.tag._get_tagger.cache_clear()
            _ACTIVE_ROOT = self.root

    def _make_lemmatizer(self):
        import nltk
        from nltk.corpus.reader import CorpusReader
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
        from nltk.corpus.util import LazyCorpusLoader
        from nltk.stem import WordNetLemmatizer

        # Same lookup order as LazyCorpusLoader("wordnet"): the zip first, then the folder.
        try:
            wn_root = nltk.data.find("corpora/wordnet.zip/wordnet/", paths=[self.root])
        except LookupError:
            wn_root = nltk.data.find("corpora/wordnet/", paths=[self.root])
        omw = LazyCorpusLoader("omw-2.0", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
        reader = WordNetCorpusReader(wn_root, omw)

        class _BoundLemmatizer(WordNetLemmatizer):
            def _morphy(self, form, pos, check_exceptions=True):
                return reader._morphy(form, pos, check_exceptions)

        lem = _BoundLemmatizer()
        lem.wordnet = reader
        return lem

    def word_tokenize(self, text: str) -> list[str]:
        import nltk

        self._activate()
        return nltk.word_tokenize(text)

    def pos_tag(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        import nltk

        self._activate()
        return nltk.pos_tag(list(tokens))

    def lemmatize(self, word: str, pos: str = "n") -> str:
        if self._lemmatizer is None:
            raise NltkDataMissing(f"{self.root}: NltkTools built without wordnet")
        self._activate()
        return self._lemmatizer.lemmatize(word, pos)


# ----------------------------------------------------------------------------------------
# Synonyms and ids
# ----------------------------------------------------------------------------------------
def read_synonyms(path: str | os.PathLike) -> list[list[str]]:
    """CHAIR synonyms file -> list of lines, each ``line.strip().split(', ')`` (quirks kept)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"CHAIR synonyms file not found: {path}") from None
    lines = [line.strip().split(", ") for line in text.splitlines()]
    if not any(line != [""] for line in lines):
        raise ValueError(f"{path}: CHAIR synonyms file has no entries")
    return lines


def _norm_id(x: Any) -> Any:
    """COCO image ids are ints; accept digit strings too."""
    if isinstance(x, bool):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and x.strip().isdigit():
        return int(x.strip())
    return x


def _as_paths(x) -> list[Path]:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [Path(x)]
    return [Path(p) for p in x]


def _load_coco(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict) or "annotations" not in obj:
        raise ValueError(f"{path}: not a COCO-format file (no 'annotations' key)")
    return obj


# ----------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------
class ChairEvaluator:
    """OPERA ``CHAIR`` with explicit synonyms, annotation files and NLTK data.

    Args:
        synonyms: CHAIR synonyms file (COCO: ``data/synonyms.txt``, md5
            fdf03d16beb2507696d1b881c958904d; the demo world has its own).
        nltk_data: NLTK data directory (see module docstring).
        instances: COCO-format instances file(s) (OPERA loads ``instances_{train,val}2014``).
        captions: COCO-format captions file(s) (OPERA loads ``captions_{train,val}2014``).

    Ground truth is computed lazily per image (same result as OPERA's eager pass over
    every image) and cached.
    """

    def __init__(
        self,
        synonyms: str | os.PathLike,
        nltk_data: str | os.PathLike,
        instances: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        captions: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    ):
        self.synonyms_path = Path(synonyms)
        self.nltk = NltkTools(nltk_data)
        lines = read_synonyms(synonyms)
        self.mscoco_objects: list[str] = []
        self.inverse_synonym_dict: dict[str, str] = {}
        for line in lines:
            self.mscoco_objects.extend(line)
            for s in line:
                self.inverse_synonym_dict[s] = line[0]
        self._vocab = set(self.mscoco_objects)

        self.double_word_dict: dict[str, str] = {w: w for w in COCO_DOUBLE_WORDS}
        for a in ANIMAL_WORDS:
            self.double_word_dict[f"baby {a}"] = a
            self.double_word_dict[f"adult {a}"] = a
        for v in VEHICLE_WORDS:
            self.double_word_dict[f"passenger {v}"] = v
        self.double_word_dict["bow tie"] = "tie"
        self.double_word_dict["toilet seat"] = "toilet"
        self.double_word_dict["wine glas"] = "wine glass"

        self._segments: dict[Any, list[str]] = defaultdict(list)
        self._gt_captions: dict[Any, list[str]] = defaultdict(list)
        self.known_images: set[Any] = set()
        for path in _as_paths(instances):
            coco = _load_coco(path)
            id_to_name = {c["id"]: c["name"] for c in coco.get("categories", [])}
            for img in coco.get("images", []):
                self.known_images.add(_norm_id(img["id"]))
            for i, ann in enumerate(coco["annotations"]):
                try:
                    name = id_to_name[ann["category_id"]]
                except KeyError:
                    raise ValueError(
                        f"{path}: annotations[{i}] has unknown category_id {ann.get('category_id')!r}"
                    ) from None
                if name not in self.inverse_synonym_dict:
                    raise ValueError(
                        f"{path}: category {name!r} is not an entry of the synonyms file {self.synonyms_path}"
                    )
                imid = _norm_id(ann["image_id"])
                self._segments[imid].append(self.inverse_synonym_dict[name])
                self.known_images.add(imid)
        for path in _as_paths(captions):
            coco = _load_coco(path)
            for img in coco.get("images", []):
                self.known_images.add(_norm_id(img["id"]))
            for i, ann in enumerate(coco["annotations"]):
                if "caption" not in ann or "image_id" not in ann:
                    raise ValueError(f"{path}: annotations[{i}] lacks 'image_id' or 'caption'")
                imid = _norm_id(ann["image_id"])
                self._gt_captions[imid].append(ann["caption"])
                self.known_images.add(imid)
        self._gt_cache: dict[Any, frozenset[str]] = {}

    # -- OPERA caption_to_words ----------------------------------------------------------
    @staticmethod
    def wordnet_pos(tag: str) -> str:
        if tag.startswith("J"):
            return "a"
        if tag.startswith("V"):
            return "v"
        if tag.startswith("N"):
            return "n"
        if tag.startswith("R"):
            return "r"
        return "n"

    def caption_to_words(self, caption: str) -> tuple[list[str], list[str], list[int], list[str]]:
        """Return (synonym words, node words, their token indices, tokens after the merge)."""
        tokens = self.nltk.word_tokenize(caption.lower())
        tagged = self.nltk.pos_tag(tokens)
        words = [self.nltk.lemmatize(w, self.wordnet_pos(t)) for w, t in tagged]

        merged: list[str] = []
        idxs: list[int] = []
        i = 0
        while i < len(words):
            idxs.append(i)
            pair = " ".join(words[i : i + 2])
            if pair in self.double_word_dict:
                merged.append(self.double_word_dict[pair])
                i += 2
            else:
                merged.append(words[i])
                i += 1
        raw_words = merged
        words = merged
        if "toilet" in words and "seat" in words:
            words = [w for w in words if w != "seat"]
        # OPERA indexes idxs by the position in the (possibly seat-filtered) list.
        keep = [k for k, w in enumerate(words) if w in self._vocab]
        idxs = [idxs[k] for k in keep]
        words = [words[k] for k in keep]
        node_words = [self.inverse_synonym_dict[w] for w in words]
        return words, node_words, idxs, raw_words

    def gt_objects(self, image_id: Any) -> frozenset[str]:
        """Node words of the instances plus those of every ground-truth caption."""
        imid = _norm_id(image_id)
        if imid not in self._gt_cache:
            objs = list(self._segments.get(imid, []))
            for cap in self._gt_captions.get(imid, []):
                objs.extend(self.caption_to_words(cap)[1])
            self._gt_cache[imid] = frozenset(objs)
        return self._gt_cache[imid]

    def evaluate_caption(self, image_id: Any, caption: str, *, allow_unknown: bool = False) -> dict:
        imid = _norm_id(image_id)
        if not allow_unknown and imid not in self.known_images:
            raise KeyError(
                f"image_id {image_id!r} is in no instances/captions file given to ChairEvaluator "
                f"(OPERA would treat its ground truth as empty; pass allow_unknown=True for that)"
            )
        words, node_words, _idxs, raw_words = self.caption_to_words(caption)
        gt = self.gt_objects(imid)
        hallucinated = [nw for nw in node_words if nw not in gt]
        recalled = {nw for nw in node_words if nw in gt}
        return {
            "image_id": image_id,
            "hallucinated": int(bool(hallucinated)),
            "mentions": len(node_words),
            "hallucinated_mentions": len(hallucinated),
            "gt_objects": len(gt),
            "recalled_objects": len(recalled),
            "length": len(raw_words),
            "mentioned_objects": node_words,
            "hallucinated_objects": hallucinated,
        }


# ----------------------------------------------------------------------------------------
# Items for decoding
# ----------------------------------------------------------------------------------------
def read_id_list(path: str | os.PathLike) -> list[Any]:
    """Image ids from a ``.txt`` (one id or file name per line), ``.json`` (list of ids or of
    ``{"image_id": ...}``) or ``.jsonl`` (``{"image_id": ...}`` per line, e.g. OPERA's
    ``log/chair_eval_results/*/*.jsonl``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    ids: list[Any] = []
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(obj, list):
            raise ValueError(f"{path}: expected a JSON list of image ids")
        for i, x in enumerate(obj):
            if isinstance(x, dict):
                if "image_id" not in x:
                    raise ValueError(f"{path}: element {i} has no 'image_id'")
                x = x["image_id"]
            ids.append(_norm_id(x))
    elif path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(obj, dict) or "image_id" not in obj:
                raise ValueError(f"{path}:{lineno}: expected an object with 'image_id'")
            ids.append(_norm_id(obj["image_id"]))
    else:
        for line in text.splitlines():
            line = line.strip()
            if line:
                ids.append(_norm_id(line))
    if not ids:
        raise ValueError(f"{path}: no image ids")
    return ids


def load_items(
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    n: int | None = 500,
    seed: int = 0,
    id_list: str | os.PathLike | Sequence[Any] | None = None,
    prompt: str = DEFAULT_PROMPT,
    prefix: str = "chair/",
    check_images: bool = False,
    rule: str = "sample",
) -> list[dict]:
    """CHAIR captioning items: one per image.

    The image list comes from the ``images`` of a COCO-format file (captions or instances),
    in file order. Selection:

    * ``id_list`` (a file, see :func:`read_id_list`, or a sequence of ids / file names):
      exactly those images, in that order;
    * otherwise ``random.Random(seed).sample(ids_in_file_order, n)`` -- the same images as
      HALC's ``random.seed(seed); random.sample(COCO(captions).getImgIds(), n)`` when
      ``annotations`` is ``captions_val2014.json``; ``n=None`` takes every image in file order;
    * ``rule`` ``shuffle`` / ``shuffle_choice``: a paper's own seeded draw over the file names
      (:func:`vcdflow.data.chair_subsets.select`; not the official images exactly: those depend
      on ``os.listdir`` order).

    Item keys: ``item_id`` (``prefix + str(image_id)``), ``image`` (file name),
    ``image_path``, ``image_id``, ``question_id`` (None), ``question`` (``prompt``),
    ``label`` (None).
    """
    path = Path(annotations)
    coco = _load_coco(path)
    images = coco.get("images")
    if not images:
        raise ValueError(f"{path}: no 'images' list")
    by_id: dict[Any, dict] = {}
    by_name: dict[str, dict] = {}
    order: list[Any] = []
    for i, img in enumerate(images):
        if "id" not in img or "file_name" not in img:
            raise ValueError(f"{path}: images[{i}] lacks 'id' or 'file_name'")
        imid = _norm_id(img["id"])
        if imid in by_id:
            raise ValueError(f"{path}: images[{i}] repeats image id {img['id']!r}")
        by_id[imid] = img
        by_name[img["file_name"]] = img
        order.append(imid)

    if id_list is not None:
        src = str(id_list) if isinstance(id_list, (str, os.PathLike)) else "id_list"
        wanted = (
            read_id_list(id_list)
            if isinstance(id_list, (str, os.PathLike))
            else [_norm_id(x) for x in id_list]
        )
        chosen = []
        for k, x in enumerate(wanted):
            img = by_id.get(x) or by_name.get(str(x))
            if img is None:
                raise ValueError(f"{src}: entry {k + 1} ({x!r}) is not an image of {path}")
            chosen.append(_norm_id(img["id"]))
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"{src}: repeats an image id")
    elif n is None:
        chosen = order
    elif rule != "sample":
        from ..data.chair_subsets import select

        name_to_id = {img["file_name"]: imid for imid, img in by_id.items()}
        chosen = [name_to_id[f] for f in select(list(name_to_id), rule, seed, n)]
    else:
        if n > len(order):
            raise ValueError(f"{path}: asked for n={n} images but the file has {len(order)}")
        chosen = random.Random(seed).sample(order, n)

    image_dir = Path(image_dir)
    items = []
    missing = []
    for imid in chosen:
        img = by_id[imid]
        ipath = image_dir / img["file_name"]
        if check_images and not ipath.is_file():
            missing.append(str(ipath))
        items.append(
            {
                "item_id": f"{prefix}{imid}",
                "image": img["file_name"],
                "image_path": str(ipath),
                "image_id": imid,
                "question_id": None,
                "question": prompt,
                "label": None,
            }
        )
    if missing:
        raise FileNotFoundError(f"{len(missing)} CHAIR images missing under {image_dir}, e.g. {missing[:3]}")
    return items


# ----------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------
def _get_evaluator(evaluator: ChairEvaluator | None, kwargs: Mapping[str, Any]) -> ChairEvaluator:
    if evaluator is not None:
        if kwargs:
            raise TypeError(f"pass either evaluator or its arguments, not both: {sorted(kwargs)}")
        return evaluator
    if "synonyms" not in kwargs or "nltk_data" not in kwargs:
        raise TypeError(
            "CHAIR scoring needs evaluator=ChairEvaluator(...) or synonyms=, nltk_data=, instances=, captions="
        )
    return ChairEvaluator(**kwargs)


def score_items(
    records: Iterable[Mapping[str, Any]],
    evaluator: ChairEvaluator | None = None,
    *,
    allow_unknown: bool = False,
    **evaluator_kwargs: Any,
) -> list[dict]:
    """Per-caption outcomes for every record without ``error``.

    Each row: ``item_id``, ``image_id``, ``hallucinated`` (0/1), ``mentions`` (node-word
    mentions incl. repeats), ``hallucinated_mentions``, ``gt_objects`` (|ground truth|),
    ``recalled_objects`` (|correct mentions as a set|), ``length`` (tokens after the
    double-word merge), ``mentioned_objects`` and ``hallucinated_objects`` (node words,
    repeats kept). Records need ``item_id``, ``image_id`` and ``answer`` (the caption).
    """
    ev = _get_evaluator(evaluator, evaluator_kwargs)
    rows = []
    for k, rec in enumerate(records):
        if rec.get("error"):
            continue
        for key in ("item_id", "image_id", "answer"):
            if key not in rec:
                raise KeyError(f"CHAIR record {k} ({rec.get('item_id', '?')}) lacks {key!r}")
        try:
            row = ev.evaluate_caption(rec["image_id"], rec["answer"] or "", allow_unknown=allow_unknown)
        except KeyError as exc:
            raise KeyError(f"CHAIR record {rec['item_id']}: {exc.args[0]}") from None
        rows.append({"item_id": rec["item_id"], **row})
    return rows


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else math.nan


def score(
    records: Iterable[Mapping[str, Any]],
    evaluator: ChairEvaluator | None = None,
    *,
    allow_unknown: bool = False,
    **evaluator_kwargs: Any,
) -> dict[str, float]:
    """``chair_s``, ``chair_i``, ``recall`` (percent), ``length`` (mean tokens), ``n``
    (captions scored) and ``n_errors`` (records with ``error`` set, excluded)."""
    records = list(records)
    n_errors = sum(1 for r in records if r.get("error"))
    rows = score_items(records, evaluator, allow_unknown=allow_unknown, **evaluator_kwargs)
    n = len(rows)
    return {
        "chair_s": _pct(sum(r["hallucinated"] for r in rows), n),
        "chair_i": _pct(sum(r["hallucinated_mentions"] for r in rows), sum(r["mentions"] for r in rows)),
        "recall": _pct(sum(r["recalled_objects"] for r in rows), sum(r["gt_objects"] for r in rows)),
        "length": (sum(r["length"] for r in rows) / n) if n else math.nan,
        "n": float(n),
        "n_errors": float(n_errors),
    }
