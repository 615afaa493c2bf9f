"""HallusionBench scorer vs the official logic (tianyi-lab/HallusionBench utils.py and
evaluation.py; lmms-eval 0.7.3 lmms_eval/tasks/hallusion_bench/evaluate_hb.py for the rule-based
yes/no correctness)."""

import json

import numpy as np
import pytest

from vcdflow.metrics import hallusionbench as hb
from vcdflow.metrics.judge import CallableJudge


# ---- official functions, transliterated from tianyi-lab/HallusionBench utils.py --------------


def off_assign_correctness(data, entry):  # utils.py:404-411
    for r in data:
        if r["category"] == "VS" and int(r["figure_id"]) == 0:
            r["correct"] = 1 if int(r[entry]) == 1 or int(r[entry]) == 2 else 0
        else:
            r["correct"] = 1 if int(r[entry]) == 1 else 0
    return data


def off_eval_fig(data):  # utils.py:130-163
    d = {}
    for r in data:
        if r["category"] == "VS" and str(r["figure_id"]) == "0":
            continue
        name = "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["figure_id"])])
        c, t = d.get(name, (0, 0))
        d[name] = (c + r["correct"], t + 1)
    return 100 * sum(1 for v in d.values() if v[0] == v[1]) / len(d)


def off_eval_all(data):  # utils.py:165-203 (correct / total)
    d = {}
    for r in data:
        name = "_".join(
            [r["category"], r["subcategory"], str(r["set_id"]), str(r["figure_id"]), str(r["question_id"])]
        )
        assert name not in d
        d[name] = r["correct"]
    return 100 * np.count_nonzero(list(d.values())) / len(d)


def off_pair(data, keep):  # utils.py:205-227 + 322-328 (qAcc), 340-402 (easy / hard)
    d = {}
    for r in data:
        if not keep(r):
            continue
        name = "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["question_id"])])
        c, t = d.get(name, (0, 0))
        d[name] = (c + r["correct"], t + 1)
    return 100 * sum(1 for v in d.values() if v[0] == v[1]) / len(d)


def off_gpt_parse(text):  # utils.py:58-64
    if "incorrect" in text.lower():
        return "0"
    elif "correct" in text.lower():
        return "1"
    return "2"


# ---- fixture: VD set 0 (two figures x two questions), VS set 0 (no-visual + 2 figures) -------


def q(cat, sub, vi, set_id, fig, qid, gt, question="Is it so?"):
    return {
        "category": cat,
        "subcategory": sub,
        "visual_input": vi,
        "set_id": set_id,
        "figure_id": fig,
        "sample_note": "n",
        "question_id": qid,
        "question": question,
        "gt_answer_details": f"ref {gt}",
        "gt_answer": gt,
        "filename": None if vi == "0" else f"./{cat}/{sub}/{set_id}_{fig}.png",
    }


DATA = [
    q("VD", "illusion", "1", "0", "0", "0", "1"),
    q("VD", "illusion", "1", "0", "0", "1", "0"),
    q("VD", "illusion", "2", "0", "1", "0", "0"),
    q("VD", "illusion", "2", "0", "1", "1", "1"),
    q("VS", "chart", "0", "0", "0", "0", "1"),
    q("VS", "chart", "1", "0", "1", "0", "1"),
    q("VS", "chart", "2", "0", "2", "0", "0"),
    q("VS", "map", "0", "1", "0", "0", "0"),
    q("VS", "map", "1", "1", "1", "0", "0"),
]
PREDS = ["Yes, it is.", "No.", "Yes", "Yes!", "No idea", "yes", "No", "No, not at all", "no"]


def test_yesno_scores_equal_official_and_hand_values(tmp_path):
    f = tmp_path / "HallusionBench.json"
    f.write_text(json.dumps(DATA))
    items = hb.load_items(f, tmp_path)
    assert items[4]["image_path"] is None and items[0]["image_path"].endswith("VD/illusion/0_0.png")
    recs = [{"item_id": it["item_id"], "answer": p, "error": None} for it, p in zip(items, PREDS)]
    got = hb.score(recs, items)
    # official: correctness by lmms-eval's rule (evaluate_hb.py:96-97), then utils.py's functions
    data = [dict(d, model_prediction=p) for d, p in zip(DATA, PREDS)]
    for d in data:
        d["c"] = (
            "1"
            if ("1" if d["model_prediction"].lower().find("yes") != -1 else "0") == d["gt_answer"]
            else "0"
        )
    data = off_assign_correctness(data, "c")
    # by hand: correct = 1,1,0,1,0,1,1,1,1 (VS fig0 'No idea' vs gt 1 -> "0" -> wrong)
    assert [d["correct"] for d in data] == [1, 1, 0, 1, 0, 1, 1, 1, 1]
    assert got["aAcc"] == pytest.approx(off_eval_all(data)) == pytest.approx(700 / 9)
    # figures (VS fig 0 skipped): VD_0 ok, VD_1 wrong, VS chart 1, 2 ok, VS map 1 ok -> 4/5
    assert got["fAcc"] == pytest.approx(off_eval_fig(data)) == pytest.approx(80.0)
    # groups: VD q0 (1,0) no; VD q1 (1,1) yes; VS chart q0 (0,1,1) no; VS map q0 (1,1) yes -> 2/4
    assert got["qAcc"] == pytest.approx(off_pair(data, lambda r: True)) == pytest.approx(50.0)
    assert got["easy_aAcc"] == pytest.approx(off_pair(data, lambda r: r["visual_input"] != "2"))
    assert got["hard_aAcc"] == pytest.approx(off_pair(data, lambda r: r["visual_input"] == "2"))
    assert got["vd_aAcc"] == pytest.approx(75.0) and got["vs_fAcc"] == pytest.approx(100.0)
    assert (got["n"], got["n_figures"], got["n_pairs"], got["n_errors"]) == (9, 5, 4, 0)


def test_gpt_correctness_equals_official(tmp_path):
    f = tmp_path / "HallusionBench.json"
    f.write_text(json.dumps(DATA))
    items = hb.load_items(f, tmp_path)
    replies = [
        "correct",
        "Incorrect.",
        "The prediction is correct",
        "unclear",
        "unclear",
        "CORRECT",
        "incorrect",
        "correct",
        "hmm",
    ]
    seen = []

    def fake(messages):
        seen.append(messages)
        return replies[len(seen) - 1]

    recs = [{"item_id": it["item_id"], "answer": p, "error": None} for it, p in zip(items, PREDS)]
    judged = hb.judge_items(recs, items, CallableJudge(fake, "fake-gpt4"))
    # utils.py:33-40, one user message
    assert seen[0] == [
        {
            "role": "user",
            "content": (
                "Imagine you are an intelligent teacher. Thoroughly read the question, reference answer and the prediction "
                "answer to ensure a clear understanding of the information provided. Assess the correctness of the "
                "predictions. If the prediction answer does not conflict with the reference answer, please generate "
                "“correct”. If the prediction answer conflict with the reference answer, please generate “incorrect”. If the "
                'prediction answer is unclear about the answer, please generate "unclear". \n\n Question:Is it so?\n'
                "Reference answer: ref 1\nPrediction answer:Yes, it is.\nOutput:"
            ),
        }
    ]
    got = hb.score(judged, items, correctness="gpt")
    data = off_assign_correctness([dict(d, c=off_gpt_parse(r)) for d, r in zip(DATA, replies)], "c")
    # VS figure 0 'unclear' (item 4) counts as right; VD 'unclear' (item 3) does not; 'hmm' on VS map fig 1 -> 2 -> wrong
    assert [d["correct"] for d in data] == [1, 0, 1, 0, 1, 1, 0, 1, 0]
    assert got["aAcc"] == pytest.approx(off_eval_all(data))
    assert got["fAcc"] == pytest.approx(off_eval_fig(data))
    assert got["qAcc"] == pytest.approx(off_pair(data, lambda r: True))
    assert {r["judge"] for r in hb.score_items(judged, items, "gpt")} == {"callable:fake-gpt4"}


def test_error_rows_leave_their_groups_out(tmp_path):
    f = tmp_path / "HallusionBench.json"
    f.write_text(json.dumps(DATA))
    items = hb.load_items(f, tmp_path)
    recs = [{"item_id": it["item_id"], "answer": p, "error": None} for it, p in zip(items, PREDS)]
    recs[2] = {**recs[2], "answer": "", "error": "image x: OSError"}  # VD fig 1 q0
    got = hb.score(recs, items)
    assert got["n_errors"] == 1 and got["n"] == 8
    assert got["aAcc"] == pytest.approx(700 / 8)
    assert got["fAcc"] == pytest.approx(100.0)  # VD_1 left out: 4/4
    assert got["qAcc"] == pytest.approx(200 / 3)  # VD q0 left out: 2/3


def test_bad_input(tmp_path):
    f = tmp_path / "h.json"
    f.write_text(json.dumps([dict(DATA[0], gt_answer="yes")]))
    with pytest.raises(ValueError, match=r"h.json\[0\]: gt_answer must be '0' or '1'"):
        hb.load_items(f)
    f.write_text(json.dumps([DATA[0], DATA[0]]))
    with pytest.raises(ValueError, match="duplicate question VD_illusion_0_0_0"):
        hb.load_items(f)
    with pytest.raises(ValueError, match="correctness must be"):
        hb.score([], correctness="llm")
