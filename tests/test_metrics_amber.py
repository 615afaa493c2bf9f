"""AMBER: loader, generative CHAIR/Cover/Hal/Cog with a stub similarity, discriminative
metrics with "No" as the positive class; expected values computed by hand from inference.py."""

import json

import pytest

from vcdflow.metrics import amber
from vcdflow.metrics.nltk_mini import build_mini_nltk_data

LEXICON = {
    "in": ("IN", "in"), "the": ("DT", "the"), "a": ("DT", "a"), "on": ("IN", "on"), "with": ("IN", "with"),
    "near": ("IN", "near"), "and": ("CC", "and"), "plays": ("VBZ", "play"), "sits": ("VBZ", "sit"),
    "image": ("NN", "image"), "puppy": ("NN", "puppy"), "ground": ("NN", "ground"), "kitten": ("NN", "kitten"),
    "tree": ("NN", "tree"), "cat": ("NN", "cat"), "kitty": ("NN", "kitty"), "dogs": ("NNS", "dog"),
    "dog": ("NN", "dog"), "red": ("JJ", "red"),
}
RELATION = {"dog": ["puppy"], "grass": ["ground"], "cat": [], "ball": [], "tree": ["bush"],
            "frisbee": [], "pet": ["kitten", "kitty"], "image": []}
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "ball"]},
    {"id": 2, "type": "generative", "truth": ["cat"], "hallu": ["dog"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 4, "type": "discriminative-hallucination", "truth": "yes"},
    {"id": 5, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 6, "type": "discriminative-attribute-number", "truth": "yes"},
    {"id": 7, "type": "relation", "truth": "no"},
    {"id": 8, "type": "discriminative-attribute-action", "truth": "no"},
    {"id": 9, "type": "discriminative-relation", "truth": "yes"},
]
QUERIES = [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
           {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."}] + [
    {"id": i, "image": f"AMBER_{i}.jpg", "query": f"Is there question {i}?"} for i in range(3, 10)]

SIM = {("kitten", "cat"): 0.9, ("kitty", "cat"): 0.95}


def stub_similarity(a, b):
    return SIM.get((a, b), 0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("amber")
    (d / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (d / "relation.json").write_text(json.dumps(RELATION))
    (d / "safe_words.txt").write_text("image\n")
    (d / "query_all.json").write_text(json.dumps(QUERIES))
    nd = build_mini_nltk_data(d / "nltk_data", LEXICON)
    return d, nd


@pytest.fixture(scope="module")
def ev(files):
    d, nd = files
    return amber.AmberEvaluator(d / "annotations.json", d / "relation.json", d / "safe_words.txt", nd,
                                similarity=stub_similarity)


def test_load_items(files):
    d, _ = files
    items = amber.load_items(d / "query_all.json", d / "annotations.json", "/amber/image")
    assert len(items) == 9
    assert items[0] == {"item_id": "amber/1", "image": "AMBER_1.jpg", "image_path": "/amber/image/AMBER_1.jpg",
                        "image_id": 1, "question_id": 1, "question": "Describe this image.", "label": None,
                        "amber_type": "generative", "dimension": "generative"}
    assert items[2]["label"] == "no" and items[2]["dimension"] == "existence"
    assert [i["dimension"] for i in items[2:]] == ["existence", "existence", "state", "number", "relation",
                                                    "action", "relation"]


def test_load_items_errors(files, tmp_path):
    d, _ = files
    q = tmp_path / "q.json"
    q.write_text(json.dumps(QUERIES + [{"id": 99, "image": "AMBER_9.jpg", "query": "x"}]))
    with pytest.raises(ValueError, match="element 9: id 99 is not in"):
        amber.load_items(q, d / "annotations.json", "/img")
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"id": 1, "type": "discriminative-hallucination", "truth": "maybe"}]))
    with pytest.raises(ValueError, match="a.json element 0: discriminative truth must be"):
        amber.load_annotations(a)
    a.write_text(json.dumps([{"id": 1, "type": "weird", "truth": "no"}]))
    with pytest.raises(ValueError, match="unknown type 'weird'"):
        amber.load_annotations(a)


def test_extract_nouns_real_nltk(ev):
    text = "In the image a puppy plays on the ground with a kitten near a tree."
    assert ev.extract_nouns(text) == ["image", "puppy", "ground", "kitten", "tree"]
    assert ev.extract_nouns("Two dogs.") == ["Two", "dog"]  # unknown words default to NN


GEN = [
    # id 1: image (global safe, counted, not hallucinated), puppy -> covers dog, ground -> covers
    # grass, kitten: similar to hallu 'cat' (cog) but not safe -> hallucinated, tree -> hallucinated
    {"item_id": "amber/1", "question_id": 1, "answer": "In the image a puppy plays on the ground with a kitten near a tree."},
    # id 2: cat covers cat; kitty is similar (0.95) to truth 'cat' -> safe; dog-similarity 0 -> no cog
    {"item_id": "amber/2", "question_id": 2, "answer": "A cat and a kitty."},
]
DIS = [
    {"item_id": "amber/3", "question_id": 3, "answer": "No, there is no cat."},  # gt no, pred No  (ok)
    {"item_id": "amber/4", "question_id": 4, "answer": "Yes"},                   # gt yes, pred Yes (ok)
    {"item_id": "amber/5", "question_id": 5, "answer": "Yes."},                  # gt no, pred Yes
    {"item_id": "amber/6", "question_id": 6, "answer": "No"},                    # gt yes, pred No
    {"item_id": "amber/7", "question_id": 7, "answer": "NO"},                    # gt no, POPE parser: Yes
    {"item_id": "amber/8", "question_id": 8, "answer": "no"},                    # gt no, pred No  (ok)
    {"item_id": "amber/9", "question_id": 9, "answer": "", "error": "timeout"},
]


def test_generative_items(ev):
    rows = amber.score_items(GEN, ev)
    r1, r2 = rows
    assert (r1["mentions"], r1["hallucinated_mentions"], r1["hallucinated"]) == (5, 2, 1)
    assert r1["hallucinated_objects"] == ["kitten", "tree"]
    assert (r1["covered"], r1["truth_objects"], r1["cog_hits"], r1["hallu_objects"]) == (2, 2, 1, 2)
    assert (r2["mentions"], r2["hallucinated_mentions"], r2["hallucinated"]) == (2, 0, 0)
    assert (r2["covered"], r2["truth_objects"], r2["cog_hits"], r2["hallu_objects"]) == (1, 1, 0, 1)


def test_without_similarity_only_exact_matches(files):
    d, nd = files
    ev0 = amber.AmberEvaluator(d / "annotations.json", d / "relation.json", d / "safe_words.txt", nd)
    r1, r2 = amber.score_items(GEN, ev0)
    assert r1["cog_hits"] == 0 and r1["hallucinated_mentions"] == 2
    assert r2["hallucinated_mentions"] == 1  # kitty no longer rescued by similarity


def test_score_full(ev):
    s = amber.score(GEN + DIS, ev)
    # generative: CHAIR = 2 / (5+2); Cover = 3/3; Hal = 1 of 2 responses; Cog = 1 / (2+1)
    assert s["chair"] == pytest.approx(100 * 2 / 7)
    assert s["cover"] == pytest.approx(100.0)
    assert s["hal"] == pytest.approx(50.0)
    assert s["cog"] == pytest.approx(100 / 3)
    # discriminative (ids 3-8): correct 3,4,8 -> acc 3/6; predicted No: 3,6,8 (correct No: 3,8)
    # -> P = 2/3; gt No: 3,5,7,8 -> R = 2/4; F1 = 2PR/(P+R+1e-4)
    p, r = 2 / 3, 2 / 4
    f1 = 2 * p * r / (p + r + 1e-4)
    assert s["accuracy"] == pytest.approx(50.0)
    assert s["precision"] == pytest.approx(100 * p)
    assert s["recall"] == pytest.approx(100 * r)
    assert s["f1"] == pytest.approx(100 * f1)
    assert s["amber_score"] == pytest.approx(0.5 * (100 - 100 * 2 / 7 + 100 * f1))
    # existence (ids 3, 4): P = R = 1, F1 = 2/(2 + 0.001) -- the source uses +0.001 here
    assert s["existence/accuracy"] == 100.0
    assert s["existence/f1"] == pytest.approx(100 * 2 / 2.001)
    # attribute = state(5) + number(6) + action(8): correct only 8; pred No 6,8 (ok 8); gt No 5,8
    pa, ra = 1 / 2, 1 / 2
    assert s["attribute/accuracy"] == pytest.approx(100 / 3)
    assert s["attribute/f1"] == pytest.approx(100 * 2 * pa * ra / (pa + ra + 1e-4))
    # relation: only id 7 ('NO' -> Yes under the POPE parser), gt no -> wrong, no predicted No
    assert s["relation/accuracy"] == 0.0 and s["relation/precision"] == 0.0 and s["relation/recall"] == 0.0
    assert s["n"] == 8 and s["n_errors"] == 1 and s["n_generative"] == 2 and s["n_discriminative"] == 6


def test_exact_parser_is_the_raw_official_comparison(ev):
    s = amber.score(DIS, ev, parser="exact")
    # only 'Yes' (4) and 'No' (6) are exact; 'no' (8), 'NO', 'Yes.', 'No, ...' match nothing
    # correct: 4 -> acc 1/6; predicted No: 6 (gt yes) -> P 0; R 0
    assert s["accuracy"] == pytest.approx(100 / 6)
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0
    assert "chair" not in s and "amber_score" not in s
    assert amber.parse_answer("No, it is not.", "first_word") == "No"
    assert amber.parse_answer("Maybe", "first_word") == "Maybe"


def test_official_rounding(ev):
    s = amber.score(GEN + DIS, ev, official_rounding=True)
    chair_r = round(100 * 2 / 7, 1)                  # 28.6
    p, r = round(100 * 2 / 3, 1), round(100 * 2 / 4, 1)  # 66.7, 50.0
    f1 = round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + 0.0001) * 100, 1)
    assert (s["chair"], s["precision"], s["recall"], s["f1"]) == (chair_r, p, r, f1)
    assert s["amber_score"] == pytest.approx(0.5 * (100 - chair_r + f1))
    assert s["cog"] == round(100 / 3, 1)


def test_missing_relation_key_and_unknown_id(files, ev):
    d, nd = files
    ann = d / "ann2.json"
    ann.write_text(json.dumps([{"id": 1, "type": "generative", "truth": ["unicorn"], "hallu": []}]))
    ev2 = amber.AmberEvaluator(ann, d / "relation.json", d / "safe_words.txt", nd)
    with pytest.raises(ValueError, match="object 'unicorn' is not a key of"):
        amber.score([{"item_id": "amber/1", "question_id": 1, "answer": "A cat."}], ev2)
    with pytest.raises(ValueError, match="amber/77: id 77 is not in the annotations"):
        amber.score([{"item_id": "amber/77", "question_id": None, "answer": "Yes"}], ev)
    assert amber.amber_score(20.0, 80.0) == 80.0


def test_spacy_similarity_missing_model(tmp_path):
    try:
        import spacy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs spaCy"):
            amber.spacy_similarity(tmp_path / "en_core_web_lg")
    else:
        with pytest.raises(FileNotFoundError, match="spaCy model not found"):
            amber.spacy_similarity(tmp_path / "en_core_web_lg")
