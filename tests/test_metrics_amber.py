"""AMBER: loader, generative CHAIR/Cover/Hal/Cog with a stub similarity, discriminative
metrics with "No" as the positive class; expected values computed by hand from inference.py."""

import json

import pytest

from vcdflow.metrics import amber
from vcdflow.metrics.nltk_mini import build_mini_nltk_data

LEXICON = {
    "in": ("IN", "in"),
    "the": ("DT", "the"),
    "a": ("DT", "a"),
    "on": ("IN", "on"),
    "with": ("IN", "with"),
    "near": ("IN", "near"),
    "and": ("CC", "and"),
    "plays": ("VBZ", "play"),
    "sits": ("VBZ", "sit"),
    "image": ("NN", "image"),
    "puppy": ("NN", "puppy"),
    "ground": ("NN", "ground"),
    "kitten": ("NN", "kitten"),
    "tree": ("NN", "tree"),
    "cat": ("NN", "cat"),
    "kitty": ("NN", "kitty"),
    "dogs": ("NNS", "dog"),
    "dog": ("NN", "dog"),
    "red": ("JJ", "red"),
}
RELATION = {
    "dog": ["puppy"],
    "grass": ["ground"],
    "cat": [],
    "ball": [],
    "tree": ["bush"],
    "frisbee": [],
    "pet": ["kitten", "kitty"],
    "image": [],
}
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
QUERIES = [
    {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
    {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
] + [{"id": i, "image": f"AMBER_{i}.jpg", "query": f"Is there question {i}?"} for i in range(3, 10)]

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
    return amber.AmberEvaluator(
        d / "annotations.json", d / "relation.json", d / "safe_words.txt", nd, similarity=stub_similarity
    )


def test_load_items(files):
    d, _ = files
    items = amber.load_items(d / "query_all.json", d / "annotations.json", "/amber/image")
    assert len(items) == 9
    assert items[0] == {
        "item_id": "amber/1",
        "image": "AMBER_1.jpg",
        "image_path": "/amber/image/AMBER_1.jpg",
        "image_id": 1,
        "question_id": 1,
        "question": "Describe this image.",
        "label": None,
        "amber_type": "generative",
        "dimension": "generative",
    }
    assert items[2]["label"] == "no" and items[2]["dimension"] == "existence"
    assert [i["dimension"] for i in items[2:]] == [
        "existence",
        "existence",
        "state",
        "number",
        "relation",
        "action",
        "relation",
    ]


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
    {
        "item_id": "amber/1",
        "question_id": 1,
        "answer": "In the image a puppy plays on the ground with a kitten near a tree.",
    },
    # id 2: cat covers cat; kitty is similar (0.95) to truth 'cat' -> safe; dog-similarity 0 -> no cog
    {"item_id": "amber/2", "question_id": 2, "answer": "A cat and a kitty."},
]
DIS = [
    {"item_id": "amber/3", "question_id": 3, "answer": "No, there is no cat."},  # gt no, pred No  (ok)
    {"item_id": "amber/4", "question_id": 4, "answer": "Yes"},  # gt yes, pred Yes (ok)
    {"item_id": "amber/5", "question_id": 5, "answer": "Yes."},  # gt no, pred Yes
    {"item_id": "amber/6", "question_id": 6, "answer": "No"},  # gt yes, pred No
    {"item_id": "amber/7", "question_id": 7, "answer": "NO"},  # gt no, POPE parser: Yes
    {"item_id": "amber/8", "question_id": 8, "answer": "no"},  # gt no, pred No  (ok)
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


# Official figures (official_rounding=True), by hand from junyangwang0410/AMBER@534babf:
# every counter *_num starts at 0.001 (data/metrics.txt:1-44, read by init(), inference.py:40-52),
# each printed figure is round(score / num * 100, 1) (inference.py:259-262, 270-272, 281-283),
# attribute sums the state/number/action counters, so its denominators carry 0.003
# (inference.py:292-294), and F1 comes from the rounded P and R (inference.py:273, 284, 295).
def test_official_rounding(ev):
    s = amber.score(GEN + DIS, ev, official_rounding=True)
    assert s["chair"] == 28.6  # round(2 / 7.001 * 100, 1)
    assert s["cover"] == 100.0  # round(3 / 3.001 * 100, 1) = round(99.967, 1)
    assert s["hal"] == 50.0  # round(100 - 1 / 2.001 * 100, 1) = round(50.025, 1)
    assert s["cog"] == 33.3  # round(1 / 3.001 * 100, 1)
    assert s["accuracy"] == 50.0  # round(3 / 6.001 * 100, 1) = round(49.992, 1)
    assert s["precision"] == 66.6  # round(2 / 3.001 * 100, 1) = round(66.644, 1); exact 2/3 would print 66.7
    assert s["recall"] == 50.0  # round(2 / 4.001 * 100, 1) = round(49.988, 1)
    assert s["f1"] == 57.1  # round(2*.666*.5 / (.666 + .5 + .0001) * 100, 1) = round(57.113, 1)
    assert s["amber_score"] == pytest.approx(0.5 * (100 - 28.6 + 57.1))
    # existence (ids 3, 4: both right): acc round(2/2.001*100) = 100.0; P = R = round(1/1.001*100) = 99.9;
    # F1 = round(2*.999*.999 / (.999 + .999 + .001) * 100, 1) = round(99.850, 1) = 99.9
    assert (s["existence/accuracy"], s["existence/precision"], s["existence/recall"], s["existence/f1"]) == (
        100.0,
        99.9,
        99.9,
        99.9,
    )
    # attribute (ids 5, 6, 8; only 8 right): acc round(1 / 3.003 * 100) = 33.3; predicted No: 6, 8 (8 right)
    # -> P = round(1 / 2.003 * 100) = 49.9 (with one counter's 0.001 it would print 50.0); gt No: 5, 8 -> R = 49.9;
    # F1 = round(2*.499*.499 / (.998 + .0001) * 100, 1) = 49.9
    assert (s["attribute/accuracy"], s["attribute/precision"], s["attribute/recall"], s["attribute/f1"]) == (
        33.3,
        49.9,
        49.9,
        49.9,
    )
    # state alone (id 5, wrong; gt no, no predicted No): acc 0, P = 0 / 0.001 = 0, R = 0 / 1.001 = 0
    assert (s["state/accuracy"], s["state/precision"], s["state/recall"], s["state/f1"]) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )
    # action alone (id 8, right): acc = P = R = round(1 / 1.001 * 100, 1) = 99.9 (exact: 100)
    assert (s["action/accuracy"], s["action/precision"], s["action/recall"]) == (99.9, 99.9, 99.9)
    assert s["action/f1"] == 99.9  # round(2*.999*.999 / (1.998 + .0001) * 100, 1) = round(99.895, 1)


def test_official_counters_show_at_small_counts(files, ev):
    # One clean caption: exact Hal 0, official round(100 - 1 / 1.001 * 100, 1) = 0.1 (inference.py:262).
    one = [{"item_id": "amber/2", "question_id": 2, "answer": "A cat and a kitty."}]
    assert amber.score(one, ev)["hal"] == 0.0
    assert amber.score(one, ev, official_rounding=True)["hal"] == 0.1
    # Cover: 1 of 1 truth object -> round(1 / 1.001 * 100, 1) = 99.9 (inference.py:260), exact 100
    assert amber.score(one, ev, official_rounding=True)["cover"] == 99.9
    assert amber.score(one, ev)["cover"] == 100.0
    # attribute over one right 'number' answer: 1 / 1.003 -> 99.7, the dimension's own 1 / 1.001 -> 99.9
    num = [{"item_id": "amber/6", "question_id": 6, "answer": "Yes"}]
    s = amber.score(num, ev, official_rounding=True)
    assert s["attribute/accuracy"] == 99.7 and s["number/accuracy"] == 99.9 and s["accuracy"] == 99.9
    assert amber.score(num, ev)["attribute/accuracy"] == 100.0


def test_chair_over_zero_nouns_is_zero_as_official(ev):
    # "Yes." keeps no noun of relation.json ('Yes' is tagged NN but is not in the vocabulary):
    # inference.py:259 prints round(0 / 0.001 * 100, 1) = 0 (chair_num starts at 0.001), not NaN.
    recs = [{"item_id": "amber/2", "question_id": 2, "answer": "Yes."}]
    (row,) = amber.score_items(recs, ev)
    assert row["mentions"] == 0 and row["hallucinated"] == 0
    for rounding in (False, True):
        s = amber.score(recs, ev, official_rounding=rounding)
        assert s["chair"] == 0.0 and s["cover"] == 0.0 and s["cog"] == 0.0  # 0 of 1 truth / hallu object
    assert amber.score(recs, ev, official_rounding=True)["hal"] == 0.1  # 100 - 1 / 1.001 * 100


def test_empty_object_lists_score_zero(files):
    d, nd = files
    ann = d / "ann_empty.json"
    ann.write_text(json.dumps([{"id": 1, "type": "generative", "truth": [], "hallu": []}]))
    ev0 = amber.AmberEvaluator(ann, d / "relation.json", d / "safe_words.txt", nd)
    recs = [{"item_id": "amber/1", "question_id": 1, "answer": "A dog."}]
    for rounding in (False, True):
        s = amber.score(recs, ev0, official_rounding=rounding)
        # dog is hallucinated (no truth): CHAIR 1/1; Cover and Cog count nothing -> 0 (inference.py:260-261)
        assert s["cover"] == 0.0 and s["cog"] == 0.0
        assert s["chair"] == (99.9 if rounding else 100.0)  # round(1 / 1.001 * 100, 1)
        assert s["hal"] == 100.0


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
