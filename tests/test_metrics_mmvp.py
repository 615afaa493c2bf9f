"""MMVP scorer vs the official logic (lmms-eval 0.7.3 lmms_eval/tasks/mmvp/utils.py and
tsb0601/MMVP scripts/gpt_grader.py), the loader's ground-truth fixes, and bad input."""

import csv
import re

import pytest
from PIL import Image

from vcdflow.metrics import metric_rows, mmvp
from vcdflow.metrics.judge import CallableJudge


# ---- the official logic, transliterated (file:line of lmms-eval 0.7.3 / tsb0601/MMVP) --------


def official_lmms_letter(text):  # lmms_eval/tasks/mmvp/utils.py:32-67
    text = text.strip()
    patterns = [
        r"^\s*\(?([AB])\)?\.?\s*$",
        r"^\s*\(?([AB])\)?[\.\s]",
        r"answer\s+is\s+\(?([AB])\)?",
        r"option\s+\(?([AB])\)?",
        r"\(?([AB])\)?(?:\s|$)",
    ]
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match:
            return match.group(1).upper()
    if text and text[0].upper() in ["A", "B"]:
        return text[0].upper()
    return ""


def official_lmms_scores(docs, preds):  # utils.py:126-133, 150-184, 187-206, 209-256
    results = []
    for doc, pred in zip(docs, preds):
        index = doc["Index"] - 1
        a = doc["Correct Answer"].strip().lower()
        gt = "A" if ("(a)" in a or a == "a") else "B" if ("(b)" in a or a == "b") else a.upper()
        results.append({"pair_index": index // 2, "is_correct": official_lmms_letter(pred) == gt})
    acc = sum(1 for r in results if r["is_correct"]) / len(results)
    pairs = {}
    for r in results:
        pairs.setdefault(r["pair_index"], []).append(r)
    tot = cor = 0
    for v in pairs.values():
        if len(v) == 2:
            tot += 1
            cor += all(r["is_correct"] for r in v)
    return acc, cor / tot


def official_gpt_grader(lines, replies):  # tsb0601/MMVP scripts/gpt_grader.py:41-70
    num_correct, num_total = 0, 0
    index, round_correct = 0, 0
    for data, answer in zip(lines, replies):
        gpt_grade = (
            answer.lower()
            if re.compile(r"^(yes|no)$", re.IGNORECASE).match(answer)
            else "Could not determine yes or no."
        )
        index += 1
        if gpt_grade == "yes":
            round_correct += 1
        if index == 2:
            index = 0
            if round_correct == 2:
                num_correct += 1
            round_correct = 0
            num_total += 1
    return num_correct / num_total


# ---- fixture: 4 pairs (8 questions) in the release layout ------------------------------------

ROWS = [  # Index, Question, Options, Correct Answer
    (1, "Is the door open?", "(a) Open (b) Closed", "(a)"),
    (2, "Is the door open?", "(a) Open (b) Closed", "(b)"),
    (3, "Which way does the arrow point?", "(a) Left (b) Right", "(b)"),
    (4, "Which way does the arrow point?", "(a) Left (b) Right", "(a)"),
    (5, "Is the cup full?", "(a) Yes (b) No", "(a)"),
    (6, "Is the cup full?", "(a) Yes (b) No", "(b)"),
    (7, "Are there two dogs?", "(a) Yes (b) No", "(b)"),
    (8, "Are there two dogs?", "(a) Yes (b) No", "(a)"),
]
# pair 0 both right; pair 1 one wrong ("The answer is A" for a B target); pair 2 both right in
# odd forms; pair 3 one unparseable answer
PREDS = ["A", "(B) Closed", "The answer is A", "A.", "(a) Yes", "b", "B", "none of these"]


def write_release(root, rows=ROWS):
    root.mkdir(parents=True, exist_ok=True)
    (root / "MMVP Images").mkdir()
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        for r in rows:
            w.writerow(r)
            Image.new("RGB", (4, 4), (r[0], 0, 0)).save(root / "MMVP Images" / f"{r[0]}.jpg")
    return root


def test_letter_extraction_equals_lmms_eval():
    for t in [
        "A",
        "b",
        "(A)",
        "A.",
        "(b) Closed",
        "The answer is B",
        "option a",
        "I think B is right",
        "Answer: A",
        "",
        "none",
        "AB",
        "a cat",
        "Both",
        "B)",
    ]:
        assert mmvp.extract_letter(t) == official_lmms_letter(t), t


def test_lmms_scores_equal_official_and_hand_values(tmp_path):
    items = mmvp.load_items(write_release(tmp_path / "mmvp"), fixes=None)
    assert [it["pair_index"] for it in items] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert items[0]["question"] == "Is the door open? (a) Open (b) Closed"  # evaluate_mllm.py:56
    assert items[0]["question_lmms"] == (
        "Is the door open?\nA. Open\nB. Closed\n"
        "Answer with the option's letter from the given choices directly."
    )
    recs = [{"item_id": it["item_id"], "answer": p, "error": None} for it, p in zip(items, PREDS)]
    got = mmvp.score(recs, items)
    acc, pair = official_lmms_scores(
        [dict(zip(("Index", "Question", "Options", "Correct Answer"), r)) for r in ROWS], PREDS
    )
    # by hand: questions right 1,2,4,5,6,7 -> 6/8; pairs 0 and 2 -> 2/4
    assert (acc, pair) == (0.75, 0.5)
    assert got["accuracy"] == pytest.approx(100 * acc) and got["pair_accuracy"] == pytest.approx(100 * pair)
    assert got["n"] == 8 and got["n_pairs"] == 4 and got["n_errors"] == 0
    rows = metric_rows(got, benchmark="mmvp", split="all", model="m", method="greedy", seed=0)
    assert {r["metric"] for r in rows} >= {"pair_accuracy", "accuracy"}


def test_error_record_drops_its_pair(tmp_path):
    items = mmvp.load_items(write_release(tmp_path / "mmvp"), fixes=None)
    recs = [{"item_id": it["item_id"], "answer": p, "error": None} for it, p in zip(items, PREDS)]
    recs[0] = {**recs[0], "answer": "", "error": "image x: OSError"}
    got = mmvp.score(recs, items)
    # pair 0 incomplete -> left out: pairs 1, 2, 3 with only pair 2 right
    assert got["pair_accuracy"] == pytest.approx(100 / 3) and got["n_pairs"] == 3 and got["n_errors"] == 1
    assert got["accuracy"] == pytest.approx(100 * 5 / 7)


def test_gpt_grader_equals_official(tmp_path):
    items = mmvp.load_items(write_release(tmp_path / "mmvp"), fixes=None)
    # replies in official form; "Yes." and "yes, it does" are not exactly yes -> wrong (gpt_grader.py:41-46)
    replies = ["yes", "Yes", "no", "yes", "YES", "Yes.", "yes", "yes, it does"]
    seen = []

    def fake(messages):
        seen.append(messages)
        return replies[len(seen) - 1]

    recs = [{"item_id": it["item_id"], "answer": p, "error": None} for it, p in zip(items, PREDS)]
    judged = mmvp.judge_items(recs, items, CallableJudge(fake, model="fake-grader"))
    assert seen[0][0] == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the "
        "quality of the answer. Please answer in only yes or no.",
    }
    assert seen[1][1]["content"] == (
        "Given the following question Is the door open? (a) Open (b) Closed, the correct "
        "answer is (b). Does the following answer correctly answers the question, "
        "answer:(B) Closed?"
    )
    got = mmvp.score(judged, items, parser="gpt")
    want = official_gpt_grader(ROWS, replies)
    assert want == 0.25  # by hand: only pair 0 has two exact yes
    assert got["pair_accuracy"] == pytest.approx(100 * want)
    assert {r["judge"] for r in mmvp.score_items(judged, items, parser="gpt")} == {"callable:fake-grader"}


def test_lmms_gt_fixes(tmp_path):
    rows = [(i, f"Q{(i + 1) // 2}?", "(a) Long (b) Short", "(a)" if i % 2 else "(b)") for i in range(97, 103)]
    items = mmvp.load_items(write_release(tmp_path / "mmvp", rows))
    by = {it["index"]: it for it in items}
    assert by[99]["label"] == "(b)" and by[99]["label_original"] == "(a)" and by[99]["label_fixed"]
    assert by[100]["label"] == "(a)" and by[100]["label_fixed"]
    assert by[97]["label"] == "(a)" and not by[97]["label_fixed"]
    assert set(mmvp.GT_FIXES) == {99, 100, 279, 280}
    # an already corrected copy is refused, not flipped back
    rows2 = [(99, "Q?", "(a) Long (b) Short", "(b)"), (100, "Q?", "(a) Long (b) Short", "(a)")]
    with pytest.raises(ValueError, match=r"Index 99 has answer '\(b\)'"):
        mmvp.load_items(write_release(tmp_path / "fixed", rows2))
    assert [it["label"] for it in mmvp.load_items(tmp_path / "fixed", fixes=None)] == ["(b)", "(a)"]


def test_bad_input_names_the_line(tmp_path):
    root = write_release(tmp_path / "bad", [(1, "Q?", "(a) x (b) y", "(c)")])
    with pytest.raises(ValueError, match=r"Questions.csv:2: Correct Answer must be \(a\) or \(b\)"):
        mmvp.load_items(root)
    with pytest.raises(FileNotFoundError, match="Questions.csv"):
        mmvp.load_items(tmp_path / "nowhere")
    with pytest.raises(KeyError, match="mmvp/9"):
        mmvp.score([{"item_id": "mmvp/9", "answer": "A"}], mmvp.load_items(write_release(tmp_path / "ok")))
