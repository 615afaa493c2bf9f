"""Second-wave methods — ``debias``, ``carve``, ``iava``, ``cid``, ``lqcd`` — against the plain
references (tests/reference_methods.py) on the tiny model of every family they support and on
the demo LLaVA; seeding and batch-size invariance; the calibrated POPE/MME scorers against a
literal port of the official calibration loop; the LQCD leading-query POPE builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reference_methods import assert_same_as_reference, build_vlms, image, ref_generate
from vcdflow.decoding import Request, generate
from vcdflow.metrics import calibrated

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("wave2"))


REQS = [
    Request(
        image=image(1, 80, 100),
        prompt="Is there a cup in the image?",
        item_id="a",
        contrast_prompt="Is there a dog in the image?",
    ),
    Request(
        image=image(2, 64, 64),
        prompt="Is there a dog?",
        item_id="b",
        system="You are an expert.",
        contrast_image=image(5, 64, 64),
    ),
    Request(
        image=image(3, 120, 70),
        prompt="what is this red dog on the table with a cat?",
        item_id="c",
        contrast_prompt="what is this?",
        contrast_image=image(4, 50, 90),
    ),
]


def params_for(vlm, method):
    if method == "carve" and vlm.family == "qwen2_5_vl":
        return {"layers": [1, 0, 7], "version": "v2"}  # order and a missing layer do not matter
    return None  # carve: default layers = the last min(6, n) of these 2-3 layer models


CASES = [(m, f) for m in ("debias", "iava", "cid", "lqcd") for f in FAMILIES] + [
    ("carve", f) for f in ("llava", "qwen2_5_vl", "demo")
]


@pytest.mark.parametrize("method,family", CASES)
def test_greedy_matches_reference(vlms, method, family):
    vlm = vlms[family]
    params = params_for(vlm, method)
    free = generate(vlm, REQS[:1], method=method, params=params, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(
        vlm, REQS, method=method, params=params, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16
    )
    assert outs[0].meta["finish_reason"] == "eos"
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert o.error is None, o.error
        ref = ref_generate(vlm, r, method, params, max_new_tokens=N_NEW, eos=eos, index=i)
        assert_same_as_reference(o, ref, eos, f"{method}/{family}/{r.item_id}")
        for k, v in ref.meta.items():
            if k == "debias_top":
                for b in ("naive", "none", "unk"):
                    got, want = o.meta[k][b], v[b]
                    assert list(got) == list(want), (b, got, want)
                    assert np.allclose(list(got.values()), list(want.values()), rtol=1.5e-3, atol=1e-7)
            else:
                assert o.meta[k] == v, (k, o.meta[k], v)


def test_debias_variants(vlms):
    """contrast=False decodes the original branch alone (= greedy) and still logs the three
    first-step distributions; sampling at T = 0.2 (the official setting) equals the reference,
    logged distributions at T = 0.2 included."""
    vlm = vlms["llava"]
    g = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    d = generate(
        vlm, REQS, method="debias", params={"contrast": False}, max_new_tokens=N_NEW, eos_token_id=[]
    )
    assert [o.token_ids for o in g] == [o.token_ids for o in d]
    assert all(
        set(o.meta["debias_top"]) == {"naive", "none", "unk"} and len(o.meta["debias_top"]["none"]) <= 10
        for o in d
    )
    kw = dict(do_sample=True, temperature=0.2, seed=55, max_new_tokens=N_NEW)
    outs = generate(vlm, REQS, method="debias", eos_token_id=[], **kw)
    for i, (r, o) in enumerate(zip(REQS, outs)):
        ref = ref_generate(vlm, r, "debias", None, index=i, **kw)
        assert o.token_ids == ref.tokens
        top = o.meta["debias_top"]["none"]
        assert np.allclose(list(top.values()), list(ref.meta["debias_top"]["none"].values()), rtol=1.5e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_seed_and_batch_size(vlms, family):
    vlm = vlms[family]
    for method in ("debias", "iava", "cid", "lqcd") + (("carve",) if family != "instructblip" else ()):
        kw = dict(
            method=method,
            params=params_for(vlm, method),
            do_sample=True,
            temperature=0.9,
            top_p=0.95,
            max_new_tokens=N_NEW,
            eos_token_id=[],
        )
        a = generate(vlm, REQS, seed=4, batch_size=16, **kw)
        b = generate(vlm, REQS, seed=4, batch_size=1, **kw)
        c = generate(vlm, REQS, seed=5, batch_size=16, **kw)
        assert all(o.error is None for o in a), [o.error for o in a]
        assert [o.token_ids for o in a] == [o.token_ids for o in b], (family, method)
        for x, y in zip(a, b):  # the same meta; logged probabilities up to batch float round-off
            tx, ty = x.meta.pop("debias_top", None), y.meta.pop("debias_top", None)
            assert x.meta == y.meta, (family, method)
            if tx is not None:
                for br in tx:
                    assert list(tx[br]) == list(ty[br])
                    assert np.allclose(list(tx[br].values()), list(ty[br].values()), rtol=1.5e-3, atol=1e-7)
        assert [o.token_ids for o in a] != [o.token_ids for o in c], (family, method)


def test_inapplicable_and_bad_input(vlms):
    out = generate(vlms["instructblip"], REQS[:1], method="carve", max_new_tokens=2)[0]
    assert out.error == (
        "method 'carve' needs a spatial grid of image tokens, which the instructblip family "
        "(InstructBLIP) does not have: its Q-Former query tokens have no spatial grid"
    )
    out = generate(vlms["llava"], REQS[:1], method="carve", params={"layers": [20, 25]}, max_new_tokens=2)[0]
    assert out.error == "method 'carve': none of the layers [20, 25] exists (the model has 2 layers)"
    out = generate(vlms["demo"], REQS[:1], method="carve", max_new_tokens=2)[0]
    assert out.meta["carve_layers"] == [0, 1, 2]
    out = generate(vlms["llava"], [Request(image=REQS[0].image, prompt="x", item_id="z")], method="cid")[0]
    assert (
        out.error
        == "method 'cid' needs Request.contrast_prompt and/or Request.contrast_image (the contrastive input)"
    )
    out = generate(vlms["instructblip"], REQS[:1], method="iava", max_new_tokens=2)[0]
    assert out.meta["iava_approximate"] is True
    with pytest.raises(ValueError, match="'version' of method 'carve' must be one of v1, v2, v3"):
        generate(vlms["llava"], REQS[:1], method="carve", params={"version": "v4"})
    with pytest.raises(ValueError, match="'layers' of method 'iava'"):
        generate(vlms["llava"], REQS[:1], method="iava", params={"layers": []})
    out = generate(vlms["llava"], REQS[:1], method="iava", params={"layers": [5]}, max_new_tokens=2)[0]
    assert out.error == "method 'iava': layers [5] out of range: the model has 2 layers"


def test_lqcd_uses_contrast_prompt_or_lead_text(vlms):
    """Without Request.contrast_prompt the leading query is the prompt + lead_text: equal to
    giving that text explicitly; a different leading query changes the output."""
    vlm = vlms["llava"]
    r = REQS[1]
    implicit = generate(vlm, [r], method="lqcd", max_new_tokens=N_NEW, eos_token_id=[])[0]
    explicit = generate(
        vlm,
        [
            Request(
                image=r.image,
                prompt=r.prompt,
                system=r.system,
                item_id="b",
                contrast_prompt=r.prompt + " It seems like there isn't.",
            )
        ],
        method="lqcd",
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )[0]
    assert implicit.token_ids == explicit.token_ids


# --- calibrated scorers -----------------------------------------------------------------------------
def _official_pope_pred(top, name):
    """Literal port of LLaVA-Align eval_pope_calibrate.py:18-29,65-75,115-145 for one item
    (diagonal_W, individual)."""

    def gp(d):
        d = {k.lower().strip(): v for k, v in d.items()}
        return [d.get("yes", 0), d.get("no", 0)]

    gen = np.array(gp(top["naive"]))
    gen = gen / np.sum(gen)
    W = np.identity(2)
    if name != "naive":
        if name == "none_unk":
            a = np.array(gp(top["unk"])) + np.array(gp(top["none"]))
            p_cf = a / np.sum(a)
        else:
            p_cf = gp(top[name])
            p_cf = p_cf / np.sum(p_cf)
        p_cf = [x + 1e-4 for x in p_cf]
        W = np.linalg.inv(np.identity(2) * p_cf)
    q = np.matmul(W, np.expand_dims(gen, axis=-1))
    q /= np.sum(q)
    return ["yes", "no"][int(np.argmax(q))]


def _random_top(rng, with_yes=True, with_no=True):
    words = ["yes", "Yes", "no", " No", "the", "a", "cup"]
    d = {}
    for w in words:
        key = w.lower().strip()
        if (key == "yes" and not with_yes) or (key == "no" and not with_no) or key in d:
            continue
        d[key] = float(rng.rand())
    return d


def test_pope_calibrated_equals_official_loop():
    rng = np.random.RandomState(0)
    recs = []
    for k in range(60):
        top = {
            b: _random_top(rng, with_yes=rng.rand() > 0.1, with_no=rng.rand() > 0.1)
            for b in ("naive", "none", "unk")
        }
        recs.append(
            {
                "item_id": str(k),
                "label": "yes" if k % 2 else "no",
                "answer": "Yes" if k % 3 else "No",
                "meta": {"debias_top": top},
            }
        )
    # no yes/no among the top 10: of the decoded branch; of both content-free branches
    recs[0]["meta"]["debias_top"]["naive"] = {"the": 0.3, "a": 0.2}
    recs[1]["meta"]["debias_top"]["none"] = {"cup": 0.3}
    recs[1]["meta"]["debias_top"]["unk"] = {"cup": 0.3}
    for mode, rule in [(m, "yes") for m in calibrated.MODES] + [("none_unk", "text")]:
        got = calibrated.pope_calibrated(recs, mode, uncalibrated=rule)
        preds, n_uncal = [], 0
        for r in recs:
            top = r["meta"]["debias_top"]
            mass = {b: sum(calibrated.class_probs(top[b])) for b in ("naive", "none", "unk")}
            uncal = (
                mass["naive"] == 0
                or (mode in ("none", "unk") and mass[mode] == 0)
                or (mode == "none_unk" and mass["none"] + mass["unk"] == 0)
            )
            if uncal:
                n_uncal += 1  # official: NaN → np.argmax = 0 → "yes"; rule "text": the decoded answer
                preds.append("yes" if rule == "yes" or r["answer"] == "Yes" else "no")
            else:
                preds.append(_official_pope_pred(top, mode))
        tp = sum(p == "yes" and r["label"] == "yes" for p, r in zip(preds, recs))
        tn = sum(p == "no" and r["label"] == "no" for p, r in zip(preds, recs))
        assert got["accuracy"] == pytest.approx(100 * (tp + tn) / len(recs)), mode
        assert got["yes_ratio"] == pytest.approx(100 * preds.count("yes") / len(recs)), mode
        assert got["n_uncalibrated"] == n_uncal and (mode == "naive" or n_uncal > 0), mode
    assert got["yes_ratio_before"] == pytest.approx(100 * sum(r["answer"] == "Yes" for r in recs) / len(recs))


def test_calibration_numbers_by_hand():
    top = {"naive": {"yes": 0.6, "no": 0.2}, "none": {"yes": 0.9, "no": 0.1}, "unk": {"yes": 0.5, "no": 0.3}}
    # p̂ = [.75, .25]; none prior [.9, .1] (+1e-4): q ∝ [.8332, 2.4975] → "no"
    assert calibrated.calibrate(top, "naive") == "yes"
    assert calibrated.calibrate(top, "none") == "no"
    # unk prior normalised [.625, .375]: q ∝ [1.1998, .6665] → "yes"
    assert calibrated.calibrate(top, "unk") == "yes"
    # none_unk: [1.4, .4] / 1.8 = [.7778, .2222]: q ∝ [.9642, 1.1245] → "no"
    assert calibrated.calibrate(top, "none_unk") == "no"
    assert calibrated.calibrate({"naive": {"the": 0.5}, "none": {}, "unk": {}}, "naive") is None
    with pytest.raises(ValueError, match="unknown calibration mode 'all'"):
        calibrated.calibrate(top, "all")
    with pytest.raises(ValueError, match=r"record 0 \(q1\): no meta\['debias_top'\]"):
        calibrated.pope_calibrated([{"item_id": "q1", "label": "yes", "answer": "yes", "meta": {}}], "none")


def test_mme_calibrated():
    """MME: naive = the decoded text (convert_answer_to_mme_calibrate.py:112-114); a single prior
    is not normalised before the +1e-4 (:130-132) — here that flips both answers relative to the
    POPE transform, which normalises it (eval_pope_calibrate.py:133-136)."""

    def rec(k, label, answer, top):
        return {
            "item_id": f"existence/1.jpg/{k}",
            "subtask": "existence",
            "image_id": "existence/1.jpg",
            "label": label,
            "answer": answer,
            "meta": {"debias_top": top},
        }

    # p̂ = [.7, .3], prior [.0003, .0001]: unnormalised q ∝ [.7/.0004, .3/.0002] = [1750, 1500] → yes;
    # normalised [.75, .25] + 1e-4: q ∝ [.9332, 1.1995] → no.  t2 is the mirror image.
    t1 = {
        "naive": {"yes": 0.7, "no": 0.3},
        "none": {"yes": 0.0003, "no": 0.0001},
        "unk": {"yes": 0.9, "no": 0.1},
    }
    t2 = {
        "naive": {"yes": 0.3, "no": 0.7},
        "none": {"yes": 0.0001, "no": 0.0003},
        "unk": {"yes": 0.1, "no": 0.9},
    }
    recs = [rec(0, "yes", "No", t1), rec(1, "no", "Yes", t2)]
    naive = calibrated.mme_calibrated(recs, "naive")
    assert (
        naive["existence/acc"] == 0.0 and naive["n_uncalibrated"] == 0 and naive["yes_ratio_before"] == 50.0
    )
    none = calibrated.mme_calibrated(recs, "none")
    assert (
        none["existence/acc"] == 100.0
        and none["existence/acc_plus"] == 100.0
        and none["existence/score"] == 200.0
    )
    assert calibrated.pope_calibrated(recs, "none")["accuracy"] == 0.0
    # unk prior [.9, .1]: q ∝ [.7/.9001, .3/.1001] → no for t1; mirror → yes for t2
    assert calibrated.mme_calibrated(recs, "unk")["existence/acc"] == 0.0


# --- LQCD's leading-query POPE -------------------------------------------------------------------
def test_leading_pope_builder(tmp_path):
    from vcdflow.data.lqcd import build_leading_pope, cli, leading_records
    from vcdflow.metrics.pope import read_pope_file

    src = tmp_path / "coco_pope_random.json"
    rows = [
        {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"},
    ]
    src.write_bytes(("\r\n".join(json.dumps(r) for r in rows) + "\r\n").encode())
    dest = tmp_path / "out" / "lead.json"
    assert build_leading_pope(src, dest) == 2
    got = read_pope_file(dest)
    assert [r["text"] for r in got] == [
        "Is there a dog in the image? It seems like there isn't.",
        "Is there a cat in the image? It seems like there is.",
    ]
    assert [r["neutral_text"] for r in got] == [r["text"] for r in rows]
    assert [r["lead"] for r in got] == ["no", "yes"] and [r["label"] for r in got] == ["yes", "no"]
    assert [r["lead"] for r in leading_records(rows, "yes")] == ["yes", "yes"]
    with pytest.raises(ValueError, match="direction must be one of against, yes, no"):
        leading_records(rows, "up")
    with pytest.raises(ValueError, match=r"POPE record 0 \(7\): label must be 'yes' or 'no'"):
        leading_records([{"question_id": 7, "text": "q", "label": "maybe"}])
    assert cli([str(src), str(tmp_path / "b.json"), "--direction", "no"]) == 0
    assert all(r["lead"] == "no" for r in read_pope_file(tmp_path / "b.json"))
