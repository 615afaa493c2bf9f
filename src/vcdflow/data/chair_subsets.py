"""The CHAIR image subsets of the paper protocols: a released id list where a paper published one,
else the paper's seed and selection rule.

A protocol declares its subset (``chair_subset`` in :mod:`vcdflow.protocols`) as a dict:

* ``{"ids": NAME}``: the released list ``NAME`` of :data:`RELEASED` (shipped under
  ``vcdflow/data/chair_ids/``, sha256-checked on every read, with its source commit);
* ``{"rule": RULE, "seed": S, "n": N, "exact": False}``: the paper's own draw, re-run here on the
  file names of the CHAIR annotation file sorted by name (see :data:`RULES`). The official scripts
  draw from ``os.listdir(val2014)``, whose order depends on the file system, so the same seed gives
  other images here: **not reproducible exactly** (``exact: False``); the rule and the seed are the
  paper's.

:func:`bench_keys` turns a declaration into the CHAIR benchmark keys the workflow decodes with
(``image_id_list`` / ``subset_rule``, ``subset_seed``, ``n_images``); :func:`read_released` is what
:func:`vcdflow.metrics.chair.load_items` reads a released list through.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

IDS_DIR = Path(__file__).with_name("chair_ids")


@dataclass(frozen=True)
class Released:
    """One released image id list: the file shipped here, its sha256 and where it comes from."""

    file: str
    sha256: str
    source: str


#: released CHAIR id lists (one COCO val2014 image id per line, in the released order). OPERA
#: released its captions, and with them its 500 ids; InstructBLIP's shuffle drew another 500 (the
#: two lists share 6 ids). The ids are the ``image_id`` of each line, in file order.
RELEASED: dict[str, Released] = {
    "opera_llava-1.5": Released(
        "opera_llava-1.5.txt",
        "f572841372e2321df8b64c2cd3ed2b1a3bfe4bd8fd02cf70ed94f9f61f1f11aa",
        "shikiw/OPERA@61426efe4e2e53207f32d9112a86ba5f8364d1d9 log/chair_eval_results/llava-1.5/ours.jsonl "
        "(blob 37f4f4e; the same 500 ids, same order, in greedy.jsonl, beam5.jsonl and the minigpt4 and "
        "shikra folders)",
    ),
    "opera_instructblip": Released(
        "opera_instructblip.txt",
        "b335255c7ef152fc64ff9f3439090aa365728d39d66be59cb565c1cd2cbc0c56",
        "shikiw/OPERA@61426efe4e2e53207f32d9112a86ba5f8364d1d9 log/chair_eval_results/instructblip/ours.jsonl "
        "(blob bc94b6a; the same ids in greedy.jsonl and beam5.jsonl)",
    ),
}

#: selection rules, re-run on the sorted file names of the annotation file's ``images``:
#:
#: * ``shuffle``: ``random.seed(S); random.shuffle(files); files[:N]`` (OPERA ``chair_eval.py``,
#:   PAI ``eval_data_loader.py``, SID ``eval_utils/chair_eval.py``, ONLY ``chair_loader.py``);
#: * ``shuffle_choice``: the shuffle above, then ``np.random.seed(S)``'s
#:   ``np.random.choice(len(files), N, replace=False)`` indices into the shuffled list, in draw
#:   order (VISTA ``chair_eval.py`` after ``eval_data_loader.py``'s shuffle);
#: * ``sample``: ``random.Random(S).sample(ids in file order, N)`` (HALC's draw; the config's
#:   ``subset_seed`` default).
RULES = ("sample", "shuffle", "shuffle_choice")


def read_released(name: str) -> list[int]:
    """The ids of released list ``name``; ``ValueError`` naming the file when its sha256 is not
    the pinned one (an edited or truncated copy) or the name is unknown."""
    if name not in RELEASED:
        raise ValueError(f"unknown released CHAIR id list {name!r}; known: {', '.join(sorted(RELEASED))}")
    entry = RELEASED[name]
    path = IDS_DIR / entry.file
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned {entry.sha256} ({entry.source})")
    return [int(line) for line in data.decode().split()]


def select(file_names: list[str], rule: str, seed: int, n: int) -> list[str]:
    """``n`` of ``file_names`` by a shuffle rule of :data:`RULES` (on the names sorted; ``sample``
    is :func:`vcdflow.metrics.chair.load_items`' own draw over ids in file order)."""
    import random

    if rule not in RULES[1:]:
        raise ValueError(f"unknown CHAIR subset rule {rule!r}; valid: {', '.join(RULES)}")
    if n > len(file_names):
        raise ValueError(f"asked for {n} CHAIR images, the annotation file has {len(file_names)}")
    files = sorted(file_names)
    random.Random(seed).shuffle(files)
    if rule == "shuffle":
        return files[:n]
    import numpy as np

    picks = np.random.RandomState(seed).choice(len(files), n, replace=False)
    return [files[int(i)] for i in picks]


def bench_keys(decl: Mapping[str, Any]) -> dict[str, Any]:
    """The CHAIR benchmark keys of a protocol's declaration: ``{"image_id_list": NAME}`` for a
    released list, else ``{"subset_rule", "subset_seed", "n_images"}``; ``image_ids`` (the
    config's own list) is cleared either way."""
    if "ids" in decl:
        if decl["ids"] not in RELEASED:
            raise ValueError(
                f"unknown released CHAIR id list {decl['ids']!r}; known: {', '.join(sorted(RELEASED))}"
            )
        return {"image_id_list": decl["ids"], "image_ids": None}
    return {
        "subset_rule": decl["rule"],
        "subset_seed": int(decl["seed"]),
        "n_images": int(decl.get("n", 500)),
        "image_ids": None,
    }
