"""Demo world: COCO structure, pixels match annotations, co-occurrence, captions, CHAIR
synonyms, determinism and atomic reruns."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcdflow.data import demo_world as dw


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    summary = dw.build_demo_world(root, n_train=400, n_val=30, image_size=64, seed=0)
    return root, summary


def _load(root, kind, split):
    return json.loads((root / "annotations" / f"{kind}_{split}.json").read_text())


def test_layout_and_coco_structure(world):
    root, summary = world
    assert summary["splits"]["train"]["images"] == 400
    for split, n, first_id in (("train", 400, 1), ("val", 30, dw.VAL_ID_OFFSET + 1)):
        inst = _load(root, "instances", split)
        assert set(inst) >= {"images", "annotations", "categories"}
        ids = [im["id"] for im in inst["images"]]
        assert ids == list(range(first_id, first_id + n))
        assert max(ids) < 10**6
        files = sorted(p.name for p in (root / "images" / split).iterdir())
        assert files == sorted(im["file_name"] for im in inst["images"])
        assert inst["images"][0]["file_name"] == f"DEMO_{split}_{first_id:012d}.png"
        assert [c["name"] for c in inst["categories"]] == [c.name for c in dw.CATEGORIES]
        for c in inst["categories"]:
            assert c["name"] in dw.GROUPS[c["supercategory"]]
        per_image = Counter(a["image_id"] for a in inst["annotations"])
        assert set(per_image.values()) <= {1, 2, 3} and len(per_image) == n
        cats_per_image = {}
        for a in inst["annotations"]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 64.01 and w > 5 and h > 5
            assert a["area"] == pytest.approx(w * h, abs=0.02)
            assert a["iscrowd"] == 0
            cats_per_image.setdefault(a["image_id"], []).append(a["category_id"])
        assert all(len(v) == len(set(v)) for v in cats_per_image.values())
    train_ann = {a["id"] for a in _load(root, "instances", "train")["annotations"]}
    val_ann = {a["id"] for a in _load(root, "instances", "val")["annotations"]}
    assert not train_ann & val_ann
    assert not list(root.rglob(".*tmp*"))  # no temporary folders left behind


def test_pixels_match_annotations(world):
    root, _ = world
    inst = _load(root, "instances", "val")
    colour = {c.id: c.color for c in dw.CATEGORIES}
    fname = {im["id"]: im["file_name"] for im in inst["images"]}
    n_solid = 0
    for a in inst["annotations"]:
        arr = np.asarray(Image.open(root / "images" / "val" / fname[a["image_id"]]).convert("RGB"))
        assert arr.shape == (64, 64, 3)
        x, y, w, h = a["bbox"]
        inside = arr[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
        hits = np.all(inside == np.array(colour[a["category_id"]], dtype=np.uint8), axis=-1).sum()
        if a["contrast"] == 1.0:  # the category's exact colour is drawn inside its box
            assert hits >= 6, (a, hits)
            n_solid += 1
        else:  # blended with the background: never the exact colour
            assert dw.FAINT_RANGE[0] <= a["contrast"] <= dw.FAINT_RANGE[1]
            assert hits == 0, (a, hits)
    assert n_solid >= 10


def test_co_occurrence_and_frequencies(world):
    root, _ = world
    inst = _load(root, "instances", "train")
    scene = {im["id"]: im["scene"] for im in inst["images"]}
    group = {c["id"]: c["supercategory"] for c in inst["categories"]}
    anns = inst["annotations"]
    in_group = np.mean([group[a["category_id"]] == scene[a["image_id"]] for a in anns])
    assert 0.78 <= in_group <= 0.92
    n_obj = Counter(Counter(a["image_id"] for a in anns).values())
    assert n_obj[3] > n_obj[2] > n_obj[1] > 0  # P = 0.2 / 0.3 / 0.5
    faint = np.mean([a["contrast"] < 1.0 for a in anns])
    assert abs(faint - dw.FAINT_P) < 0.05
    # unequal frequencies inside a group (POPE's "popular" split needs them)
    freq = Counter(a["category_id"] for a in anns)
    assert freq[1] > freq[4] and freq[5] > freq[8] and freq[9] > freq[12]


def test_captions(world):
    root, _ = world
    inst, caps = _load(root, "instances", "val"), _load(root, "captions", "val")
    name = {c.id: c.name for c in dw.CATEGORIES}
    objs = {}
    for a in inst["annotations"]:
        objs.setdefault(a["image_id"], set()).add(name[a["category_id"]])
    by_image = {}
    for c in caps["annotations"]:
        by_image.setdefault(c["image_id"], []).append(c)
    assert set(by_image) == set(objs)
    names = set(name.values())
    for iid, cs in by_image.items():
        assert len(cs) == dw.CAPTIONS_PER_IMAGE
        for c in cs:
            words = c["caption"].split()
            assert {w for w in words if w in names} == objs[iid]
            assert c["caption"].endswith(" .")
            for art, noun in zip(words, words[1:]):
                if noun in names:
                    assert art == ("an" if noun[0] in "aeiou" else "a")
        canon = min(cs, key=lambda c: c["id"])["caption"]
        mentioned = [w for w in canon.split() if w in names]
        ids = {n: k for k, n in name.items()}
        assert mentioned == sorted(mentioned, key=ids.get)  # canonical: category-id order
    assert dw.captions_for(["fork", "cup"])[0] == "a cup and a fork ."
    assert dw.captions_for(["apple", "cup", "kite"])[0] == "a cup , an apple and a kite ."


def test_determinism_and_rerun(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    dw.build_demo_world(a, n_train=12, n_val=6, seed=7)
    dw.build_demo_world(b, n_train=12, n_val=6, seed=7)
    da = _digest_tree(a)
    assert da == _digest_tree(b)
    dw.build_demo_world(a, n_train=12, n_val=6, seed=7)  # rerun over an existing world
    assert _digest_tree(a) == da
    # the first images do not depend on how many are drawn
    c = tmp_path / "c"
    dw.build_demo_world(c, n_train=4, n_val=2, seed=7)
    name = "images/train/DEMO_train_000000000003.png"
    assert _digest_tree(c)[name] == da[name]
    d = tmp_path / "d"
    dw.build_demo_world(d, n_train=12, n_val=6, seed=8)
    assert _digest_tree(d)[name] != da[name]


def test_chair_synonyms(tmp_path):
    path = dw.write_chair_synonyms(tmp_path / "syn" / "synonyms.txt")
    text = path.read_text()
    assert text.endswith("\n") and "\r" not in text
    lines = [line.strip().split(", ") for line in text.strip().split("\n")]  # CHAIR's parser
    assert [ln[0] for ln in lines] == [c.name for c in dw.CATEGORIES]
    flat = [w for ln in lines for w in ln]
    assert len(flat) == len(set(flat))  # no word maps to two categories
    assert lines[0] == ["cup", "cups", "mug", "mugs"]
    assert all(f"{ln[0]}s" in ln or ln[0].endswith("s") for ln in lines)  # plurals listed


def test_main_and_errors(tmp_path, capsys):
    s = dw.main(tmp_path / "w", n_train=3, n_val=2, synonyms_path=tmp_path / "syn.txt", progress=False)
    assert (tmp_path / "syn.txt").is_file() and s["splits"]["val"]["images"] == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seed"] == 0
    with pytest.raises(ValueError, match="n_train"):
        dw.build_demo_world(tmp_path / "x", n_train=-1, n_val=2)
    with pytest.raises(ValueError, match="image_size"):
        dw.build_demo_world(tmp_path / "x", n_train=1, n_val=1, image_size=8)
    assert re.fullmatch(r"DEMO_val_\d{12}\.png", dw.file_name("val", dw.image_id("val", 0)))
