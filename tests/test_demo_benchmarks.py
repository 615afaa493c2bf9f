"""Demo MME and demo AMBER: built from a small demo world, read by the real loaders, every
question checked against the annotations by a separately written checker, scored by the real
MME / AMBER scorers on hand-written answers (expected values by hand from the official logic:
MME ``calculation.py``, AMBER ``inference.py``)."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from vcdflow.data import demo_amber, demo_mme
from vcdflow.data.demo_chair import build_demo_nltk_data
from vcdflow.data.demo_world import CATEGORIES, GRID, build_demo_world
from vcdflow.metrics import amber, mme

IMAGE_SIZE = 32
N_VAL = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    build_demo_world(d, n_train=1, n_val=N_VAL, image_size=IMAGE_SIZE, seed=3)
    inst = json.loads((d / "annotations" / "instances_val.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    objects = {}  # image file name -> {category: (row, col)}, the truth the checkers use
    for a in inst["annotations"]:
        name = next(im["file_name"] for im in inst["images"] if im["id"] == a["image_id"])
        x, y, w, h = a["bbox"]
        cell = IMAGE_SIZE / GRID
        objects.setdefault(name, {})[cats[a["category_id"]]] = (
            int((y + h / 2) // cell),
            int((x + w / 2) // cell),
        )
    return d, objects


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# Reference colours (RGB) for the palette names: each category's drawn colour must be nearest to
# its COLOR_NAMES entry, so the questions' colour words describe the pixels.
REFERENCE_RGB = {
    "red": (220, 20, 20),
    "white": (245, 245, 245),
    "gray": (140, 140, 150),
    "green": (40, 160, 40),
    "yellow": (250, 220, 0),
    "brown": (150, 90, 40),
    "pink": (235, 60, 200),
    "orange": (255, 140, 0),
    "black": (20, 20, 20),
    "blue": (30, 80, 230),
}


def test_colour_names_match_the_drawn_colours():
    assert set(demo_mme.PALETTE) == set(REFERENCE_RGB)
    for c in CATEGORIES:
        nearest = min(
            REFERENCE_RGB, key=lambda k: sum((a - b) ** 2 for a, b in zip(REFERENCE_RGB[k], c.color))
        )
        assert demo_mme.COLOR_NAMES[c.name] == nearest, c.name


_NUM = {"one": 1, "two": 2, "three": 3}


def expected_answer(question: str, objs: dict) -> str:
    """Independent truth of a demo question from the image's objects (category -> grid cell)."""
    q = re.sub(r" Please answer yes or no\.$", "", question)
    if m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", q):  # MME colour
        colour, name = m.groups()
        return "Yes" if name in objs and demo_mme.COLOR_NAMES[name] == colour else "No"
    if m := re.fullmatch(r"Is there an? (\w+) in the image\?", q):  # existence
        return "Yes" if m.group(1) in objs else "No"
    if m := re.fullmatch(r"(?:Is|Are) there (\w+) objects? in the image\?", q):  # count
        return "Yes" if _NUM[m.group(1)] == len(objs) else "No"
    if m := re.fullmatch(r"Is the (\w+) on the (left|right) side of the (\w+)\?", q):
        a, rel, b = m.groups()
        (_, ca), (_, cb) = objs[a], objs[b]
        return "Yes" if (ca < cb if rel == "left" else ca > cb) else "No"
    if m := re.fullmatch(r"Is the (\w+) (above|below) the (\w+)\?", q):
        a, rel, b = m.groups()
        (ra, ca), (rb, cb) = objs[a], objs[b]
        assert ca == cb  # vertical questions only for objects in one column
        return "Yes" if (ra < rb if rel == "above" else ra > rb) else "No"
    if m := re.fullmatch(r"Is the (\w+) (\w+) in the image\?", q):  # AMBER colour (attribute)
        name, colour = m.groups()
        return "Yes" if demo_mme.COLOR_NAMES[name] == colour else "No"
    raise AssertionError(f"unexpected question {question!r}")


# --------------------------------------------------------------------------- MME


@pytest.fixture(scope="module")
def mme_root(world, tmp_path_factory):
    d, _ = world
    out = tmp_path_factory.mktemp("mme") / "mme"
    demo_mme.build_demo_mme(
        d / "annotations" / "instances_val.json", d / "images" / "val", out, n_images=6, seed=0
    )
    return out


def test_demo_mme_layout_read_by_the_loader(mme_root, world):
    _, objects = world
    items = mme.load_items(mme_root, subtasks=list(demo_mme.DEMO_SUBTASKS))
    assert len(items) == 4 * 6 * 2
    assert [it["subtask"] for it in items[::12]] == list(demo_mme.DEMO_SUBTASKS)
    for first, second in zip(items[::2], items[1::2]):
        assert first["image_id"] == second["image_id"]
        assert (first["label"], second["label"]) == ("Yes", "No")  # one yes, one no, yes first as in MME
        assert first["question"] != second["question"]
        for it in (first, second):
            assert it["question"].endswith("? Please answer yes or no.")
            assert it["question_stem"] == it["question"][: -len(" Please answer yes or no.")]
            assert Path(it["image_path"]).is_file()
            assert expected_answer(it["question"], objects[it["image"]]) == it["label"], it["question"]
    position = [it for it in items if it["subtask"] == "position"]
    assert all(len(objects[it["image"]]) >= 2 for it in position)
    manifest = json.loads((mme_root / "manifest.json").read_text())
    assert manifest["subtasks"]["existence"]["questions"] == 12


def test_demo_mme_words_the_demo_model_cannot_read(mme_root):
    # The demo tokenizer maps words outside VOCAB_WORDS to <unk>: existence questions are
    # readable but for MME's 'or'; count, position and colour hinge on unknown words.
    m = json.loads((mme_root / "manifest.json").read_text())["subtasks"]
    assert m["existence"]["unknown_words"] == ["or"]
    assert {"objects"} <= set(m["count"]["unknown_words"])
    assert {"side"} <= set(m["position"]["unknown_words"])
    assert set(m["color"]["unknown_words"]) - {"or"} <= set(demo_mme.PALETTE)
    assert demo_mme.unknown_words(["Is there a cup in the image?"]) == []


def test_demo_mme_deterministic_and_seeded(world, mme_root, tmp_path):
    d, _ = world
    args = (d / "annotations" / "instances_val.json", d / "images" / "val")
    demo_mme.build_demo_mme(*args, tmp_path / "again", n_images=6, seed=0)
    assert _tree_digest(tmp_path / "again") == _tree_digest(mme_root)
    demo_mme.build_demo_mme(*args, tmp_path / "other", n_images=6, seed=1)
    assert _tree_digest(tmp_path / "other") != _tree_digest(mme_root)
    # the workflow's rule writes bare stems (suffix ""): the loader's question_stem is the question
    demo_mme.build_demo_mme(*args, tmp_path / "bare", n_images=6, seed=0, suffix="")
    bare = mme.load_items(tmp_path / "bare", subtasks=list(demo_mme.DEMO_SUBTASKS))
    full = mme.load_items(mme_root, subtasks=list(demo_mme.DEMO_SUBTASKS))
    assert [it["question"] for it in bare] == [it["question_stem"] for it in full]
    assert all(it["question_stem"] == it["question"] for it in bare)
    with pytest.raises(ValueError, match="subtasks must be among"):
        demo_mme.build_demo_mme(*args, tmp_path / "bad", subtasks=["OCR"])


def test_demo_mme_through_the_official_scorer(mme_root):
    items = mme.load_items(mme_root, subtasks=list(demo_mme.DEMO_SUBTASKS))
    perfect = [{**it, "answer": it["label"], "error": None} for it in items]
    s = mme.score(perfect)
    assert s["hallucination"] == 800.0 and s["n"] == 48
    # Always "Yes": acc 1/2, no image has both right -> 50 + 0 per subtask (calculation.py:132-143)
    yes = [{**it, "answer": "Yes", "error": None} for it in items]
    s = mme.score(yes)
    assert [s[f"{t}/score"] for t in demo_mme.DEMO_SUBTASKS] == [50.0] * 4 and s["hallucination"] == 200.0
    # Multi-line answers once the readme's "\n" deletion is applied: "Y\nes" -> yes, "\nNo" -> no
    nl = [{**it, "answer": "Y\nes" if it["label"] == "Yes" else "\nNo", "error": None} for it in items]
    assert mme.score(nl)["hallucination"] == 800.0


# --------------------------------------------------------------------------- AMBER


@pytest.fixture(scope="module")
def amber_root(world, tmp_path_factory):
    d, _ = world
    out = tmp_path_factory.mktemp("amber") / "amber"
    demo_amber.build_demo_amber(
        d / "annotations" / "instances_val.json", d / "images" / "val", out, n_images=10, seed=0
    )
    return out


def _json(p):
    return json.loads(Path(p).read_text())


def test_demo_amber_layout_read_by_the_loader(amber_root, world):
    _, objects = world
    data = amber_root / "data"
    ann = _json(data / "annotations.json")
    assert [a["id"] for a in ann] == list(range(1, len(ann) + 1))  # inference.py reads ground_truth[id-1]
    gen = amber.load_items(
        data / "query" / "query_generative.json",
        data / "annotations.json",
        amber_root / "image",
        check_images=True,
    )
    dis = amber.load_items(
        data / "query" / "query_discriminative.json",
        data / "annotations.json",
        amber_root / "image",
        check_images=True,
    )
    assert len(gen) == 10 and {it["question"] for it in gen} == {"Describe this image."}
    assert [it["question_id"] for it in gen] == list(range(1, 11))  # generative ids first, as in AMBER
    q = {name: _json(data / "query" / f"query_{name}.json") for name in demo_amber.QUERY_FILES}
    assert q["all"] == q["generative"] + q["discriminative"]
    assert q["discriminative"] == (
        q["discriminative-existence"] + q["discriminative-attribute"] + q["discriminative-relation"]
    )
    dims = [it["dimension"] for it in dis]
    assert dims == sorted(dims, key=["existence", "state", "relation"].index)
    assert dims.count("existence") == dims.count("state") == 20  # one pair per image
    relation = _json(data / "relation.json")
    assert set(relation) == {c.name for c in CATEGORIES} and relation["cup"] == ["mug"]
    assert (data / "safe_words.txt").read_text() == ""
    by_id = {a["id"]: a for a in ann}
    for it in gen:
        a, objs = by_id[it["question_id"]], objects[it["image"]]
        assert sorted(a["truth"]) == sorted(objs)
        groups = {c.group for c in CATEGORIES if c.name in objs}
        assert a["hallu"] and set(a["hallu"]) == {c.name for c in CATEGORIES if c.group in groups} - set(objs)
    for first, second in zip(dis[::2], dis[1::2]):
        assert first["image"] == second["image"] and (first["label"], second["label"]) == ("yes", "no")
        for it in (first, second):
            assert expected_answer(it["question"], objects[it["image"]]).lower() == it["label"], it[
                "question"
            ]
        if first["dimension"] == "existence":  # the absent object asked about is a likely hallucination
            name = re.fullmatch(r"Is there an? (\w+) in the image\?", second["question"]).group(1)
            gen_ann = next(by_id[g["question_id"]] for g in gen if g["image"] == second["image"])
            assert name in gen_ann["hallu"]
    m = _json(amber_root / "manifest.json")
    assert m["unknown_words"]["generative"] == [] and m["unknown_words"]["existence"] == []
    assert set(m["unknown_words"]["attribute"]) <= set(demo_mme.PALETTE)


def test_demo_amber_deterministic(world, amber_root, tmp_path):
    d, objects = world
    args = (d / "annotations" / "instances_val.json", d / "images" / "val")
    demo_amber.build_demo_amber(*args, tmp_path / "a", n_images=10, seed=0)
    assert _tree_digest(tmp_path / "a") == _tree_digest(amber_root)
    # three existence pairs per image at most (as many as present objects): no object asked twice
    demo_amber.build_demo_amber(*args, tmp_path / "b", n_images=10, seed=0, existence_pairs=3)
    ex = amber.load_items(
        tmp_path / "b" / "data" / "query" / "query_discriminative-existence.json",
        tmp_path / "b" / "data" / "annotations.json",
        tmp_path / "b" / "image",
    )
    hallu = {
        q["image"]: a["hallu"]
        for q, a in zip(
            _json(tmp_path / "b" / "data" / "query" / "query_generative.json"),
            _json(tmp_path / "b" / "data" / "annotations.json"),
        )
    }
    per_image = {}
    for it in ex:
        per_image.setdefault(it["image"], []).append(it["question"])
    assert set(per_image) == set(hallu)
    for image, qs in per_image.items():
        assert len(qs) == len(set(qs)) == 2 * min(3, len(objects[image]), len(hallu[image]))
    with pytest.raises(ValueError, match="existence_pairs must be a positive integer"):
        demo_amber.build_demo_amber(*args, tmp_path / "c", existence_pairs=0)


@pytest.fixture(scope="module")
def amber_eval(amber_root, tmp_path_factory):
    nltk_dir = build_demo_nltk_data(tmp_path_factory.mktemp("nltk") / "nltk_data")
    data = amber_root / "data"
    return amber.AmberEvaluator(
        data / "annotations.json", data / "relation.json", data / "safe_words.txt", nltk_dir
    )


def _caption(names):
    return " , ".join(f"a {n}" for n in names) + " ."


def test_demo_amber_through_the_scorer(amber_root, amber_eval):
    data = amber_root / "data"
    ann = {a["id"]: a for a in _json(data / "annotations.json")}
    gen = amber.load_items(
        data / "query" / "query_generative.json", data / "annotations.json", amber_root / "image"
    )
    dis = amber.load_items(
        data / "query" / "query_discriminative.json", data / "annotations.json", amber_root / "image"
    )
    # Captions naming exactly the truth objects: nothing hallucinated, all covered, no hallu object named.
    recs = [{**it, "answer": _caption(ann[it["question_id"]]["truth"]), "error": None} for it in gen]
    s = amber.score(recs, amber_eval)
    assert (s["chair"], s["cover"], s["hal"], s["cog"]) == (0.0, 100.0, 0.0, 0.0)
    # The first caption also names its first hallu object twice: CHAIR = 2 hallucinated of T + 2 kept
    # nouns (repeats count, inference.py:163-164), Hal = 1 of 10 responses, Cog = 1 of H hallu objects.
    first = ann[gen[0]["question_id"]]
    extra = first["hallu"][0]
    recs[0] = {**recs[0], "answer": _caption(first["truth"] + [extra, extra])}
    t = sum(len(ann[it["question_id"]]["truth"]) for it in gen)
    h = sum(len(ann[it["question_id"]]["hallu"]) for it in gen)
    s = amber.score(recs, amber_eval)
    assert s["chair"] == pytest.approx(100 * 2 / (t + 2)) and s["cover"] == 100.0
    assert s["hal"] == pytest.approx(10.0) and s["cog"] == pytest.approx(100 / h)
    # Official printout (every counter starts at 0.001, inference.py:259-262)
    so = amber.score(recs, amber_eval, official_rounding=True)
    assert so["chair"] == round(2 / (t + 2.001) * 100, 1) and so["cover"] == round(t / (t + 0.001) * 100, 1)
    assert so["hal"] == round(100 - 9 / 10.001 * 100, 1) and so["cog"] == round(1 / (h + 0.001) * 100, 1)
    # The association list: "two mugs" on an image with a cup -> lemma mug, cup's association
    # (inference.py:126-135): covers the cup, hallucinates nothing ("two" is no AMBER noun).
    with_cup = next(it for it in gen if "cup" in ann[it["question_id"]]["truth"])
    row = amber.score_items([{**with_cup, "answer": "two mugs .", "error": None}], amber_eval)[0]
    assert (row["mentions"], row["hallucinated_mentions"], row["covered"]) == (1, 0, 1)
    # Discriminative: every answer right -> accuracy 100 (exact); always "Yes" -> no "No" predicted
    # (P = 0 by the 0.001 counter start, inference.py:271) and accuracy = share of yes = 50.
    right = [{**it, "answer": "Yes" if it["label"] == "yes" else "No", "error": None} for it in dis]
    s = amber.score(right, amber_eval)
    assert s["accuracy"] == 100.0 and s["f1"] == pytest.approx(100 * 2 / 2.0001)
    assert s["existence/accuracy"] == s["attribute/accuracy"] == s["relation/accuracy"] == 100.0
    yes = [{**it, "answer": "Yes", "error": None} for it in dis]
    s = amber.score(yes, amber_eval)
    assert (s["accuracy"], s["precision"], s["recall"], s["f1"]) == (50.0, 0.0, 0.0, 0.0)
    both = amber.score(recs + right, amber_eval)
    assert both["amber_score"] == pytest.approx(0.5 * (100 - both["chair"] + both["f1"]))
