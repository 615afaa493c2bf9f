"""POPE construction (Li et al., EMNLP 2023) for any COCO-format instances file.

Follows the official builder (``RUCAIBox/POPE`` ``main.py`` + ``utils.py``), written anew:

1. Each image's object list is its *distinct* category names in annotation order (first
   occurrence). Images with at least ``n_pos`` distinct categories are eligible; ``n_images``
   of them are drawn with ``random.Random(seed).sample`` from the eligible images sorted by id
   (the official script samples with an unseeded ``random.sample``).
2. Category frequency (number of images containing the category) and co-occurrence (number
   of images containing both) are counted over the sampled images, as the official script
   does (``stats="sampled"``), or over every image of the file (``stats="all"``).
3. Per image: positive ``i`` = the ``i``-th object (i < n_pos), each followed by one negative,
   so the labels run y,n,y,n,y,n. A negative is never present in the image nor repeated
   within the image. Strategies:

   * ``random``: uniform over the remaining categories (``random.Random(f"{seed}:random")``);
   * ``popular``: the most frequent remaining category (frequency order);
   * ``adversarial``: the remaining category that co-occurs most often with the *current
     positive* (official rule); falls back to ``random`` when none co-occurs.

   Ties are broken by category id. The candidate pool is the set of categories seen in the
   statistics images (official: ``ground_truth_objects``).
4. Question text: ``"Is there a {} in the image?"``, with "an" before a vowel; question ids
   run from 1; output lines are ``{"question_id", "image", "text", "label"}`` in that order,
   LF line endings, written to ``{prefix}_pope_{strategy}.json`` atomically.

All strategies use the same sampled images and positives.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from vcdflow.io import atomic_path

__all__ = ["build_pope", "load_instances", "pope_question", "STRATEGIES", "TEMPLATE", "main", "cli"]

STRATEGIES = ("random", "popular", "adversarial")
TEMPLATE = "Is there a {} in the image?"


def pope_question(name: str, template: str = TEMPLATE) -> str:
    """The POPE question for ``name``: 'a' → 'an' before a vowel (official ``create_question``)."""
    if name[:1].lower() in "aeiou":
        template = template.replace("a {}", "an {}")
    return template.format(name)


def load_instances(instances_json: str | os.PathLike) -> tuple[dict[int, dict], list[dict], dict[int, str]]:
    """Read and validate a COCO instances file.

    Returns ``(images_by_id, annotations, category_names_by_id)``. Any structural problem
    raises ``ValueError`` naming the file and the offending key/item.
    """
    path = Path(instances_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO instances file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or non-list key {key!r} (not a COCO instances file?)")
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise ValueError(f"{path}: categories[{i}] needs 'id' and a string 'name', got {c!r}")
        cats[c["id"]] = c["name"]
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise ValueError(f"{path}: images[{i}] needs 'id' and a string 'file_name', got {im!r}")
        images[im["id"]] = im
    anns = data["annotations"]
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise ValueError(f"{path}: annotations[{i}] needs 'image_id' and 'category_id', got {a!r}")
        if a["image_id"] not in images:
            raise ValueError(f"{path}: annotations[{i}] refers to unknown image_id {a['image_id']!r}")
        if a["category_id"] not in cats:
            raise ValueError(f"{path}: annotations[{i}] refers to unknown category_id {a['category_id']!r}")
    return images, anns, cats


def _objects_per_image(images: dict, anns: Iterable[dict], cats: dict[int, str]) -> dict[int, list[str]]:
    objs: dict[int, list[str]] = {iid: [] for iid in images}
    for a in anns:
        name = cats[a["category_id"]]
        lst = objs[a["image_id"]]
        if name not in lst:
            lst.append(name)
    return objs


def _ranked(counter: Counter, order: dict[str, int]) -> list[str]:
    return sorted(counter, key=lambda n: (-counter[n], order[n]))


def build_pope(
    instances_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_images: int | None = 500,
    n_pos: int = 3,
    seed: int = 0,
    strategies: Sequence[str] = STRATEGIES,
    prefix: str = "coco",
    stats: str = "sampled",
    template: str = TEMPLATE,
) -> dict:
    """Build POPE question files from ``instances_json`` into ``out_dir``.

    Args:
        n_images: images per split (official 500); ``None`` = every eligible image.
        n_pos: positives (and negatives) per image (official ``sample_num`` = 3).
        seed: seeds the image sample and the random negatives.
        strategies: any of ``random``, ``popular``, ``adversarial``.
        prefix: file prefix, ``{prefix}_pope_{strategy}.json`` (official uses the dataset name).
        stats: ``"sampled"`` (official) or ``"all"``: images used for frequency/co-occurrence.

    Returns a summary dict: files, counts, the sampled image file names, category
    frequencies used by ``popular``.
    """
    path = Path(instances_json)
    strategies = tuple(strategies)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise ValueError(f"unknown POPE strategies {bad or strategies!r}; expected a subset of {STRATEGIES}")
    if stats not in ("sampled", "all"):
        raise ValueError(f"stats must be 'sampled' or 'all', got {stats!r}")
    if n_pos < 1:
        raise ValueError(f"n_pos must be >= 1, got {n_pos}")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}', got {template!r}")

    images, anns, cats = load_instances(path)
    objs = _objects_per_image(images, anns, cats)
    order = {}
    for cid in sorted(cats):
        order.setdefault(cats[cid], cid)

    eligible = sorted(iid for iid, o in objs.items() if len(o) >= n_pos)
    if n_images is None:
        n_images = len(eligible)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if len(eligible) < n_images:
        raise ValueError(
            f"{path}: only {len(eligible)} images have >= {n_pos} distinct categories, "
            f"but n_images={n_images} were requested"
        )
    sampled = random.Random(seed).sample(eligible, n_images)

    stat_ids = sampled if stats == "sampled" else sorted(objs)
    freq: Counter = Counter()
    co: dict[str, Counter] = {}
    for iid in stat_ids:
        o = objs[iid]
        freq.update(o)
        for a in o:
            c = co.setdefault(a, Counter())
            for b in o:
                if b != a:
                    c[b] += 1
    pool = sorted(freq, key=lambda n: order[n])  # categories seen in the statistics images
    popular_rank = _ranked(freq, order)
    co_rank = {a: _ranked(c, order) for a, c in co.items()}

    out = Path(out_dir)
    files: dict[str, str] = {}
    for strategy in strategies:
        rng = random.Random(f"{seed}:{strategy}")
        lines = []
        qid = 1
        for iid in sampled:
            present = objs[iid]
            fname = images[iid]["file_name"]
            used = set(present)
            for i in range(n_pos):
                pos = present[i]
                lines.append(
                    {"question_id": qid, "image": fname, "text": pope_question(pos, template), "label": "yes"}
                )
                qid += 1
                candidates = [n for n in pool if n not in used]
                if not candidates:
                    raise ValueError(
                        f"{path}: image {iid} ({fname}) leaves no absent category for a negative "
                        f"({len(pool)} categories in the statistics images)"
                    )
                neg = None
                if strategy == "popular":
                    neg = next(n for n in popular_rank if n not in used)
                elif strategy == "adversarial":
                    neg = next((n for n in co_rank.get(pos, []) if n not in used), None)
                if neg is None:  # random, or adversarial with nothing co-occurring left
                    neg = rng.choice(candidates)
                used.add(neg)
                lines.append(
                    {"question_id": qid, "image": fname, "text": pope_question(neg, template), "label": "no"}
                )
                qid += 1
        dest = out / f"{prefix}_pope_{strategy}.json"
        with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for q in lines:
                fh.write(json.dumps(q) + "\n")
        files[strategy] = str(dest)

    return {
        "instances": str(path),
        "files": files,
        "n_images": n_images,
        "n_eligible": len(eligible),
        "n_questions": n_images * 2 * n_pos,
        "n_pos": n_pos,
        "seed": seed,
        "stats": stats,
        "images": [images[i]["file_name"] for i in sampled],
        "frequency": {n: freq[n] for n in popular_rank},
    }


def main(instances_json, out_dir, **kwargs) -> dict:
    """Entry point for a Snakemake ``script:`` shim; kwargs as :func:`build_pope`."""
    summary = build_pope(instances_json, out_dir, **kwargs)
    brief = {k: v for k, v in summary.items() if k != "images"}
    print(json.dumps(brief, sort_keys=True))
    return summary


def cli(argv: Sequence[str] | None = None) -> dict:
    """``python -m vcdflow.data.pope_builder INSTANCES OUT_DIR [--n-images N] ...``"""
    p = argparse.ArgumentParser(description="Build POPE question files from COCO instances.")
    p.add_argument("instances_json")
    p.add_argument("out_dir")
    p.add_argument("--n-images", type=int, default=500)
    p.add_argument("--n-pos", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--prefix", default="coco")
    p.add_argument("--stats", choices=("sampled", "all"), default="sampled")
    a = p.parse_args(argv)
    return main(
        a.instances_json,
        a.out_dir,
        n_images=a.n_images,
        n_pos=a.n_pos,
        seed=a.seed,
        strategies=a.strategies,
        prefix=a.prefix,
        stats=a.stats,
    )


if __name__ == "__main__":  # pragma: no cover
    cli()
