"""A POPE-format folder from demo-world scenes, for small workflow tests: per image a question about
an object in the scene (label yes) and one about a category absent from it (label no)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_scene_pope(
    root: Path,
    n_images: int,
    rng_key: tuple[int, ...],
    size: int = 32,
    save_size: tuple[int, int] | None = None,
) -> tuple[str, str]:
    """``root/images/p<i>.png`` (scene ``i`` drawn with ``default_rng([*rng_key, i])`` at ``size``
    pixels, resized to ``save_size`` if given) and ``root/pope_random.json``; returns the config's
    ``questions`` pattern and ``images`` folder."""
    from vcdflow.data.demo_world import CATEGORIES, render_scene, sample_scene

    names = [c.name for c in CATEGORIES]
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n_images):
        _, objects, background = sample_scene(np.random.default_rng([*rng_key, i]), size)
        img = render_scene(objects, background, size)
        (img.resize(save_size) if save_size else img).save(root / "images" / f"p{i}.png")
        objs = [o.category.name for o in objects]
        absent = next(n for n in names if n not in objs)
        rows += [
            {
                "question_id": 2 * i + 1,
                "image": f"p{i}.png",
                "text": f"Is there a {objs[0]} in the image?",
                "label": "yes",
            },
            {
                "question_id": 2 * i + 2,
                "image": f"p{i}.png",
                "text": f"Is there a {absent} in the image?",
                "label": "no",
            },
        ]
    (root / "pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "pope_{split}.json"), str(root / "images")
