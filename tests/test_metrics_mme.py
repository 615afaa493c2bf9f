"""MME loaders (both folder layouts, lmms-lab DataFrame/parquet) and official scoring."""

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vcdflow.metrics import mme


def _png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), color).save(buf, format="PNG")
    return buf.getvalue()


def _qa(q1, a1, q2, a2, crlf=False):
    nl = "\r\n" if crlf else "\n"
    return f"{q1}\t{a1}{nl}{q2}\t{a2}{nl}"


@pytest.fixture
def mme_root(tmp_path):
    base = tmp_path / "release" / "MME_Benchmark_release_version"  # one level down on purpose
    ex = base / "existence"
    ex.mkdir(parents=True)
    (ex / "000000000002.jpg").write_bytes(_png())
    (ex / "000000000002.txt").write_text(
        _qa(
            "Is there a dog in this image? Please answer yes or no.",
            "Yes",
            "Is there a cat in this image?  Please answer yes or no.",
            "No",
        )
    )
    (ex / "000000000001.png").write_bytes(_png())
    (ex / "000000000001.txt").write_text(
        _qa(
            "Is there a car in this image? Please answer yes or no.",
            "No",
            "Is there a bus in this image? Please answer yes or no.",
            "Yes",
            crlf=True,
        )
    )
    art = base / "artwork"
    (art / "images").mkdir(parents=True)
    (art / "questions_answers_YN").mkdir()
    (art / "images" / "10002.jpg").write_bytes(_png())
    (art / "questions_answers_YN" / "10002.txt").write_text(
        _qa(
            "Is this artwork created by Monet? Please answer yes or no.",
            "Yes",
            "Is this artwork created by Dali? Please answer yes or no.",
            "No",
        )
    )
    return tmp_path / "release"


def test_load_items_both_layouts(mme_root):
    items = mme.load_items(mme_root, subtasks=["existence", "artwork"])
    assert [i["item_id"] for i in items] == [
        "mme/existence/000000000001.png/0",
        "mme/existence/000000000001.png/1",
        "mme/existence/000000000002.jpg/0",
        "mme/existence/000000000002.jpg/1",
        "mme/artwork/10002.jpg/0",
        "mme/artwork/10002.jpg/1",
    ]
    first = items[0]
    assert first["image"] == "000000000001.png"
    assert Path(first["image_path"]).is_file()
    assert first["image_id"] == "existence/000000000001.png"
    assert first["question_id"] is None
    assert first["label"] == "No" and items[1]["label"] == "Yes"  # CRLF stripped
    assert first["question"] == "Is there a car in this image? Please answer yes or no."
    assert first["question_stem"] == "Is there a car in this image?"
    # double space before "Please" is handled
    assert items[3]["question"].endswith("?  Please answer yes or no.")
    assert items[3]["question_stem"] == "Is there a cat in this image?"
    assert first["subtask"] == "existence" and first["category"] == "perception"
    assert items[4]["image_path"].endswith(str(Path("artwork") / "images" / "10002.jpg"))
    assert [i["pair_index"] for i in items] == [0, 1] * 3


def test_load_items_errors(mme_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="MME subtask folder missing: .*count"):
        mme.load_items(mme_root, subtasks=["existence", "count"])
    with pytest.raises(ValueError, match="unknown MME subtasks \\['exist'\\]"):
        mme.load_items(mme_root, subtasks=["exist"])
    with pytest.raises(FileNotFoundError, match="no MME subtask folders"):
        mme.load_items(tmp_path / "nowhere", subtasks=["existence"])
    ex = mme_root / "MME_Benchmark_release_version" / "existence"
    (ex / "000000000003.jpg").write_bytes(_png())
    (ex / "000000000003.txt").write_text("Q1?\tYes\nQ2?\tNo\nQ3?\tYes\n")
    with pytest.raises(ValueError, match="000000000003.txt: expected 2 questions, found 3"):
        mme.load_items(mme_root, subtasks=["existence"])
    (ex / "000000000003.txt").write_text("Q1?\tYes\nQ2?\tMaybe\n")
    with pytest.raises(ValueError, match="000000000003.txt:2: answer must be Yes or No"):
        mme.load_items(mme_root, subtasks=["existence"])
    (ex / "000000000003.txt").write_text("Q1? Yes\nQ2?\tNo\n")
    with pytest.raises(ValueError, match="000000000003.txt:1: expected 'question<TAB>Yes\\|No'"):
        mme.load_items(mme_root, subtasks=["existence"])
    (ex / "000000000003.txt").write_text("Q1?\tYes\nQ2?\tNo\n")
    (ex / "000000000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000003.txt: expected one image"):
        mme.load_items(mme_root, subtasks=["existence"])


# --------------------------------------------------------------------------------------
# lmms-lab/MME DataFrame / parquet
# --------------------------------------------------------------------------------------
def _lmms_df():
    img_a = {"bytes": _png((0, 0, 255)), "path": "0001.png"}
    img_b = {"bytes": _png((0, 255, 0)), "path": None}
    # rows of the two images interleaved on purpose
    return pd.DataFrame(
        {
            "question_id": [
                "count/0001.png",
                "code_reasoning/0020.png",
                "count/0001.png",
                "code_reasoning/0020.png",
            ],
            "image": [img_a, img_b, img_a, img_b],
            "question": [
                "Are there two cats? Please answer yes or no.",
                "Is the output 3? Please answer yes or no.",
                "Are there three cats? Please answer yes or no.",
                "Is the output 4? Please answer yes or no.",
            ],
            "answer": ["Yes", "No", "No", "Yes"],
            "category": ["count", "code_reasoning", "count", "code_reasoning"],
        }
    )


def test_load_items_dataframe_keeps_pairs_consecutive(tmp_path):
    items = mme.load_items_dataframe(_lmms_df(), tmp_path / "imgs")
    assert [i["item_id"] for i in items] == [
        "mme/count/0001.png/0",
        "mme/count/0001.png/1",
        "mme/code_reasoning/0020.png/0",
        "mme/code_reasoning/0020.png/1",
    ]
    assert [i["label"] for i in items] == ["Yes", "No", "No", "Yes"]
    assert items[0]["question_id"] == "count/0001.png"
    assert items[2]["category"] == "cognition"
    p = Path(items[2]["image_path"])
    assert p == tmp_path / "imgs" / "code_reasoning" / "0020.png"  # name from question_id
    assert Image.open(p).getpixel((0, 0)) == (0, 255, 0)


def test_load_items_dataframe_errors(tmp_path):
    df = _lmms_df()
    with pytest.raises(ValueError, match="question_id 'count/0001.png' has 3 questions"):
        mme.load_items_dataframe(pd.concat([df, df.iloc[[0]]], ignore_index=True), tmp_path)
    clash = df.copy()
    clash["question_id"] = [
        "count/a/0001.png",
        "code_reasoning/0021.png",
        "count/a/0001.png",
        "code_reasoning/0021.png",
    ]
    clash = pd.concat([df, clash], ignore_index=True)
    with pytest.raises(ValueError, match="'count/0001.png' and 'count/a/0001.png' both map to image"):
        mme.load_items_dataframe(clash, tmp_path)
    with pytest.raises(ValueError, match="missing columns \\['category'\\]"):
        mme.load_items_dataframe(df.drop(columns=["category"]), tmp_path)


def test_load_items_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    f = tmp_path / "test-00000-of-00001.parquet"
    _lmms_df().to_parquet(f)
    items = mme.load_items_parquet([f], tmp_path / "imgs")
    assert len(items) == 4 and items[1]["item_id"] == "mme/count/0001.png/1"


# --------------------------------------------------------------------------------------
# parsers and scoring
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, official, lmms",
    [
        ("Yes", "yes", "yes"),
        ("NO", "no", "no"),
        ("yes.", "yes", "yes"),
        ("Yes, it is.", "yes", "yes"),
        ("No\nThere is no dog.", "no", "no"),
        ("Not at all", "no", "no"),  # 'no' in 'not '
        ("The answer is yes", "other", "other"),
        ("y", "other", "yes"),  # lmms maps one-character y/n
        ("n", "other", "no"),
        (" yes", "yes", "yes"),
        ("Nope", "no", "no"),
        ("I do not know", "other", "other"),
        ("", "other", "other"),
    ],
)
def test_parsers(answer, official, lmms):
    assert mme.parse_official(answer) == official
    assert mme.parse_lmms(answer) == lmms


# The official tool's readme (BradyFU/Awesome-Multimodal-Large-Language-Models, branch Evaluation,
# tools/eval_tool.zip: eval_tool/readme.txt:14) has "\n" deleted from every response before
# calculation.py parses it (readlines(), calculation.py:98; lower(), :116; parse_pred_ans, :23-37).
@pytest.mark.parametrize(
    "answer, official, raw_first_4",
    [
        ("\n\nYes", "yes", "other"),  # 'yes' -> exact match; raw head '\n\nye' has neither
        ("N\no", "no", "other"),  # 'no'; raw head 'n\no' has no 'no'
        ("Ye\ns, there is.", "yes", "other"),  # 'yes, there is.'[:4] = 'yes,'
        ("\r\nNo", "no", "no"),  # 'no'; raw head '\r\nno' already held 'no'
        ("\n \nyes", "yes", "other"),  # ' yes'[:4] = ' yes'; raw head '\n \ny'
        ("No\nThere is no dog.", "no", "no"),  # 'nothere is no dog.'[:4] = 'noth'
        ("\n\n\nThe", "other", "other"),
    ],
)
def test_official_parser_deletes_line_breaks_first(answer, official, raw_first_4):
    assert mme.parse_official(answer) == official
    head = answer.lower()[:4]  # what parsing the undeleted answer would give (the divergence fixed)
    raw = (
        answer.lower()
        if answer.lower() in ("yes", "no")
        else ("yes" if "yes" in head else "no" if "no" in head else "other")
    )
    assert raw == raw_first_4


def test_score_with_multiline_answers():
    recs = _recs(
        "existence",
        [
            ("\n\nYes", "Yes"),
            ("N\no", "No"),  # image 0: both right once deleted
            ("\nYes\n", "Yes"),
            ("Yes\nno", "No"),
        ],
    )  # image 1: second is 'yesno' -> yes
    s = mme.score(recs)
    assert s["existence/acc"] == pytest.approx(75.0) and s["existence/acc_plus"] == pytest.approx(50.0)
    assert s["existence/score"] == pytest.approx(125.0)


def _recs(sub, answers_labels, start=0):
    out = []
    for k, (ans, lab) in enumerate(answers_labels):
        img = f"{sub}/{(start + k) // 2:04d}.png"
        out.append(
            {"item_id": f"mme/{img}/{k % 2}", "image_id": img, "label": lab, "answer": ans, "error": None}
        )
    return out


def test_score_subtask_with_other_answer():
    recs = _recs(
        "existence",
        [
            ("Yes", "Yes"),
            ("No, there is not.", "No"),  # image 0: both right
            ("The answer is yes", "Yes"),
            ("No", "No"),  # image 1: 'other' is wrong
        ],
    )
    s = mme.score(recs)
    # acc = 3/4, acc+ = 1/2 -> 75 + 50
    assert s["existence/acc"] == pytest.approx(75.0)
    assert s["existence/acc_plus"] == pytest.approx(50.0)
    assert s["existence/score"] == pytest.approx(125.0)
    assert "hallucination" not in s and "perception" not in s  # incomplete totals omitted
    assert s["n"] == 4 and s["n_errors"] == 0
    rows = mme.score_items(recs)
    assert [r["correct"] for r in rows] == [1, 1, 0, 1]
    assert [r["pair_correct"] for r in rows] == [1, 1, 0, 0]
    assert rows[2]["pred"] == "other"


def test_lmms_variant_differs_on_single_letters():
    recs = _recs("count", [("y", "Yes"), ("n", "No")])
    assert mme.score(recs)["count/score"] == 0.0  # official: 'y','n' -> other
    assert mme.score(recs, parser="lmms")["count/score"] == 200.0


def test_hallucination_total_and_errors():
    recs = []
    recs += _recs("existence", [("Yes", "Yes"), ("No", "No")])  # 100 + 100
    recs += _recs("count", [("Yes", "Yes"), ("Yes", "No"), ("No", "Yes"), ("No", "No")])  # acc 50, acc+ 0
    recs += _recs("position", [("yes", "Yes"), ("no", "No")])  # 200
    recs += _recs("color", [("Yes", "Yes"), ("Yes", "No")])  # acc 50, acc+ 0 -> 50
    recs += _recs("color", [("Yes", "Yes"), ("", "No")], start=2)  # errored pair
    recs[-1]["error"] = "timeout"
    s = mme.score(recs)
    assert s["existence/score"] == 200.0
    assert s["count/score"] == pytest.approx(50.0)
    assert s["position/score"] == 200.0
    assert s["color/score"] == pytest.approx(50.0)  # the errored pair is left out
    assert s["hallucination"] == pytest.approx(200 + 50 + 200 + 50)
    assert s["n"] == 10 and s["n_errors"] == 1


def test_perception_and_cognition_totals():
    recs = []
    for k, sub in enumerate(mme.SUBTASKS):
        recs += _recs(sub, [("Yes", "Yes"), ("Yes", "No") if k % 2 else ("No", "No")])
    s = mme.score(recs)
    per = {sub: (200.0 if k % 2 == 0 else 50.0) for k, sub in enumerate(mme.SUBTASKS)}
    assert s["perception"] == pytest.approx(sum(per[x] for x in mme.PERCEPTION))
    assert s["cognition"] == pytest.approx(sum(per[x] for x in mme.COGNITION))
    assert len(mme.PERCEPTION) == 10 and len(mme.COGNITION) == 4


def test_pairing_errors():
    recs = _recs("existence", [("Yes", "Yes"), ("No", "No"), ("Yes", "Yes")])
    with pytest.raises(ValueError, match="image existence/0001.png has 1 records"):
        mme.score(recs)
    with pytest.raises(ValueError, match="cannot tell its subtask"):
        mme.score([{"item_id": "x", "image_id": "foo.png", "label": "Yes", "answer": "Yes"}])
    bad = _recs("existence", [("Yes", "Maybe"), ("No", "No")])
    with pytest.raises(ValueError, match="label must be yes/no"):
        mme.score(bad)


def test_items_to_records_roundtrip(mme_root):
    items = mme.load_items(mme_root, subtasks=["existence", "artwork"])
    recs = [{**i, "answer": i["label"], "error": None} for i in items]
    s = mme.score(recs)
    assert s["existence/score"] == 200.0 and s["artwork/score"] == 200.0 and s["n"] == 6
