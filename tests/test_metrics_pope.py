"""POPE loader and scorer: real fixture files and hand-computed edge cases."""

import collections
import hashlib
import json
from pathlib import Path

import pytest

from vcdflow.metrics import pope

FIX = Path(__file__).parent / "fixtures" / "metrics" / "pope"


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------
# real files
# --------------------------------------------------------------------------------------
def test_fixture_checksums_match_spec():
    # md5 values from the spec (HEAD files) and the shared data README.
    assert _md5(FIX / "coco" / "coco_pope_random.json") == "dc9b6c41ad832c48da758cfa85b37d2c"
    assert _md5(FIX / "coco" / "coco_pope_popular.json") == "64902313fb995e09fa478de9741910d7"
    assert _md5(FIX / "gqa" / "gqa_pope_seem_random.json").startswith("fb7febb7")


def test_head_random_lf_file():
    path = FIX / "coco" / "coco_pope_random.json"
    assert b"\r\n" not in path.read_bytes()
    items = pope.load_items(path, "/img")
    assert len(items) == 3000
    assert collections.Counter(i["label"] for i in items) == {"yes": 1500, "no": 1500}
    first = items[0]
    assert first == {
        "item_id": "pope/random/1",
        "image": "COCO_val2014_000000310196.jpg",
        "image_path": str(Path("/img") / "COCO_val2014_000000310196.jpg"),
        "image_id": 310196,
        "question_id": 1,
        "question": "Is there a snowboard in the image?",
        "label": "yes",
        "split": "random",
    }
    assert len({i["item_id"] for i in items}) == 3000
    # 500 images x 6 questions, ordered y,n,y,n,y,n within an image
    per_image = collections.Counter(i["image"] for i in items)
    assert len(per_image) == 500 and set(per_image.values()) == {6}
    assert [i["label"] for i in items[:6]] == ["yes", "no"] * 3


def test_crlf_file_loads_same_as_lf_parse():
    path = FIX / "coco" / "coco_pope_popular.json"
    raw = path.read_bytes()
    assert raw.count(b"\r\n") >= 2999  # CRLF line ends, as the spec says
    items = pope.load_items(path, "imgs")
    assert len(items) == 3000
    assert items[0]["split"] == "popular" and items[0]["item_id"] == "pope/popular/1"
    # no stray '\r' anywhere in the parsed values
    assert not any("\r" in i["question"] or "\r" in i["image"] for i in items)
    # independent parse: normalise line ends then json.loads per line
    ref = [json.loads(l) for l in raw.decode().replace("\r\n", "\n").split("\n") if l.strip()]
    assert [i["question"] for i in items] == [r["text"] for r in ref]


def test_e3e3926_random_has_2910_questions():
    path = FIX / "coco-e3e3926" / "coco_pope_random.json"
    assert b"\r\n" in path.read_bytes()
    items = pope.load_items(path, "imgs")
    assert len(items) == 2910
    assert collections.Counter(i["label"] for i in items) == {"yes": 1500, "no": 1410}
    per_image = collections.Counter(i["image"] for i in items)
    # spec: 78 images have 5 questions, 6 have 4 (the rest 6)
    assert collections.Counter(per_image.values()) == {6: 416, 5: 78, 4: 6}
    assert sum("imange" in i["question"] for i in items) == 144
    head = pope.load_items(FIX / "coco" / "coco_pope_random.json", "imgs")
    assert {i["image"] for i in items} == {i["image"] for i in head}


def test_seem_json_array_file():
    path = FIX / "gqa" / "gqa_pope_seem_random.json"
    assert path.read_text().lstrip().startswith("[")
    items = pope.load_items(path, "gqa/images", split="gqa_random")
    assert len(items) == 3000
    assert items[0]["image"] == "2405722.jpg" and items[0]["image_id"] == 2405722
    assert items[0]["item_id"] == "pope/gqa_random/1"
    # SEEM random files are ordered y,y,y,n,n,n within an image
    assert [i["label"] for i in items[:6]] == ["yes"] * 3 + ["no"] * 3


def test_check_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    f = tmp_path / "p.json"
    f.write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"}\n'
        '{"question_id": 2, "image": "b.jpg", "text": "Is there a dog in the image?", "label": "yes"}\n'
    )
    assert len(pope.load_items(f, tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="1 images missing"):
        pope.load_items(f, tmp_path, check_images=True)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, pattern",
    [
        (
            '{"question_id": 1, "image": "a.jpg", "text": "q", "label": "yes"}\n'
            '{"question_id": 2, "image": "a.jpg", "text": "q", "label": "no"}\n'
            '{"question_id": 3, "image": "a.jpg", "text": "q" "label": "no"}\n',
            r"bad\.json:3: not valid JSON",
        ),
        ('{"question_id": 1, "image": "a.jpg", "label": "yes"}\n', r"bad\.json line 1: missing key 'text'"),
        ('{"question_id": 1, "image": "a.jpg", "text": "q", "label": "Yes"}\n', r"line 1: label must be"),
        (
            '{"question_id": 1, "image": "a.jpg", "text": "q", "label": "yes"}\r\n'
            '{"question_id": 1, "image": "b.jpg", "text": "q", "label": "no"}\r\n',
            r"line 2: question_id 1 repeats",
        ),
        (
            '[{"question_id": 1, "image": "a.jpg", "text": "q", "label": "yes"}, 5]',
            r"element 1: expected a JSON object",
        ),
        ("\n\n", r"no POPE questions"),
    ],
)
def test_bad_pope_files_name_file_and_line(tmp_path, content, pattern):
    f = tmp_path / "bad.json"
    f.write_bytes(content.encode())
    with pytest.raises(ValueError, match=pattern):
        pope.read_pope_file(f)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="POPE file not found"):
        pope.read_pope_file("/nonexistent/coco_pope_random.json")


# --------------------------------------------------------------------------------------
# parsers: edge cases from the spec
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, official, opera, lmms",
    [
        ("Yes", "yes", "yes", "yes"),
        ("No", "no", "no", "no"),
        ("Yes.", "yes", "yes", "other"),  # lmms exact match fails on the period
        ("No.", "no", "no", "other"),
        ("NO", "yes", "no", "no"),  # official is case-sensitive
        ("There isn't a dog.", "yes", "no", "other"),  # n't only caught by OPERA
        ("No\nThe cat is absent.", "yes", "yes", "other"),  # 'No\nThe' is one space-split word
        ("There is a snowboard in the image.", "yes", "yes", "other"),
        ("Yes. But no dog.", "yes", "no", "other"),  # official keeps the first sentence only
        ("No, there is not.", "no", "no", "other"),
        ("  yes  ", "yes", "yes", "yes"),
        ("", "yes", "yes", "other"),
    ],
)
def test_parsers(answer, official, opera, lmms):
    assert pope.parse_official(answer) == official
    assert pope.parse_opera(answer) == opera
    assert pope.parse_lmms(answer) == lmms


def test_vcd_substring_rule():
    rows = pope.score_items(
        [
            {"item_id": "a", "label": "no", "answer": "There is a snowboard."},  # 'no' in 'snowboard'
            {"item_id": "b", "label": "no", "answer": "I know it."},  # 'no' in 'know'
            {"item_id": "c", "label": "yes", "answer": "Yes"},
            {"item_id": "d", "label": "yes", "answer": "eyes"},  # 'yes' in 'eyes'
            {"item_id": "e", "label": "yes", "answer": "Nope"},
            {"item_id": "f", "label": "no", "answer": "Sure"},
        ],
        parser="vcd",
    )
    assert [r["correct"] for r in rows] == [1, 1, 1, 1, 0, 0]
    assert [r["pred"] for r in rows] == ["no", "no", "yes", "yes", "no", "yes"]


def test_unknown_parser():
    with pytest.raises(ValueError, match="unknown POPE parser 'foo'"):
        pope.score([{"item_id": "a", "label": "yes", "answer": "Yes"}], parser="foo")


# --------------------------------------------------------------------------------------
# scoring, hand-computed
# --------------------------------------------------------------------------------------
RECORDS = [
    {"item_id": "1", "label": "yes", "answer": "Yes, there is a dog.", "error": None},
    {"item_id": "2", "label": "no", "answer": "No, there is not.", "error": None},
    {"item_id": "3", "label": "yes", "answer": "No", "error": None},
    {"item_id": "4", "label": "no", "answer": "There is a snowboard in the image.", "error": None},
    {"item_id": "5", "label": "no", "answer": "NO", "error": None},
    {"item_id": "6", "label": "yes", "answer": "I don't think so", "error": None},
    {"item_id": "7", "label": "no", "answer": "No\nThe cat is absent.", "error": None},
    {"item_id": "8", "label": "yes", "answer": "", "error": "CUDA out of memory"},
]


def _expect(tp, fp, tn, fn, n, yes):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "accuracy": 100 * (tp + tn) / n,
        "precision": 100 * p,
        "recall": 100 * r,
        "f1": 100 * f1,
        "yes_ratio": 100 * yes / n,
        "n": n,
        "n_errors": 1,
    }


@pytest.mark.parametrize(
    "parser, expected",
    [
        # official: 1 yes(TP) 2 no(TN) 3 no(FN) 4 yes(FP) 5 'NO'->yes(FP) 6 yes(TP) 7 yes(FP)
        ("official", _expect(tp=2, fp=3, tn=1, fn=1, n=7, yes=5)),
        # opera: 5 'NO'->no(TN), 6 "don't"->no(FN)
        ("opera", _expect(tp=1, fp=2, tn=2, fn=2, n=7, yes=3)),
        # vcd: gt no -> TN if 'no' substring: 2,4(snowboard),5,7 ; gt yes -> TP only 1
        ("vcd", _expect(tp=1, fp=0, tn=4, fn=2, n=7, yes=1)),
        # lmms: exact only; 3 'no' (FN), 5 'no' (TN), rest 'other'
        (
            "lmms",
            {
                "accuracy": 100 / 7,
                "precision": 0.0,
                "recall": 0.0,
                "f1": 0.0,
                "yes_ratio": 0.0,
                "n": 7,
                "n_errors": 1,
            },
        ),
    ],
)
def test_score_hand_computed(parser, expected):
    got = pope.score(RECORDS, parser=parser)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k]), k


def test_official_numbers_spelled_out():
    got = pope.score(RECORDS)
    # TP=2 FP=3 TN=1 FN=1: acc 3/7, P 2/5, R 2/3, F1 = 2*(.4)(.6667)/(1.0667) = 0.5
    assert got["accuracy"] == pytest.approx(300 / 7)
    assert got["precision"] == pytest.approx(40.0)
    assert got["recall"] == pytest.approx(200 / 3)
    assert got["f1"] == pytest.approx(50.0)
    assert got["yes_ratio"] == pytest.approx(500 / 7)


def test_score_items_paired_outcomes():
    rows = pope.score_items(RECORDS)
    assert [r["item_id"] for r in rows] == [str(i) for i in range(1, 8)]  # error excluded
    assert [r["correct"] for r in rows] == [1, 1, 0, 0, 0, 1, 0]


def test_all_perfect_and_mean_f1():
    recs = [
        {"item_id": str(i), "label": lab, "answer": lab.capitalize() + "."}
        for i, lab in enumerate(["yes", "no"] * 5)
    ]
    s = pope.score(recs)
    assert s["accuracy"] == 100 and s["f1"] == 100 and s["yes_ratio"] == 50
    assert (
        pope.mean_f1({"random": {"f1": 80.0}, "popular": {"f1": 70.0}, "adversarial": {"f1": 60.0}}) == 70.0
    )
    assert pope.mean_f1([{"f1": 1.0}, {"f1": 2.0}]) == 1.5


def test_missing_label_is_an_error():
    with pytest.raises(KeyError, match="x7"):
        pope.score([{"item_id": "x7", "answer": "Yes", "label": None}])


def test_real_file_end_to_end_always_yes():
    items = pope.load_items(FIX / "coco" / "coco_pope_random.json", "imgs")
    recs = [{"item_id": i["item_id"], "label": i["label"], "answer": "Yes, there is."} for i in items]
    s = pope.score(recs)
    # always-yes on a balanced split: acc 50, P 50, R 100, F1 = 2*.5*1/1.5
    assert s["accuracy"] == 50 and s["precision"] == 50 and s["recall"] == 100
    assert s["f1"] == pytest.approx(200 / 3) and s["yes_ratio"] == 100 and s["n"] == 3000


def test_deco_and_only_recorders():
    """DeCo: "yes" iff the word "yes" occurs (recorder, then the substring test on its word);
    ONLY: OPERA's rule on the first line. Where they part from the substring / OPERA rules."""
    from vcdflow.metrics.pope import _predict

    cases = [  # answer, label, deco, only, vcd, opera
        ("There is a dog.", "no", "no", "yes", "yes", "yes"),
        ("Yesterday, no.", "yes", "no", "no", "yes", "no"),
        ("Yes\nNo, there is not", "yes", "yes", "yes", "yes", "no"),
        ("yes.", "no", "yes", "yes", "yes", "yes"),
    ]
    for ans, label, deco, only, vcd, opera in cases:
        assert [_predict(ans, label, p) for p in ("deco", "only", "vcd", "opera")] == [
            deco,
            only,
            vcd,
            opera,
        ], ans
    from vcdflow.protocols import get_protocol

    for proto, cite in (("deco", "pope_llava.py:28-33"), ("only", "pope_eval_llava.py:130-142")):
        res = get_protocol(proto).resolve(method=proto, family="llava", benchmark="pope")
        assert res.parser == proto and cite in res.sources["parser"]
