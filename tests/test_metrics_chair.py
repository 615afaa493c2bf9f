"""CHAIR: OPERA chair.py logic on the real COCO synonyms, run through real NLTK on mini data."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vcdflow.metrics import chair
from vcdflow.metrics.nltk_mini import build_mini_nltk_data

SYN = Path(__file__).parent / "fixtures" / "metrics" / "chair" / "synonyms.txt"

# word -> (Penn tag, lemma); every token of the fixture captions (lower-cased).
LEXICON = {
    "a": ("DT", "a"),
    "the": ("DT", "the"),
    "and": ("CC", "and"),
    "two": ("CD", "two"),
    "of": ("IN", "of"),
    "near": ("IN", "near"),
    "with": ("IN", "with"),
    "on": ("IN", "on"),
    "from": ("IN", "from"),
    "to": ("TO", "to"),
    "up": ("RP", "up"),
    "next": ("JJ", "next"),
    "hot": ("JJ", "hot"),
    "is": ("VBZ", "be"),
    "sit": ("VBP", "sit"),
    "rides": ("VBZ", "ride"),
    "drinks": ("VBZ", "drink"),
    "holding": ("VBG", "hold"),
    "parked": ("VBN", "park"),
    "sleeps": ("VBZ", "sleep"),
    "dog": ("NN", "dog"),
    "dogs": ("NNS", "dog"),
    "cup": ("NN", "cup"),
    "cups": ("NNS", "cup"),
    "cat": ("NN", "cat"),
    "puppy": ("NN", "puppy"),
    "toilet": ("NN", "toilet"),
    "seat": ("NN", "seat"),
    "man": ("NN", "man"),
    "teddy": ("NN", "teddy"),
    "bear": ("NN", "bear"),
    "motor": ("NN", "motor"),
    "bike": ("NN", "bike"),
    "street": ("NN", "street"),
    "plate": ("NN", "plate"),
    "baby": ("NN", "baby"),
    "mice": ("NNS", "mouse"),
    "chair": ("NN", "chair"),
}

# COCO-format ground truth: image -> instance categories and captions.
CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 4, "name": "motorcycle"},
    {"id": 18, "name": "dog"},
    {"id": 47, "name": "cup"},
    {"id": 58, "name": "hot dog"},
    {"id": 70, "name": "toilet"},
    {"id": 88, "name": "teddy bear"},
]
GT = {
    1: ([18, 47], ["A dog next to a cup.", "A puppy drinks from a cup."]),  # {dog, cup}
    2: ([70], ["A toilet with the seat up."]),  # seat dropped -> {toilet}
    3: ([1, 88], ["A man holding a teddy bear."]),  # {person, teddy bear}
    4: ([4], ["A motor bike parked on the street."]),  # 'motor bike' never fires
    5: ([58], ["A hot dog on a plate."]),  # {hot dog}
    6: ([], []),  # known image, empty gt
}


@pytest.fixture(scope="module")
def nltk_dir(tmp_path_factory):
    return build_mini_nltk_data(tmp_path_factory.mktemp("nltk_data"), LEXICON)


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("coco")
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 4, "height": 4} for i in GT]
    anns, caps = [], []
    for imid, (cats, captions) in GT.items():
        for c in cats:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": imid,
                    "category_id": c,
                    "bbox": [0, 0, 1, 1],
                    "area": 1,
                    "iscrowd": 0,
                }
            )
        for c in captions:
            caps.append({"id": len(caps) + 1, "image_id": imid, "caption": c})
    inst = d / "instances_val2014.json"
    inst.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    capf = d / "captions_val2014.json"
    capf.write_text(json.dumps({"images": images, "annotations": caps}))
    return inst, capf


@pytest.fixture(scope="module")
def ev(nltk_dir, coco_files):
    inst, capf = coco_files
    return chair.ChairEvaluator(SYN, nltk_dir, instances=inst, captions=capf)


# --------------------------------------------------------------------------------------
# synonyms file and its quirks
# --------------------------------------------------------------------------------------
def test_synonyms_parse_keeps_quirks():
    lines = chair.read_synonyms(SYN)
    assert len(lines) == 80
    entries = [e for line in lines for e in line]
    assert len(entries) == 416 and len(set(entries)) == 403
    assert " motor bike" in entries and "motor bike" not in entries
    assert " cheesecake" in entries and "cheesecake" not in entries
    assert lines[0][0] == "person" and lines[3][0] == "motorcycle"


def test_double_word_dict(ev):
    d = ev.double_word_dict
    assert d["hot dog"] == "hot dog" and d["teddy bear"] == "teddy bear" and d["motor bike"] == "motor bike"
    assert d["baby bear"] == "bear" and d["adult cub"] == "cub" and d["passenger jet"] == "jet"
    assert d["bow tie"] == "tie" and d["toilet seat"] == "toilet" and d["wine glas"] == "wine glass"
    # 26 distinct self-mapped pairs ('bow tie' is overridden) + 24 baby/adult + 2 passenger + 3
    assert len(d) == 26 + 24 + 2 + 3


# --------------------------------------------------------------------------------------
# caption_to_words through real NLTK
# --------------------------------------------------------------------------------------
def test_caption_to_words(ev):
    words, nodes, idxs, raw = ev.caption_to_words("A dog and two dogs sit near the cups and a cat.")
    assert raw == ["a", "dog", "and", "two", "dog", "sit", "near", "the", "cup", "and", "a", "cat", "."]
    assert nodes == ["dog", "dog", "cup", "cat"] and idxs == [1, 4, 8, 11]

    # 'motor bike' merges but is not a synonym (double-space bug) and hides 'bike' (bicycle)
    words, nodes, _, raw = ev.caption_to_words("A man rides a motor bike.")
    assert raw == ["a", "man", "ride", "a", "motor bike", "."] and nodes == ["person"]

    # 'hot dog' and 'teddy bear' merge; plain 'dog'/'bear' still fire
    assert ev.caption_to_words("A hot dog and a dog.")[1] == ["hot dog", "dog"]
    assert ev.caption_to_words("A teddy bear and a bear.")[1] == ["teddy bear", "bear"]

    # toilet seat -> toilet; 'seat' (a chair synonym) dropped when toilet is present
    _, nodes, _, raw = ev.caption_to_words("The seat of the toilet is next to a toilet seat.")
    assert nodes == ["toilet", "toilet"] and len(raw) == 11 and "seat" in raw
    assert ev.caption_to_words("A seat.")[1] == ["chair"]

    # baby X -> X keeps 'baby' (a person synonym) from firing; mice -> mouse via noun.exc
    assert ev.caption_to_words("A baby bear and two mice.")[1] == ["bear", "mouse"]


def test_ground_truth(ev):
    assert ev.gt_objects(1) == {"dog", "cup"}
    assert ev.gt_objects(2) == {"toilet"}
    assert ev.gt_objects("3") == {"person", "teddy bear"}
    assert ev.gt_objects(4) == {"motorcycle"}
    assert ev.gt_objects(5) == {"hot dog"}
    assert ev.gt_objects(6) == frozenset()


# --------------------------------------------------------------------------------------
# metrics, hand-computed from the official logic
# --------------------------------------------------------------------------------------
RECORDS = [
    # image 1, gt {dog, cup}: mentions dog,dog,cup,cat -> 1 of 4 hallucinated; recall {dog,cup}=2/2; 13 tokens
    {
        "item_id": "c1",
        "image_id": 1,
        "answer": "A dog and two dogs sit near the cups and a cat.",
        "error": None,
    },
    # image 2, gt {toilet}: toilet,toilet -> 0 of 2; recall 1/1; 11 tokens after merge
    {
        "item_id": "c2",
        "image_id": 2,
        "answer": "The seat of the toilet is next to a toilet seat.",
        "error": None,
    },
    # image 3, gt {person, teddy bear}: teddy bear, bear -> 1 of 2; recall 1/2; 6 tokens
    {"item_id": "c3", "image_id": 3, "answer": "A teddy bear and a bear.", "error": None},
    # image 4, gt {motorcycle}: person -> 1 of 1; recall 0/1; 6 tokens
    {"item_id": "c4", "image_id": 4, "answer": "A man rides a motor bike.", "error": None},
    # image 5, gt {hot dog}: hot dog, dog -> 1 of 2; recall 1/1; 6 tokens
    {"item_id": "c5", "image_id": 5, "answer": "A hot dog and a dog.", "error": None},
    # errored record: excluded
    {"item_id": "c6", "image_id": 1, "answer": "", "error": "RuntimeError: boom"},
    # image 3: bear, mouse -> 2 of 2; recall 0/2; 6 tokens
    {"item_id": "c7", "image_id": 3, "answer": "A baby bear and two mice.", "error": None},
]


def test_score_items(ev):
    rows = chair.score_items(RECORDS, ev)
    assert [r["item_id"] for r in rows] == ["c1", "c2", "c3", "c4", "c5", "c7"]
    assert [r["hallucinated"] for r in rows] == [1, 0, 1, 1, 1, 1]
    assert [r["mentions"] for r in rows] == [4, 2, 2, 1, 2, 2]
    assert [r["hallucinated_mentions"] for r in rows] == [1, 0, 1, 1, 1, 2]
    assert [r["gt_objects"] for r in rows] == [2, 1, 2, 1, 1, 2]
    assert [r["recalled_objects"] for r in rows] == [2, 1, 1, 0, 1, 0]
    assert [r["length"] for r in rows] == [13, 11, 6, 6, 6, 6]
    assert rows[0]["hallucinated_objects"] == ["cat"]
    assert rows[5]["hallucinated_objects"] == ["bear", "mouse"]


def test_score(ev):
    s = chair.score(RECORDS, ev)
    assert s["chair_s"] == pytest.approx(100 * 5 / 6)
    assert s["chair_i"] == pytest.approx(100 * (1 + 0 + 1 + 1 + 1 + 2) / (4 + 2 + 2 + 1 + 2 + 2))
    assert s["recall"] == pytest.approx(100 * (2 + 1 + 1 + 0 + 1 + 0) / (2 + 1 + 2 + 1 + 1 + 2))
    assert s["length"] == pytest.approx((13 + 11 + 6 + 6 + 6 + 6) / 6)
    assert s["n"] == 6 and s["n_errors"] == 1


def test_repeats_count_in_chair_i(ev):
    one = chair.score([{"item_id": "x", "image_id": 2, "answer": "A cat."}], ev)
    three = chair.score([{"item_id": "x", "image_id": 2, "answer": "A cat and a cat and a cat."}], ev)
    assert one["chair_i"] == 100.0 and three["chair_i"] == 100.0
    mixed = chair.score([{"item_id": "x", "image_id": 2, "answer": "A cat and a toilet and a toilet."}], ev)
    assert mixed["chair_i"] == pytest.approx(100 / 3)  # 1 of 3 mentions, repeats counted
    assert mixed["recall"] == 100.0  # recall counts the set {toilet}


def test_score_with_kwargs_and_unknown_image(nltk_dir, coco_files):
    inst, capf = coco_files
    s = chair.score(RECORDS[:1], synonyms=SYN, nltk_data=nltk_dir, instances=[inst], captions=[capf])
    assert s["chair_i"] == 25.0
    ev = chair.ChairEvaluator(SYN, nltk_dir, instances=inst, captions=capf)
    bad = [{"item_id": "z9", "image_id": 999, "answer": "A dog."}]
    with pytest.raises(KeyError, match="z9.*image_id 999"):
        chair.score(bad, ev)
    # OPERA behaviour on request: empty ground truth, every mention hallucinated
    assert chair.score(bad, ev, allow_unknown=True)["chair_s"] == 100.0
    assert chair.score([], ev)["n"] == 0


def test_category_not_in_synonyms(nltk_dir, tmp_path):
    f = tmp_path / "inst.json"
    f.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 5}],
                "categories": [{"id": 5, "name": "spaceship"}],
            }
        )
    )
    with pytest.raises(ValueError, match="category 'spaceship' is not an entry of the synonyms file"):
        chair.ChairEvaluator(SYN, nltk_dir, instances=f)


# --------------------------------------------------------------------------------------
# NLTK data handling
# --------------------------------------------------------------------------------------
def test_missing_nltk_package_is_a_clear_error(tmp_path):
    d = build_mini_nltk_data(tmp_path / "nd", {"dog": ("NN", "dog")})
    import shutil

    shutil.rmtree(d / "taggers")
    with pytest.raises(
        chair.NltkDataMissing, match="averaged_perceptron_tagger_eng.*" + str(tmp_path / "nd")
    ):
        chair.NltkTools(d)
    with pytest.raises(chair.NltkDataMissing, match="does not exist"):
        chair.NltkTools(tmp_path / "absent")


def test_zipped_wordnet_as_downloaded(tmp_path):
    """nltk.download may leave corpora/wordnet.zip (top folder wordnet/); it must be found."""
    import shutil
    import zipfile

    d = build_mini_nltk_data(tmp_path / "nd", {"mice": ("NNS", "mouse")})
    wn = d / "corpora" / "wordnet"
    with zipfile.ZipFile(d / "corpora" / "wordnet.zip", "w") as zf:
        for f in sorted(wn.iterdir()):
            zf.write(f, f"wordnet/{f.name}")
    shutil.rmtree(wn)
    tools = chair.NltkTools(d)
    assert tools.lemmatize("mice") == "mouse"
    assert tools.pos_tag(tools.word_tokenize("mice.")) == [("mice", "NNS"), (".", ".")]


def test_two_data_dirs_in_one_process(tmp_path, nltk_dir):
    other = build_mini_nltk_data(tmp_path / "other", {"dogs": ("VBZ", "dog"), "foxes": ("NNS", "fox")})
    a, b = chair.NltkTools(nltk_dir), chair.NltkTools(other)
    assert a.pos_tag(["dogs"]) == [("dogs", "NNS")]
    assert b.pos_tag(["dogs"]) == [("dogs", "VBZ")]
    assert a.pos_tag(["dogs"]) == [("dogs", "NNS")]
    assert a.lemmatize("foxes") == "foxes" and b.lemmatize("foxes") == "fox"  # 'fox' is indexed only in b
    assert a.lemmatize("cups") == "cup" and b.lemmatize("cups") == "cups"


def test_mini_data_matches_plain_nltk_in_fresh_process(nltk_dir, ev):
    """The real, unwrapped nltk functions on the same data give the same caption words."""
    cap = "The seat of the toilet is next to a toilet seat. A baby bear and two mice."
    code = textwrap.dedent(f"""
        import json, nltk
        from nltk.corpus import wordnet
        from nltk.stem import WordNetLemmatizer
        nltk.data.path[:] = [{str(nltk_dir)!r}]
        wnl = WordNetLemmatizer()
        def pos(t):
            return {{'J': wordnet.ADJ, 'V': wordnet.VERB, 'N': wordnet.NOUN, 'R': wordnet.ADV}}.get(t[0], wordnet.NOUN)
        toks = nltk.word_tokenize({cap!r}.lower())
        print(json.dumps([wnl.lemmatize(w, pos(t)) for w, t in nltk.pos_tag(toks)]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lemmas = json.loads(out)
    tokens = ev.nltk.word_tokenize(cap.lower())
    assert lemmas == [ev.nltk.lemmatize(w, ev.wordnet_pos(t)) for w, t in ev.nltk.pos_tag(tokens)]
    assert lemmas[:6] == ["the", "seat", "of", "the", "toilet", "be"] and "mouse" in lemmas


def test_builder_rejects_bad_lexicon(tmp_path):
    with pytest.raises(ValueError, match="one token"):
        build_mini_nltk_data(tmp_path / "x", {"hot dog": ("NN", "hot dog")})
    with pytest.raises(ValueError, match="must be \\(penn_tag, lemma\\)"):
        build_mini_nltk_data(tmp_path / "y", {"dog": "NN"})


# --------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------
def test_load_items_seeded_subset(coco_files):
    import random

    _, capf = coco_files
    items = chair.load_items(capf, "/coco/val2014", n=3, seed=7)
    expected = random.Random(7).sample([1, 2, 3, 4, 5, 6], 3)  # HALC: random.sample(getImgIds(), n)
    assert [i["image_id"] for i in items] == expected
    assert items[0] == {
        "item_id": f"chair/{expected[0]}",
        "image": f"COCO_val2014_{expected[0]:012d}.jpg",
        "image_path": str(Path("/coco/val2014") / f"COCO_val2014_{expected[0]:012d}.jpg"),
        "image_id": expected[0],
        "question_id": None,
        "question": "Please describe this image in detail.",
        "label": None,
    }
    assert chair.load_items(capf, "/coco/val2014", n=3, seed=7) == items  # stable
    assert [i["image_id"] for i in chair.load_items(capf, "/i", n=None)] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="asked for n=500 images but the file has 6"):
        chair.load_items(capf, "/i")


def test_load_items_id_list(coco_files, tmp_path):
    _, capf = coco_files
    txt = tmp_path / "ids.txt"
    txt.write_text("5\nCOCO_val2014_000000000002.jpg\n\n3\n")
    assert [i["image_id"] for i in chair.load_items(capf, "/i", id_list=txt)] == [5, 2, 3]
    jl = tmp_path / "greedy.jsonl"  # OPERA caption log format
    jl.write_text('{"image_id": 4, "caption": "x"}\n{"image_id": 1, "caption": "y"}\n')
    assert [i["image_id"] for i in chair.load_items(capf, "/i", id_list=jl)] == [4, 1]
    js = tmp_path / "ids.json"
    js.write_text("[6, 1]")
    assert [i["image_id"] for i in chair.load_items(capf, "/i", id_list=js)] == [6, 1]
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n77\n")
    with pytest.raises(ValueError, match="bad.txt: entry 2 \\(77\\) is not an image"):
        chair.load_items(capf, "/i", id_list=bad)
    badjl = tmp_path / "bad.jsonl"
    badjl.write_text('{"image_id": 1}\n{"caption": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected an object with 'image_id'"):
        chair.load_items(capf, "/i", id_list=badjl)
