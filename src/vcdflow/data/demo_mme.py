"""Demo MME: yes/no question pairs on the demo world's val split, in MME's release layout.

The demo world (:mod:`vcdflow.data.demo_world`) can express four of MME's subtasks, the
four of the hallucination subset (existence, count, position, color; max 800):

* ``existence`` -- "Is there a cup in the image?" (yes: an annotated category; no: an
  absent one, drawn uniformly);
* ``count`` -- objects in the scene (1-3; categories never repeat inside a demo image, so
  per-category counts would always be one): "Are there two objects in the image?" (yes: the
  true number; no: another of 1-3);
* ``position`` -- two objects whose boxes are apart horizontally ("Is the cup on the left
  side of the fork?" / "... on the right side ...") or, failing that, vertically ("Is the cup
  above the fork?" / "... below ..."); images with one object are not used;
* ``color`` -- every category has one colour (:data:`COLOR_NAMES`): "Is there a red cup in
  the image?" (yes) / "Is there a blue cup in the image?" (no: another colour of the
  palette); a fully opaque object is preferred over a faint one.

Each image has exactly two questions, the "yes" one first (as in MME's own files, e.g.
``eval_tool/Your_Results/existence.txt`` of BradyFU's ``tools/eval_tool.zip``), each ending
in ``suffix`` (MME's " Please answer yes or no." by default; see Vocabulary below). The stems follow the
demo model's training template for existence ("Is there a X in the image?", the POPE
template :data:`vcdflow.data.pope_builder.TEMPLATE`) rather than MME's "in this image".

Layout written (``vcdflow.metrics.mme.load_items(out_dir, subtasks=...)`` reads it; MME's
side-by-side layout of these four subtasks)::

    <out_dir>/<subtask>/DEMO_val_<id>.png    copy of the val image
    <out_dir>/<subtask>/DEMO_val_<id>.txt    "question<TAB>Yes\\nquestion<TAB>No\\n"
    <out_dir>/manifest.json                  settings, images per subtask, the words each
                                             subtask's questions use outside the demo
                                             model's vocabulary

Everything is a pure function of the val annotations and ``seed``: subtask ``s`` draws its
images and questions from ``numpy.random.default_rng([seed, k])`` with ``k`` the index of
``s`` in :data:`DEMO_SUBTASKS`.

Vocabulary: the demo model reads words outside :data:`vcdflow.models.demo.VOCAB_WORDS` as
``<unk>``. Existence stems are fully readable (only MME's suffix adds ``or``); counts
(``two``, ``objects``, ...), positions (``left``, ``side``, ...) and colours (``red``, ...)
are not, so for the demo model only ``existence`` measures anything -- the other three
exercise the pipeline and score near chance. :func:`unknown_words` lists them. Measured with
the demo model of ``make demo``'s settings (greedy, 30 images per subtask, seed 0): existence
140 of 200 with MME's suffix, 170 with the bare stem, 175 with the POPE suffix "Please answer
this question with one word." (which the model was trained on); count 48-53, position 50,
color 50-53 whatever the suffix (the same answer to both questions of a pair: acc 50, acc+ 0).
So the workflow's rule ``build_demo_mme`` writes bare stems (``suffix=""``) and the demo
config appends the POPE suffix through ``benchmarks.mme.prompt``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_write_text, replace_dir, write_json
from .demo_world import CATEGORIES, article
from .pope_builder import load_instances, pope_question

__all__ = [
    "DEMO_SUBTASKS",
    "MME_SUFFIX",
    "COLOR_NAMES",
    "PALETTE",
    "DemoObject",
    "DemoScene",
    "load_demo_scenes",
    "position_pair",
    "existence_pair",
    "count_pair",
    "position_questions",
    "color_pair",
    "unknown_words",
    "build_demo_mme",
]

#: The MME subtasks the demo world can express, in MME's order.
DEMO_SUBTASKS = ("existence", "count", "position", "color")
#: MME's question suffix (every question of the release ends with it).
MME_SUFFIX = " Please answer yes or no."
#: The colour name of each demo category (its ``Category.color``, see ``demo_world.CATEGORIES``).
COLOR_NAMES: dict[str, str] = {
    "cup": "red",
    "plate": "white",
    "fork": "gray",
    "apple": "green",
    "ball": "yellow",
    "bat": "brown",
    "kite": "pink",
    "racket": "orange",
    "dog": "brown",
    "cat": "black",
    "bird": "blue",
    "tree": "green",
}
#: Colour names the questions use, in a fixed order.
PALETTE = tuple(dict.fromkeys(COLOR_NAMES[c.name] for c in CATEGORIES))
_NUMBERS = {1: "one", 2: "two", 3: "three"}
_BY_NAME = {c.name: c for c in CATEGORIES}


@dataclass(frozen=True)
class DemoObject:
    name: str
    bbox: tuple[float, float, float, float]  # COCO x, y, w, h
    contrast: float = 1.0


@dataclass(frozen=True)
class DemoScene:
    image_id: int
    file_name: str
    scene: str  # the image's scene group
    objects: tuple[DemoObject, ...]  # annotation order, one per category

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]


def load_demo_scenes(instances_json: str | os.PathLike) -> list[DemoScene]:
    """The images of a demo-world instances file, sorted by id, with their objects.

    Raises ``ValueError`` naming the file if a category is not one of the demo world's
    (these builders rely on its one-colour-per-category design) or an image has no object.
    """
    images, anns, cats = load_instances(instances_json)
    bad = sorted(set(cats.values()) - set(_BY_NAME))
    if bad:
        raise ValueError(
            f"{instances_json}: categories {bad} are not demo-world categories ({', '.join(_BY_NAME)})"
        )
    objs: dict[int, list[DemoObject]] = {iid: [] for iid in images}
    for i, a in enumerate(anns):
        name = cats[a["category_id"]]
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise ValueError(f"{instances_json}: annotations[{i}] needs a bbox [x, y, w, h], got {bbox!r}")
        if name not in [o.name for o in objs[a["image_id"]]]:
            objs[a["image_id"]].append(
                DemoObject(name, tuple(float(v) for v in bbox), float(a.get("contrast", 1.0)))
            )
    scenes = []
    for iid in sorted(images):
        if not objs[iid]:
            raise ValueError(f"{instances_json}: image {iid} has no annotated object")
        im = images[iid]
        scenes.append(DemoScene(iid, im["file_name"], str(im.get("scene", "")), tuple(objs[iid])))
    return scenes


# --------------------------------------------------------------------------- questions


def existence_pair(scene: DemoScene, rng: np.random.Generator) -> tuple[str, str]:
    """(yes, no) stems: a present category, an absent one (uniform)."""
    present = scene.names
    absent = [c.name for c in CATEGORIES if c.name not in present]
    yes = present[int(rng.integers(len(present)))]
    no = absent[int(rng.integers(len(absent)))]
    return pope_question(yes), pope_question(no)


def _count_question(n: int) -> str:
    if n == 1:
        return "Is there one object in the image?"
    return f"Are there {_NUMBERS[n]} objects in the image?"


def count_pair(scene: DemoScene, rng: np.random.Generator) -> tuple[str, str]:
    """(yes, no) stems about the number of objects (1-3)."""
    n = len(scene.objects)
    if n not in _NUMBERS:
        raise ValueError(f"image {scene.image_id}: {n} objects; the demo count questions cover 1-3")
    wrong = [k for k in _NUMBERS if k != n]
    return _count_question(n), _count_question(wrong[int(rng.integers(len(wrong)))])


def position_pair(a: DemoObject, b: DemoObject) -> tuple[str, str] | None:
    """The relation of ``a`` to ``b`` and its opposite, from the boxes: ``("left", "right")``
    when ``a`` ends left of where ``b`` starts (``("right", "left")`` the other way round),
    else ``("above", "below")`` / ``("below", "above")`` vertically, else None (boxes overlap
    on both axes; never for two demo objects, which sit in different grid cells)."""
    ax, ay, aw, ah = a.bbox
    bx, by, bw, bh = b.bbox
    if ax + aw <= bx:
        return "left", "right"
    if bx + bw <= ax:
        return "right", "left"
    if ay + ah <= by:
        return "above", "below"
    if by + bh <= ay:
        return "below", "above"
    return None


def _position_question(a: str, b: str, rel: str) -> str:
    if rel in ("left", "right"):
        return f"Is the {a} on the {rel} side of the {b}?"
    return f"Is the {a} {rel} the {b}?"


def position_questions(scene: DemoScene, rng: np.random.Generator) -> tuple[str, str] | None:
    """(yes, no) stems about two objects of the scene; pairs apart horizontally are
    preferred; None for a scene with fewer than two objects."""
    pairs = []
    for a, b in itertools.permutations(scene.objects, 2):
        rel = position_pair(a, b)
        if rel is not None:
            pairs.append((a, b, rel))
    if not pairs:
        return None
    horizontal = [p for p in pairs if p[2][0] in ("left", "right")]
    pool = horizontal or pairs
    a, b, (true, false) = pool[int(rng.integers(len(pool)))]
    return _position_question(a.name, b.name, true), _position_question(a.name, b.name, false)


def _color_question(color: str, name: str) -> str:
    return f"Is there {article(color)} {color} {name} in the image?"


def color_pair(scene: DemoScene, rng: np.random.Generator) -> tuple[str, str]:
    """(yes, no) stems: an object (fully opaque ones preferred) in its colour and in another
    colour of :data:`PALETTE`."""
    opaque = [o for o in scene.objects if o.contrast >= 1.0]
    pool = opaque or list(scene.objects)
    obj = pool[int(rng.integers(len(pool)))]
    true = COLOR_NAMES[obj.name]
    others = [c for c in PALETTE if c != true]
    return _color_question(true, obj.name), _color_question(others[int(rng.integers(len(others)))], obj.name)


def unknown_words(texts: Sequence[str], vocabulary: Sequence[str] | None = None) -> list[str]:
    """Words of ``texts`` outside ``vocabulary`` (default: the demo model's
    :data:`vcdflow.models.demo.VOCAB_WORDS`), lower-cased and split like the demo tokenizer
    (whitespace, then punctuation isolated), in first-seen order: what the demo model reads
    as ``<unk>``."""
    from tokenizers import pre_tokenizers

    if vocabulary is None:
        from ..models.demo import VOCAB_WORDS as vocabulary
    split = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    known = {w.lower() for w in vocabulary}
    out: dict[str, None] = {}
    for text in texts:
        for word, _span in split.pre_tokenize_str(text.lower()):
            if word not in known:
                out.setdefault(word)
    return list(out)


_PAIRS = {
    "existence": existence_pair,
    "count": count_pair,
    "position": position_questions,
    "color": color_pair,
}


# --------------------------------------------------------------------------- writing


def build_demo_mme(
    instances_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_images: int = 30,
    seed: int = 0,
    subtasks: Sequence[str] = DEMO_SUBTASKS,
    suffix: str = MME_SUFFIX,
) -> dict:
    """Write demo MME (module docstring) for the scenes of ``instances_json`` (the val split)
    whose images are in ``images_dir``; ``n_images`` images per subtask (all eligible ones if
    fewer: position needs two objects). ``out_dir`` is built in a temporary folder beside it
    and swapped in complete. Returns the manifest (also written as ``manifest.json``)."""
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    bad = [s for s in subtasks if s not in DEMO_SUBTASKS]
    if bad or not subtasks:
        raise ValueError(f"demo MME subtasks must be among {list(DEMO_SUBTASKS)}, got {list(subtasks)}")
    scenes = load_demo_scenes(instances_json)
    images_dir, out = Path(images_dir), Path(out_dir)
    for sc in scenes:
        if not (images_dir / sc.file_name).is_file():
            raise FileNotFoundError(
                f"{images_dir / sc.file_name}: image of {instances_json} (id {sc.image_id}) missing"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    manifest = {
        "instances": str(instances_json),
        "n_images": int(n_images),
        "seed": int(seed),
        "suffix": suffix,
        "subtasks": {},
    }
    try:
        tmp.chmod(0o755)
        for sub in subtasks:
            rng = np.random.default_rng([int(seed), DEMO_SUBTASKS.index(sub)])
            make = _PAIRS[sub]
            eligible = [sc for sc in scenes if sub != "position" or len(sc.objects) >= 2]
            k = min(int(n_images), len(eligible))
            picked = sorted(rng.choice(len(eligible), size=k, replace=False).tolist()) if k else []
            folder = tmp / sub
            folder.mkdir()
            questions = []
            for idx in picked:
                sc = eligible[idx]
                pair = make(sc, rng)
                if pair is None:  # pragma: no cover - eligible scenes always give a pair
                    raise ValueError(f"image {sc.image_id}: no {sub} question")
                yes, no = (q + suffix for q in pair)
                if yes == no:  # pragma: no cover - guarded by construction
                    raise ValueError(f"image {sc.image_id}: identical {sub} questions {yes!r}")
                stem = Path(sc.file_name).stem
                shutil.copyfile(images_dir / sc.file_name, folder / sc.file_name)
                atomic_write_text(folder / f"{stem}.txt", f"{yes}\tYes\n{no}\tNo\n")
                questions += [yes, no]
            manifest["subtasks"][sub] = {
                "images": [eligible[i].image_id for i in picked],
                "questions": len(questions),
                "unknown_words": unknown_words(questions),
            }
        write_json(tmp / "manifest.json", manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(instances_json, images_dir, out_dir, **kwargs) -> dict:
    """Entry point of the Snakemake ``script:`` shim ``build_demo_mme.py``."""
    import json

    manifest = build_demo_mme(instances_json, images_dir, out_dir, **kwargs)
    print(
        json.dumps(
            {s: {k: v for k, v in m.items() if k != "images"} for s, m in manifest["subtasks"].items()},
            sort_keys=True,
        )
    )
    return manifest
