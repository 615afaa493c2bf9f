"""The embedded demo world: procedural scenes written as a small COCO-format dataset.

A fresh machine with no downloads can still run every benchmark of the project on this
world. Each image is a ``image_size``×``image_size`` RGB picture with 1–3 coloured glyphs
("objects") on a 3×3 grid over a varied background; ``FAINT_P`` of the objects are drawn
faintly (opacity in ``FAINT_RANGE``, recorded as the annotation's extra ``contrast`` key). Twelve categories, each with its own
shape *and* colour, form three scene groups of four (``GROUPS``); a scene draws each object
from its own group with probability ``IN_GROUP_P`` = 0.85, otherwise from another group. This
strong co-occurrence is what lets a model trained on the world learn a *language prior*
("a fork usually comes with a cup"), the cause of the object hallucinations that POPE's
adversarial split and CHAIR measure (Li et al. 2023; Rohrbach et al. 2018).

Outputs of :func:`build_demo_world` (the layout of ``docs/design.md``)::

    images/{split}/DEMO_{split}_{id:012d}.png
    annotations/instances_{split}.json   COCO instances: images, annotations (bbox, area,
                                          iscrowd, segmentation = bbox polygon), categories
                                          (supercategory = scene group)
    annotations/captions_{split}.json    COCO captions, CAPTIONS_PER_IMAGE per image

Image ids: train ``1..n_train``, val ``VAL_ID_OFFSET + 1 ..``; the two ranges never overlap
(CHAIR merges train and val ground truth by image id) and stay below 10**6 (OPERA's CHAIR
script reads the id from the last six digits of the file name).

Everything is a pure function of ``seed``: image ``i`` of a split uses its own
``numpy.random.default_rng([seed, split_code, i])`` stream, so a rerun writes identical
bytes and the first ``k`` images do not depend on ``n_train``/``n_val``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vcdflow.io import atomic_write_text, write_json
from ..io import replace_dir

__all__ = [
    "CATEGORIES",
    "GROUPS",
    "Category",
    "IN_GROUP_P",
    "N_OBJECTS_P",
    "VAL_ID_OFFSET",
    "CAPTION_INSTRUCTION",
    "build_demo_world",
    "render_scene",
    "sample_scene",
    "captions_for",
    "article",
    "write_chair_synonyms",
    "chair_synonym_lines",
    "main",
    "cli",
]

#: Probability that an object is drawn from the scene's own group.
IN_GROUP_P = 0.85
#: Distribution of the number of (distinct-category) objects per image: P(1), P(2), P(3).
N_OBJECTS_P = (0.2, 0.3, 0.5)
#: Share of objects drawn faintly (blended into the background with opacity FAINT_RANGE):
#: small, low-contrast objects are where a model is unsure and its prior takes over.
FAINT_P = 0.3
FAINT_RANGE = (0.3, 0.6)
#: Grid size (GRID × GRID cells); at most one object per cell.
GRID = 3
#: Validation image ids start after this offset (train ids start at 1).
VAL_ID_OFFSET = 500_000
#: Captions written per image (COCO has 5; three phrasings are enough here).
CAPTIONS_PER_IMAGE = 3
#: The CHAIR caption instruction used across the project.
CAPTION_INSTRUCTION = "Please describe this image in detail."

_SPLIT_CODE = {"train": 0, "val": 1}


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    group: str
    shape: str
    color: tuple[int, int, int]
    weight: float  # relative frequency inside its group
    synonyms: tuple[str, ...]  # CHAIR synonyms (node word = name comes first)


def _c(i, name, group, shape, color, weight, *syn):
    return Category(i, name, group, shape, color, weight, (name, *syn))


#: The twelve categories, each with its own shape and colour. Weights inside a group are
#: unequal so that POPE's "popular" split (most frequent absent categories) differs from
#: "random".
CATEGORIES: tuple[Category, ...] = (
    _c(1, "cup", "kitchen", "square", (220, 30, 30), 0.34, "cups", "mug", "mugs"),
    _c(2, "plate", "kitchen", "ring", (245, 245, 245), 0.28, "plates", "dish", "dishes"),
    _c(3, "fork", "kitchen", "comb", (150, 150, 170), 0.22, "forks"),
    _c(4, "apple", "kitchen", "disc", (60, 200, 40), 0.16, "apples"),
    _c(5, "ball", "sports", "disc", (250, 220, 0), 0.34, "balls", "football", "soccer ball"),
    _c(6, "bat", "sports", "diagonal", (140, 80, 30), 0.28, "bats", "baseball bat"),
    _c(7, "kite", "sports", "diamond", (230, 40, 200), 0.22, "kites"),
    _c(8, "racket", "sports", "racket", (255, 140, 0), 0.16, "rackets", "racquet", "tennis racket"),
    _c(9, "dog", "nature", "ellipse", (170, 110, 60), 0.34, "dogs", "puppy", "puppies"),
    _c(10, "cat", "nature", "triangle", (20, 20, 20), 0.28, "cats", "kitten", "kittens"),
    _c(11, "bird", "nature", "chevron", (30, 90, 230), 0.22, "birds"),
    _c(12, "tree", "nature", "tree", (0, 110, 50), 0.16, "trees"),
)

#: Scene groups (COCO ``supercategory``) → category names, in id order.
GROUPS: dict[str, tuple[str, ...]] = {}
for _cat in CATEGORIES:
    GROUPS.setdefault(_cat.group, ())
    GROUPS[_cat.group] = GROUPS[_cat.group] + (_cat.name,)
del _cat

_BY_NAME = {c.name: c for c in CATEGORIES}
_GROUP_NAMES = tuple(GROUPS)


def article(word: str) -> str:
    """'an' before a vowel, else 'a' (POPE's rule, ``utils.create_question``)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneObject:
    category: Category
    cell: int  # 0..8, row-major
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    contrast: float = 1.0  # opacity of the glyph over the background


def sample_scene(rng: np.random.Generator, image_size: int = 64):
    """Draw (group, objects, background spec) for one image from ``rng``.

    Objects have distinct categories; each is drawn from the scene's group with
    probability ``IN_GROUP_P`` (weights ``Category.weight`` inside the group), else
    uniformly from the other groups' unused categories (same weights).
    """
    group = _GROUP_NAMES[int(rng.integers(len(_GROUP_NAMES)))]
    n = int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P)) + 1
    chosen: list[Category] = []
    for _ in range(n):
        in_group = rng.random() < IN_GROUP_P
        pool = [c for c in CATEGORIES if (c.group == group) == in_group and c not in chosen]
        if not pool:  # group exhausted: fall back to any unused category
            pool = [c for c in CATEGORIES if c not in chosen]
        w = np.array([c.weight for c in pool], dtype=float)
        chosen.append(pool[int(rng.choice(len(pool), p=w / w.sum()))])
    cells = rng.permutation(GRID * GRID)[:n]
    cell_px = image_size / GRID
    objects = []
    for cat, cell in zip(chosen, cells):
        r, c = divmod(int(cell), GRID)
        size = cell_px * rng.uniform(0.62, 0.92)
        slack = cell_px - size
        x0 = c * cell_px + rng.uniform(0, slack)
        y0 = r * cell_px + rng.uniform(0, slack)
        contrast = float(rng.uniform(*FAINT_RANGE)) if rng.random() < FAINT_P else 1.0
        objects.append(SceneObject(cat, int(cell), (x0, y0, x0 + size, y0 + size), contrast))
    background = {
        "kind": ("solid", "vgradient", "hgradient", "noise")[int(rng.integers(4))],
        "c0": tuple(int(v) for v in rng.integers(70, 200, size=3)),
        "c1": tuple(int(v) for v in rng.integers(70, 200, size=3)),
        "noise": float(rng.uniform(4, 18)),
        "noise_seed": int(rng.integers(2**31)),
    }
    return group, objects, background


def _background(spec: dict, size: int) -> Image.Image:
    c0 = np.array(spec["c0"], dtype=np.float32)
    c1 = np.array(spec["c1"], dtype=np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if spec["kind"] == "vgradient":
        arr = c0 + (c1 - c0) * t[:, None, None]
        arr = np.broadcast_to(arr, (size, size, 3))
    elif spec["kind"] == "hgradient":
        arr = c0 + (c1 - c0) * t[None, :, None]
        arr = np.broadcast_to(arr, (size, size, 3))
    else:
        arr = np.broadcast_to(c0, (size, size, 3))
    arr = np.array(arr, dtype=np.float32)
    amp = spec["noise"] * (2.5 if spec["kind"] == "noise" else 1.0)
    noise = np.random.default_rng(spec["noise_seed"]).normal(0.0, amp, size=(size, size, 3))
    arr = np.clip(arr + noise.astype(np.float32), 0, 255).round().astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _draw_object(draw: ImageDraw.ImageDraw, cat: Category, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    col = cat.color
    lw = max(1, round(w * 0.18))
    s = cat.shape
    if s == "square":
        draw.rectangle([x0 + 0.1 * w, y0 + 0.1 * h, x1 - 0.1 * w, y1 - 0.1 * h], fill=col)
    elif s == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=col, width=lw)
    elif s == "comb":  # handle + three prongs
        draw.rectangle([cx - 0.08 * w, cy, cx + 0.08 * w, y1], fill=col)
        draw.rectangle([x0 + 0.15 * w, cy - 0.12 * h, x1 - 0.15 * w, cy + 0.05 * h], fill=col)
        for fx in (0.15, 0.43, 0.71):
            draw.rectangle([x0 + fx * w, y0, x0 + (fx + 0.14) * w, cy], fill=col)
    elif s == "disc":
        draw.ellipse([x0 + 0.08 * w, y0 + 0.08 * h, x1 - 0.08 * w, y1 - 0.08 * h], fill=col)
    elif s == "diagonal":
        draw.line([(x0 + 0.1 * w, y1 - 0.1 * h), (x1 - 0.1 * w, y0 + 0.1 * h)], fill=col, width=lw + 1)
    elif s == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=col)
    elif s == "racket":  # hollow head + handle
        draw.ellipse([x0 + 0.15 * w, y0, x1 - 0.15 * w, y0 + 0.62 * h], outline=col, width=lw)
        draw.rectangle([cx - 0.07 * w, y0 + 0.6 * h, cx + 0.07 * w, y1], fill=col)
    elif s == "ellipse":
        draw.ellipse([x0, y0 + 0.25 * h, x1, y1 - 0.2 * h], fill=col)
    elif s == "triangle":
        draw.polygon([(x0, y1 - 0.05 * h), (x1, y1 - 0.05 * h), (cx, y0 + 0.05 * h)], fill=col)
    elif s == "chevron":
        draw.line([(x0, y0 + 0.3 * h), (cx, y1 - 0.25 * h), (x1, y0 + 0.3 * h)], fill=col, width=lw)
    elif s == "tree":  # canopy + brown trunk
        draw.rectangle([cx - 0.1 * w, y0 + 0.6 * h, cx + 0.1 * w, y1], fill=(110, 60, 20))
        draw.polygon([(x0, y0 + 0.68 * h), (x1, y0 + 0.68 * h), (cx, y0)], fill=col)
    else:  # pragma: no cover - guarded by CATEGORIES
        raise ValueError(f"unknown shape {s!r} for category {cat.name!r}")


def render_scene(objects: Sequence[SceneObject], background: dict, image_size: int = 64) -> Image.Image:
    """Render a scene (from :func:`sample_scene`) to a PIL RGB image."""
    img = _background(background, image_size).convert("RGBA")
    for obj in objects:
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        _draw_object(ImageDraw.Draw(layer), obj.category, obj.box)
        if obj.contrast < 1.0:
            alpha = round(255 * obj.contrast)
            layer.putalpha(layer.getchannel("A").point(lambda v: alpha if v else 0))
        img = Image.alpha_composite(img, layer)
    return img.convert("RGB")


def _join(names: Sequence[str]) -> str:
    items = [f"{article(n)} {n}" for n in names]
    if len(items) == 1:
        return items[0]
    return " , ".join(items[:-1]) + " and " + items[-1]


_PHRASINGS: tuple[Callable[[str], str], ...] = (
    lambda s: f"{s} .",
    lambda s: f"there is {s} in the image .",
    lambda s: f"a picture of {s} .",
)


def captions_for(names: Sequence[str], rng: np.random.Generator | None = None) -> list[str]:
    """COCO-style captions of an image holding ``names``.

    The first caption is canonical: objects in category-id order, e.g. ``"a cup and a
    fork ."`` or ``"a cup , a fork and an apple ."`` (the demo model is trained on it).
    The others use other phrasings with the objects in a random order from ``rng``.
    """
    canon = sorted(names, key=lambda n: _BY_NAME[n].id)
    out = [_PHRASINGS[0](_join(canon))]
    for k in range(1, CAPTIONS_PER_IMAGE):
        order = list(canon)
        if rng is not None:
            order = [order[i] for i in rng.permutation(len(order))]
        out.append(_PHRASINGS[k % len(_PHRASINGS)](_join(order)))
    return out


# --------------------------------------------------------------------------- writing


def image_id(split: str, index: int) -> int:
    """Image id of the ``index``-th (0-based) image of ``split``."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_CODE)}")
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def file_name(split: str, img_id: int) -> str:
    return f"DEMO_{split}_{img_id:012d}.png"


def _coco_categories() -> list[dict]:
    return [{"id": c.id, "name": c.name, "supercategory": c.group} for c in CATEGORIES]


def _build_split(split: str, n: int, image_size: int, seed: int, img_dir: Path, progress: bool):
    images, anns, caps = [], [], []
    ann_id = 1
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"demo world {split}", unit="img")
    for i in it:
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        group, objects, bg = sample_scene(rng, image_size)
        img = render_scene(objects, bg, image_size)
        iid = image_id(split, i)
        fname = file_name(split, iid)
        img.save(img_dir / fname, format="PNG", optimize=False, compress_level=6)
        images.append(
            {"id": iid, "file_name": fname, "width": image_size, "height": image_size, "scene": group}
        )
        for obj in objects:
            x0, y0, x1, y1 = (round(v, 2) for v in obj.box)
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            anns.append(
                {
                    "id": ann_id + (VAL_ID_OFFSET * 10 if split == "val" else 0),
                    "image_id": iid,
                    "category_id": obj.category.id,
                    "bbox": [x0, y0, w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "contrast": round(obj.contrast, 3),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
            ann_id += 1
        for k, cap in enumerate(captions_for([o.category.name for o in objects], rng)):
            caps.append({"id": iid * 10 + k, "image_id": iid, "caption": cap})
    info = {
        "description": f"vcdflow demo world ({split})",
        "version": "1.0",
        "year": 2024,
        "seed": seed,
        "image_size": image_size,
        "in_group_p": IN_GROUP_P,
    }
    instances = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": _coco_categories(),
    }
    captions = {"info": info, "licenses": [], "images": images, "annotations": caps}
    return instances, captions


def build_demo_world(
    out_dir: str | os.PathLike,
    n_train: int = 4000,
    n_val: int = 300,
    image_size: int = 64,
    seed: int = 0,
    *,
    progress: bool = False,
) -> dict:
    """Write the demo world under ``out_dir`` and return a summary dict.

    Each split's images are rendered into a temporary folder beside
    ``images/{split}`` and moved into place only when complete; the annotation files are
    written atomically afterwards (``vcdflow.io.write_json``), so their presence means the
    split is complete. Reruns with the same arguments are byte-for-byte identical.
    """
    if image_size < 24:
        raise ValueError(f"image_size={image_size} is too small (need >= 24 pixels)")
    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if int(n) != n or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if max(n_train, n_val) >= VAL_ID_OFFSET:
        raise ValueError(f"at most {VAL_ID_OFFSET - 1} images per split")
    out = Path(out_dir)
    summary = {"out_dir": str(out), "seed": seed, "image_size": image_size, "splits": {}}
    for split, n in (("train", int(n_train)), ("val", int(n_val))):
        img_parent = out / "images"
        img_parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=img_parent))
        tmp.chmod(0o755)
        try:
            instances, captions = _build_split(split, n, image_size, seed, tmp, progress)
            replace_dir(tmp, img_parent / split)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_json(out / "annotations" / f"instances_{split}.json", instances, indent=None)
        write_json(out / "annotations" / f"captions_{split}.json", captions, indent=None)
        n_obj = len(instances["annotations"])
        cats_per_img: dict[int, set] = {}
        for a in instances["annotations"]:
            cats_per_img.setdefault(a["image_id"], set()).add(a["category_id"])
        summary["splits"][split] = {
            "images": n,
            "objects": n_obj,
            "images_with_3_categories": sum(len(s) >= 3 for s in cats_per_img.values()),
        }
    return summary


# --------------------------------------------------------------------------- CHAIR


def chair_synonym_lines() -> list[str]:
    """CHAIR synonym lines: node word first, then synonyms/plurals, ``', '``-separated."""
    return [", ".join(c.synonyms) for c in CATEGORIES]


def write_chair_synonyms(path: str | os.PathLike) -> Path:
    """Write the demo categories in CHAIR's ``synonyms.txt`` format (atomic).

    Format of ``LisaAnne/Hallucination/data/synonyms.txt``: one category per line, entries
    separated by ``', '``, the canonical node word first (CHAIR parses each line with
    ``line.strip().split(', ')``).
    """
    path = Path(path)
    atomic_write_text(path, "\n".join(chair_synonym_lines()) + "\n")
    return path


# --------------------------------------------------------------------------- entry points


def main(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 4000,
    n_val: int = 300,
    image_size: int = 64,
    seed: int = 0,
    synonyms_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Entry point for a Snakemake ``script:`` shim (no Snakemake import here).

    Builds the world (:func:`build_demo_world`) and, if ``synonyms_path`` is given, the
    CHAIR synonyms file. Returns the summary dict (also printed as JSON).
    """
    summary = build_demo_world(
        out_dir, n_train=n_train, n_val=n_val, image_size=image_size, seed=seed, progress=progress
    )
    if synonyms_path is not None:
        summary["synonyms"] = str(write_chair_synonyms(synonyms_path))
    print(json.dumps(summary, sort_keys=True))
    return summary


def cli(argv: Sequence[str] | None = None) -> dict:
    """``python -m vcdflow.data.demo_world OUT_DIR [--n-train N] ...``"""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synonyms", default=None, help="also write CHAIR synonyms here")
    a = p.parse_args(argv)
    return main(
        a.out_dir,
        n_train=a.n_train,
        n_val=a.n_val,
        image_size=a.image_size,
        seed=a.seed,
        synonyms_path=a.synonyms,
    )


if __name__ == "__main__":  # pragma: no cover
    cli()
