"""POPE construction: hand-computed expectations on a tiny COCO fixture, then properties on
the demo world checked against an independent re-count of the instances file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vcdflow.data.demo_world import build_demo_world
from vcdflow.data.pope_builder import build_pope, pope_question

FIXTURE = Path(__file__).parent / "fixtures" / "demo" / "pope_mini_instances.json"

# Fixture (see the file): objects per image in annotation order, duplicates removed.
#   img1 dog person cat | img2 person car dog | img3 car person bus umbrella
#   img4 person dog kite | img5 dog (ineligible) | img6 apple cat (ineligible)
MINI_OBJECTS = {
    "img1.jpg": ["dog", "person", "cat"],
    "img2.jpg": ["person", "car", "dog"],
    "img3.jpg": ["car", "person", "bus", "umbrella"],
    "img4.jpg": ["person", "dog", "kite"],
}


def _lines(path):
    raw = Path(path).read_bytes()
    assert b"\r" not in raw
    return [json.loads(line) for line in raw.decode().splitlines()]


def _by_image(lines):
    out = {}
    for q in lines:
        out.setdefault(q["image"], []).append(q)
    return out


def _name(text):
    # "Is there a dog in the image?" -> "dog"
    words = text.split()
    assert words[:2] == ["Is", "there"] and words[-3:] == ["in", "the", "image?"]
    return " ".join(words[3:-3])


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("pope_mini")
    summary = build_pope(FIXTURE, out, n_images=None, n_pos=3, seed=0, prefix="mini")
    return out, summary


def test_mini_counts_format_and_positives(mini):
    out, summary = mini
    assert summary["n_eligible"] == 4 and summary["n_images"] == 4 and summary["n_questions"] == 24
    assert sorted(summary["images"]) == sorted(MINI_OBJECTS)
    for strategy in ("random", "popular", "adversarial"):
        path = out / f"mini_pope_{strategy}.json"
        assert summary["files"][strategy] == str(path)
        lines = _lines(path)
        assert [q["question_id"] for q in lines] == list(range(1, 25))
        assert all(list(q) == ["question_id", "image", "text", "label"] for q in lines)
        # official serialisation: json.dumps defaults
        first = path.read_text().splitlines()[0]
        assert first == json.dumps(lines[0])
        for img, qs in _by_image(lines).items():
            assert [q["label"] for q in qs] == ["yes", "no"] * 3
            assert [_name(q["text"]) for q in qs[0::2]] == MINI_OBJECTS[img][:3]
            negs = [_name(q["text"]) for q in qs[1::2]]
            assert len(set(negs)) == 3
            assert not set(negs) & set(MINI_OBJECTS[img])
            # "apple" never occurs in the sampled images, so it is not a candidate
            assert "apple" not in negs


def test_mini_popular_hand_computed(mini):
    out, _ = mini
    # frequency over the 4 sampled images: person 4, dog 3, car 2, cat/bus/umbrella/kite 1
    expected = {
        "img1.jpg": ["car", "bus", "umbrella"],
        "img2.jpg": ["cat", "bus", "umbrella"],
        "img3.jpg": ["dog", "cat", "kite"],
        "img4.jpg": ["car", "cat", "bus"],
    }
    got = {
        img: [_name(q["text"]) for q in qs[1::2]]
        for img, qs in _by_image(_lines(out / "mini_pope_popular.json")).items()
    }
    assert got == expected


def test_mini_adversarial_hand_computed(mini):
    out, _ = mini
    got = {
        img: [_name(q["text"]) for q in qs[1::2]]
        for img, qs in _by_image(_lines(out / "mini_pope_adversarial.json")).items()
    }
    # co-occurrence rank per positive (ties by category id); the 3rd negatives of img1 and
    # img4 have no co-occurring candidate left, so they fall back to a random remaining one.
    assert got["img1.jpg"][:2] == ["car", "bus"] and got["img1.jpg"][2] in {"umbrella", "kite"}
    assert got["img2.jpg"] == ["cat", "bus", "kite"]
    assert got["img3.jpg"] == ["dog", "cat", "kite"]
    assert got["img4.jpg"][:2] == ["car", "cat"] and got["img4.jpg"][2] in {"bus", "umbrella"}


def test_mini_stats_all_and_article(tmp_path):
    build_pope(FIXTURE, tmp_path, n_images=None, stats="all", strategies=("popular",), prefix="m")
    lines = _lines(tmp_path / "m_pope_popular.json")
    by = _by_image(lines)
    # over all 6 images: person 4, dog 4, cat 2, car 2, then bus/apple/umbrella/kite 1 (id order)
    assert [q["text"] for q in by["img1.jpg"][1::2]] == [
        "Is there a car in the image?",
        "Is there a bus in the image?",
        "Is there an apple in the image?",
    ]
    assert not (tmp_path / "m_pope_random.json").exists()


def test_question_template():
    assert pope_question("umbrella") == "Is there an umbrella in the image?"
    assert pope_question("dog") == "Is there a dog in the image?"
    assert pope_question("orange", "Is there a {} here?") == "Is there an orange here?"


def test_mini_seed_and_determinism(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_pope(FIXTURE, a, n_images=3, seed=1, stats="all")
    build_pope(FIXTURE, b, n_images=3, seed=1, stats="all")
    for s in ("random", "popular", "adversarial"):
        assert (a / f"coco_pope_{s}.json").read_bytes() == (b / f"coco_pope_{s}.json").read_bytes()
    imgs = set()
    for seed in range(6):
        imgs.add(tuple(build_pope(FIXTURE, c, n_images=2, seed=seed, stats="all")["images"]))
    assert len(imgs) > 1  # the seed changes the sample


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"pope_mini_instances\.json.*only 4 images.*n_images=5"):
        build_pope(FIXTURE, tmp_path, n_images=5)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        build_pope(bad, tmp_path)
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"bad\.json.*'categories'"):
        build_pope(bad, tmp_path)
    data = json.loads(FIXTURE.read_text())
    data["annotations"][3]["category_id"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: annotations\[3\].*category_id 99"):
        build_pope(bad, tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        build_pope(tmp_path / "nope.json", tmp_path)
    with pytest.raises(ValueError, match="strategies"):
        build_pope(FIXTURE, tmp_path, n_images=2, strategies=("hard",))


# ----------------------------------------------------------------------------- demo world


@pytest.fixture(scope="module")
def demo_pope(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_demo_world(root, n_train=0, n_val=240, seed=3)
    inst = json.loads((root / "annotations" / "instances_val.json").read_text())
    out = root / "pope"
    summary = build_pope(root / "annotations" / "instances_val.json", out, n_images=60, seed=0, prefix="demo")
    return inst, out, summary


def _recount(inst, files):
    """Independent re-count: objects per file name, frequency and co-occurrence over ``files``."""
    cat = {c["id"]: c["name"] for c in inst["categories"]}
    fname = {im["id"]: im["file_name"] for im in inst["images"]}
    objs = {}
    for a in sorted(inst["annotations"], key=lambda a: a["id"]):
        lst = objs.setdefault(fname[a["image_id"]], [])
        if cat[a["category_id"]] not in lst:
            lst.append(cat[a["category_id"]])
    freq, co = Counter(), Counter()
    for f in files:
        freq.update(objs[f])
        for x in objs[f]:
            for y in objs[f]:
                if x != y:
                    co[x, y] += 1
    return objs, freq, co


def test_demo_pope_properties(demo_pope):
    inst, out, summary = demo_pope
    files = {s: _lines(out / f"demo_pope_{s}.json") for s in ("random", "popular", "adversarial")}
    objs, freq, co = _recount(inst, summary["images"])
    group = {c["name"]: c["supercategory"] for c in inst["categories"]}
    images = None
    same_group = {}
    mean_freq = {}
    for s, lines in files.items():
        assert len(lines) == 360
        assert sum(q["label"] == "yes" for q in lines) == 180
        order = [q["image"] for q in lines[::6]]
        assert images is None or order == images  # same images, same order
        images = order
        n_same, freqs = 0, []
        for img, qs in _by_image(lines).items():
            assert len(objs[img]) >= 3
            used = set(objs[img])
            for k in range(3):
                pos, neg = _name(qs[2 * k]["text"]), _name(qs[2 * k + 1]["text"])
                assert pos == objs[img][k]
                assert neg not in used, (s, img, neg)
                candidates = [c for c in freq if c not in used]
                if s == "popular":
                    assert freq[neg] == max(freq[c] for c in candidates)
                if s == "adversarial":
                    best = max(co[pos, c] for c in candidates)
                    if best > 0:
                        assert co[pos, neg] == best
                used.add(neg)
                n_same += group[neg] == group[pos]
                freqs.append(freq[neg])
        same_group[s] = n_same / 180
        mean_freq[s] = sum(freqs) / len(freqs)
    assert same_group["adversarial"] > same_group["random"] + 0.2
    assert mean_freq["popular"] > mean_freq["random"]
    assert summary["n_eligible"] >= 60
