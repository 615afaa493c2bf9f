"""Demo AMBER: generative and discriminative AMBER data on the demo world's val split.

Written in the layout of the AMBER repository (junyangwang0410/AMBER ``data/``), which
:func:`vcdflow.metrics.amber.load_items` and :class:`vcdflow.metrics.amber.AmberEvaluator`
read and which the official ``inference.py`` itself could score::

    <out_dir>/data/annotations.json      [{"id", "type", "truth", ["hallu"]}], ids 1..N in order
                                          (inference.py looks entries up as ground_truth[id-1])
    <out_dir>/data/query/query_{all,generative,discriminative,discriminative-existence,
                                discriminative-attribute,discriminative-relation}.json
                                          [{"id", "image", "query"}]
    <out_dir>/data/relation.json         the world's association list: category -> its
                                          one-word synonyms (demo_world.CATEGORIES)
    <out_dir>/data/safe_words.txt        empty: the demo world has no generic object words
    <out_dir>/image/DEMO_val_<id>.png    copies of the chosen val images
    <out_dir>/manifest.json              settings, counts, words outside the demo vocabulary

Per chosen image (``n_images`` of the val split, a seeded sample, in id order):

* generative (ids first, as in AMBER): query ``generative_query``; ``truth`` = the
  annotated categories (category-id order); ``hallu`` = the absent categories of the scene
  groups of those objects -- the co-occurring objects a model with a language prior names
  although they are absent (AMBER's ``hallu`` lists are such likely hallucinations);
* existence (``discriminative-hallucination``): ``existence_pairs`` pairs "Is there a X in
  the image?" with X present (yes) / X from ``hallu`` (no);
* attribute = colour (``discriminative-attribute-state``, the type of AMBER's colour
  questions such as "Is the grass green in this image?"): "Is the cup red in the image?"
  (its colour, :data:`vcdflow.data.demo_mme.COLOR_NAMES`) / another palette colour (no);
* relation = position (``discriminative-relation``): "Is the cup on the left side of the
  fork?" / "... right side ..." (or above / below), as in demo MME; images with one object
  have none.

Ids: generative 1..G, then existence, attribute, relation, each block in image order, yes
before no. All draws come from ``numpy.random.default_rng([seed, 7, image_id])`` (sample:
``default_rng([seed, 7])``), so reruns are byte-identical.

For the demo model (word-level vocabulary, :data:`vcdflow.models.demo.VOCAB_WORDS`) the
generative query and the existence questions are readable; colour and position words are
``<unk>``, so attribute and relation exercise the scorer but measure nothing for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
import numpy as np

from ..io import atomic_write_text, replace_dir, write_json
from .demo_chair import demo_lexicon
from .demo_mme import COLOR_NAMES, PALETTE, DemoScene, load_demo_scenes, position_questions, unknown_words
from .demo_world import CATEGORIES, GROUPS
from .pope_builder import pope_question

__all__ = [
    "AMBER_GENERATIVE_QUERY",
    "QUERY_FILES",
    "association_list",
    "hallu_objects",
    "build_demo_amber",
]

#: AMBER's generative query (``data/query/query_generative.json``).
AMBER_GENERATIVE_QUERY = "Describe this image."
#: Query files of the AMBER repository -> annotation types they hold.
QUERY_FILES: dict[str, tuple[str, ...]] = {
    "all": (
        "generative",
        "discriminative-hallucination",
        "discriminative-attribute-state",
        "discriminative-relation",
    ),
    "generative": ("generative",),
    "discriminative": (
        "discriminative-hallucination",
        "discriminative-attribute-state",
        "discriminative-relation",
    ),
    "discriminative-existence": ("discriminative-hallucination",),
    "discriminative-attribute": ("discriminative-attribute-state",),
    "discriminative-relation": ("discriminative-relation",),
}
_GROUP_OF = {c.name: c.group for c in CATEGORIES}
_ORDER = {c.name: c.id for c in CATEGORIES}
_STREAM = 7  # rng stream id of demo AMBER (demo MME uses 0-3)


def association_list() -> dict[str, list[str]]:
    """``relation.json`` of the demo world: every category -> its one-word, singular synonyms
    (``cup -> [mug]``, ``dog -> [puppy]``; plurals are left out, AMBER lemmatises nouns first,
    and multi-word synonyms cannot match AMBER's one-token nouns)."""
    lexicon = demo_lexicon()
    out = {}
    for c in CATEGORIES:
        out[c.name] = [
            s for s in c.synonyms[1:] if " " not in s and lexicon.get(s, ("NN", s))[0] == "NN" and s != c.name
        ]
    return out


def hallu_objects(scene: DemoScene) -> list[str]:
    """Absent categories of the scene groups of the image's objects, in category-id order."""
    present = set(scene.names)
    groups = {_GROUP_OF[n] for n in present}
    return [n for g in GROUPS if g in groups for n in GROUPS[g] if n not in present]


def _colour_question(name: str, colour: str) -> str:
    return f"Is the {name} {colour} in the image?"


def build_demo_amber(
    instances_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_images: int = 60,
    seed: int = 0,
    existence_pairs: int = 1,
    generative_query: str = AMBER_GENERATIVE_QUERY,
) -> dict:
    """Write demo AMBER (module docstring) under ``out_dir`` and return its manifest.

    The image folder is built in a temporary folder and swapped in complete; the JSON and
    text files are written atomically afterwards (annotations last-but-one, the manifest
    last), so a complete ``manifest.json`` means a complete tree."""
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if int(existence_pairs) != existence_pairs or existence_pairs < 1:
        raise ValueError(f"existence_pairs must be a positive integer, got {existence_pairs!r}")
    scenes = load_demo_scenes(instances_json)
    images_dir, out = Path(images_dir), Path(out_dir)
    k = min(int(n_images), len(scenes))
    pick = np.random.default_rng([int(seed), _STREAM]).choice(len(scenes), size=k, replace=False)
    chosen = [scenes[i] for i in sorted(pick.tolist())]
    for sc in chosen:
        if not (images_dir / sc.file_name).is_file():
            raise FileNotFoundError(
                f"{images_dir / sc.file_name}: image of {instances_json} (id {sc.image_id}) missing"
            )

    generative, existence, attribute, relation = [], [], [], []
    for sc in chosen:
        rng = np.random.default_rng([int(seed), _STREAM, sc.image_id])
        truth = sorted(sc.names, key=_ORDER.__getitem__)
        hallu = hallu_objects(sc)
        generative.append((sc, generative_query, {"type": "generative", "truth": truth, "hallu": hallu}))
        present, absent = list(truth), list(hallu)
        for _ in range(min(int(existence_pairs), len(present), len(absent))):  # no object asked twice
            yes = present.pop(int(rng.integers(len(present))))
            no = absent.pop(int(rng.integers(len(absent))))
            existence.append((sc, pope_question(yes), "yes"))
            existence.append((sc, pope_question(no), "no"))
        opaque = [o for o in sc.objects if o.contrast >= 1.0] or list(sc.objects)
        obj = opaque[int(rng.integers(len(opaque)))]
        true = COLOR_NAMES[obj.name]
        others = [c for c in PALETTE if c != true]
        attribute.append((sc, _colour_question(obj.name, true), "yes"))
        attribute.append((sc, _colour_question(obj.name, others[int(rng.integers(len(others)))]), "no"))
        pair = position_questions(sc, rng)
        if pair is not None:
            relation.append((sc, pair[0], "yes"))
            relation.append((sc, pair[1], "no"))

    annotations, queries = [], {name: [] for name in QUERY_FILES}
    blocks = [(generative, "generative")] + [
        (b, t)
        for b, t in (
            (existence, "discriminative-hallucination"),
            (attribute, "discriminative-attribute-state"),
            (relation, "discriminative-relation"),
        )
    ]
    for block, atype in blocks:
        for entry in block:
            aid = len(annotations) + 1
            sc, query, truth = entry
            ann = {"id": aid, "type": atype, **(truth if atype == "generative" else {"truth": truth})}
            annotations.append(ann)
            q = {"id": aid, "image": sc.file_name, "query": query}
            for name, types in QUERY_FILES.items():
                if atype in types:
                    queries[name].append(q)

    data = out / "data"
    (data / "query").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".image.tmp-", dir=out))
    try:
        tmp.chmod(0o755)
        for sc in chosen:
            shutil.copyfile(images_dir / sc.file_name, tmp / sc.file_name)
        replace_dir(tmp, out / "image")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(data / "relation.json", association_list())
    atomic_write_text(data / "safe_words.txt", "")
    for name, qs in queries.items():
        write_json(data / "query" / f"query_{name}.json", qs)
    write_json(data / "annotations.json", annotations)
    manifest = {
        "instances": str(instances_json),
        "n_images": k,
        "seed": int(seed),
        "existence_pairs": int(existence_pairs),
        "generative_query": generative_query,
        "images": [sc.image_id for sc in chosen],
        "counts": {
            "generative": len(generative),
            "existence": len(existence),
            "attribute": len(attribute),
            "relation": len(relation),
        },
        "unknown_words": {
            "generative": unknown_words([generative_query]),
            "existence": unknown_words([q for _, q, _ in existence]),
            "attribute": unknown_words([q for _, q, _ in attribute]),
            "relation": unknown_words([q for _, q, _ in relation]),
        },
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def main(instances_json, images_dir, out_dir, **kwargs) -> dict:
    """Entry point of the Snakemake ``script:`` shim ``build_demo_amber.py``."""
    import json

    manifest = build_demo_amber(instances_json, images_dir, out_dir, **kwargs)
    print(json.dumps({k: manifest[k] for k in ("counts", "unknown_words")}, sort_keys=True))
    return manifest
