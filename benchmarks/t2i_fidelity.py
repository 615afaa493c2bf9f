"""Do the demo T2I reconstructions carry the captioned objects? A colour-presence test.

Every demo-world category has its own colour (``vcdflow.data.demo_world.CATEGORIES``). For each
of ``--n`` validation images, the categories *named in its caption* (category names and CHAIR
synonyms, whole words) are looked for in

* ``matched``:  the reconstruction of the image's own caption;
* ``shuffled``: the reconstruction of another image's caption (a seeded derangement) — the
  chance level of finding the colour anyway (background, other objects of similar colour);
* ``original`` / ``original_shuffled``: the real scenes, the same two ways (the measure's own
  ceiling and floor).

A category is *present* in an image when at least ``--min-pixels`` pixels of the image, box-
downsampled to 16×16 (the demo T2I resolution), lie within Euclidean RGB distance ``--tau`` of
the category's colour. Reported: the presence rate (fraction of (image, captioned category)
pairs found) per condition, overall and per category, and ``shuffled_absent`` — presence of
the image's categories in reconstructions of shuffled captions that do *not* name them
(a false-positive rate). A faithful T2I has ``matched`` ≫ ``shuffled``.

Captions: by default the world's own canonical captions (``captions_val.json``, first caption
per image); ``--captions FILE.jsonl`` takes the VLM's ConVis captions instead
(:mod:`vcdflow.t2i.captions` records; caption seed 0), i.e. the full caption → image path.

    python benchmarks/t2i_fidelity.py --world resources/demo/world --t2i resources/demo_t2i \
        --n 100 --out results/benchmarks/t2i_fidelity.json

Writes a JSON (``--out``) and optionally a PNG strip of examples (``--grid``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vcdflow.data.demo_world import CATEGORIES  # noqa: E402
from vcdflow.io import read_json, read_jsonl, write_json  # noqa: E402
from vcdflow.t2i.pipeline import DEMO_T2I, load_t2i  # noqa: E402
from vcdflow.t2i.reconstruct import t2i_seed  # noqa: E402

SIZE = 16


def caption_categories(text: str) -> list[str]:
    """Category names whose name or a synonym occurs in ``text`` as whole words (id order)."""
    low = " " + re.sub(r"[^a-z ]+", " ", text.lower()) + " "
    found = []
    for c in CATEGORIES:
        if any(f" {s} " in low for s in c.synonyms):
            found.append(c.name)
    return found


_COLOUR = {c.name: np.array(c.color, dtype=np.float32) for c in CATEGORIES}


def presence(img: Image.Image, category: str, tau: float, min_pixels: int) -> bool:
    arr = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BOX), dtype=np.float32)
    dist = np.linalg.norm(arr - _COLOUR[category], axis=-1)
    return int((dist < tau).sum()) >= min_pixels


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point (a shuffled order, then a rotation by one)."""
    order = np.random.default_rng(seed).permutation(n)
    perm = [0] * n
    for j in range(n):
        perm[int(order[j])] = int(order[(j + 1) % n])
    return perm


def _rate(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if flags else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="resources/demo/world")
    p.add_argument("--t2i", default=DEMO_T2I["path"])
    p.add_argument("--captions", default=None, help="ConVis caption JSONL (default: the world's captions)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=DEMO_T2I["num_inference_steps"])
    p.add_argument("--guidance", type=float, default=DEMO_T2I["guidance_scale"])
    p.add_argument("--tau", type=float, default=50.0)
    p.add_argument("--min-pixels", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/benchmarks/t2i_fidelity.json")
    p.add_argument("--grid", default=None, help="PNG strip: original | matched | shuffled for 8 images")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    world = Path(a.world)
    caps = read_json(world / "annotations" / "captions_val.json")
    files = {im["id"]: im["file_name"] for im in caps["images"]}
    if a.captions:
        recs = [r for r in read_jsonl(a.captions) if int(r["caption_seed"]) == 0 and not r.get("error")]
        pairs = [(r["image_id"], r["caption"]) for r in recs]
        source = str(a.captions)
    else:
        first: dict = {}
        for ann in sorted(caps["annotations"], key=lambda x: x["id"]):
            first.setdefault(ann["image_id"], ann["caption"])
        pairs = [(im["id"], first[im["id"]]) for im in caps["images"] if im["id"] in first]
        source = str(world / "annotations" / "captions_val.json")
    pairs = [(i, c) for i, c in pairs if caption_categories(c)][: a.n]
    if len(pairs) < 2:
        raise SystemExit(f"need at least 2 captioned images, got {len(pairs)}")
    n = len(pairs)
    perm = derangement(n, a.seed)
    originals = []
    for iid, _ in pairs:
        with Image.open(world / "images" / "val" / files[iid]) as im:
            originals.append(im.convert("RGB"))

    cfg = dict(DEMO_T2I, path=a.t2i, num_inference_steps=a.steps, guidance_scale=a.guidance)
    t2i = load_t2i(cfg)
    prompts = [c for _, c in pairs] + [pairs[perm[i]][1] for i in range(n)]
    keys = [(str(iid), 0) for iid, _ in pairs] + [(str(pairs[perm[i]][0]), 0) for i in range(n)]
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    renders = []
    for s in tqdm(range(0, len(prompts), a.batch_size), desc="render", unit="batch"):
        gens = [
            torch.Generator().manual_seed(t2i_seed("fidelity", k, sd)) for k, sd in keys[s : s + a.batch_size]
        ]
        renders.extend(t2i(prompts[s : s + a.batch_size], gens))
    seconds = time.perf_counter() - t0
    matched, shuffled = renders[:n], renders[n:]

    cond = {k: [] for k in ("matched", "shuffled", "shuffled_absent", "original", "original_shuffled")}
    per_cat = {c.name: {k: [] for k in cond} for c in CATEGORIES}
    for i, (iid, cap) in enumerate(pairs):
        other_cats = set(caption_categories(pairs[perm[i]][1]))
        for c in caption_categories(cap):
            flags = {
                "matched": presence(matched[i], c, a.tau, a.min_pixels),
                "shuffled": presence(shuffled[i], c, a.tau, a.min_pixels),
                "original": presence(originals[i], c, a.tau, a.min_pixels),
                "original_shuffled": presence(originals[perm[i]], c, a.tau, a.min_pixels),
            }
            if c not in other_cats:
                flags["shuffled_absent"] = flags["shuffled"]
            for k, v in flags.items():
                cond[k].append(v)
                per_cat[c][k].append(v)
    result = {
        "benchmark": "t2i_fidelity",
        "description": "colour presence of captioned categories: reconstructions of the image's own caption "
        "(matched) vs of another image's caption (shuffled); originals as ceiling/floor",
        "settings": {
            "t2i": str(a.t2i),
            "captions": source,
            "n_images": n,
            "steps": a.steps,
            "guidance_scale": a.guidance,
            "tau": a.tau,
            "min_pixels": a.min_pixels,
            "size": SIZE,
            "seed": a.seed,
            "threads": torch.get_num_threads(),
        },
        "n_pairs": len(cond["matched"]),
        "overall": {k: _rate(v) for k, v in cond.items()},
        "per_category": {
            c: {k: _rate(v) for k, v in d.items()} | {"n": len(d["matched"])}
            for c, d in per_cat.items()
            if d["matched"]
        },
        "render_seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / len(prompts), 4),
    }
    write_json(a.out, result)
    if a.grid:
        k = min(8, n)
        strip = Image.new("RGB", (64 * k, 64 * 3), "white")
        for i in range(k):
            strip.paste(originals[i].resize((64, 64)), (64 * i, 0))
            strip.paste(matched[i].resize((64, 64), Image.NEAREST), (64 * i, 64))
            strip.paste(shuffled[i].resize((64, 64), Image.NEAREST), (64 * i, 128))
        Path(a.grid).parent.mkdir(parents=True, exist_ok=True)
        strip.save(a.grid)
    print(json.dumps({k: result[k] for k in ("n_pairs", "overall", "seconds_per_image")}, indent=1))
    return result


if __name__ == "__main__":
    main()
