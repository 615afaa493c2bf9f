"""``cid`` and ``contrast`` through the workflow: a benchmark item's optional ``contrast_question``
/ ``contrast_image`` (POPE question-file keys, kept by the POPE loader) become the method's
``Request.contrast_prompt`` (through the benchmark's prompt template) / ``Request.contrast_image``
(resolved under the benchmark's ``images`` and preprocessed like the item's image); the methods
declare it (``Method.item_contrast``, read by ``vcdflow.runner.decode_batch``).

A micro config (tests/configs/contrast.yaml): the shipped demo LLaVA, a hand-written POPE file
``pope_custom`` whose items carry the keys, labels greedy / cid (λ 0) / cid (λ 5) / contrast (α 5), β 0.
Checks that cannot pass by accident: λ 0 and a contrast input equal to the input (the same
question, the item's own image) give greedy's answers, while a different contrast question and a
different contrast image each change the answer of at least one item (so neither is dropped);
the requests themselves (template, image) are checked with a capturing generate;
a second dataset ``pope_bad`` gives cid an error row naming the missing contrast image file and one
naming the keys an item without them needs, while greedy answers both.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "contrast.yaml"
LABELS = ("greedy", "cid0", "cid", "contrast")
SAME = (1, 2, 6)  # contrast input equal to the input: = greedy for every λ / α
TEXT = (3, 4)  # a different contrast question
IMAGE = (5, 8)  # a different contrast image
# item 7 carries both a contrast question and a contrast image (checked for no error and its meta only)


def _scenes(n):
    from vcdflow.data.demo_world import CATEGORIES, render_scene, sample_scene

    names = [c.name for c in CATEGORIES]
    out = []
    for i in range(n):
        _, objects, background = sample_scene(np.random.default_rng([5, 11, i]), 64)
        objs = [o.category.name for o in objects]
        out.append((render_scene(objects, background, 64), objs, next(n for n in names if n not in objs)))
    return out


def _write_data(work: Path) -> dict:
    images = work / "data" / "pope" / "images"
    images.mkdir(parents=True)
    scenes = _scenes(3)
    for i, (img, _, _) in enumerate(scenes):
        img.save(images / f"p{i}.png")
    q = lambda obj: f"Is there a {obj} in the image?"  # noqa: E731
    (_, o0, a0), (_, o1, a1), (_, o2, a2) = scenes
    rows = [
        {
            "question_id": 1,
            "image": "p0.png",
            "text": q(o0[0]),
            "label": "yes",
            "contrast_question": q(o0[0]),
        },
        {"question_id": 2, "image": "p1.png", "text": q(a1), "label": "no", "contrast_question": q(a1)},
        {
            "question_id": 3,
            "image": "p2.png",
            "text": q(o2[0]),
            "label": "yes",
            "contrast_question": q(o2[1]),
        },
        {
            "question_id": 4,
            "image": "p2.png",
            "text": q(o2[0]),
            "label": "yes",
            "contrast_question": q(o0[1]),
        },
        {"question_id": 5, "image": "p2.png", "text": q(o2[0]), "label": "yes", "contrast_image": "p0.png"},
        {"question_id": 6, "image": "p1.png", "text": q(o1[0]), "label": "yes", "contrast_image": "p1.png"},
        {
            "question_id": 7,
            "image": "p2.png",
            "text": q(a2),
            "label": "no",
            "contrast_question": q(o2[0]),
            "contrast_image": "p0.png",
        },
        {"question_id": 8, "image": "p1.png", "text": q(o1[0]), "label": "yes", "contrast_image": "p0.png"},
    ]
    (work / "data" / "pope" / "pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = [
        {"question_id": 1, "image": "p0.png", "text": q(o0[0]), "label": "yes", "contrast_image": "nope.png"},
        {"question_id": 2, "image": "p1.png", "text": q(a1), "label": "no"},
    ]
    (work / "data" / "bad").mkdir(parents=True)
    (work / "data" / "bad" / "pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in bad))
    return {r["question_id"]: r for r in rows}


@pytest.fixture(scope="module")
def contrast_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("contrast")
    rows = _write_data(work)
    shutil.copytree(ROOT / "resources" / "demo_model", work / "model")  # the shipped demo LLaVA
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(CONFIG),
        "--directory",
        str(work),
        "--cores",
        "2",
        "--quiet",
        "rules",
        "--",
        "results/metrics.csv",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return work, rows


def _records(work, bench, label):
    from vcdflow.io import read_jsonl

    mode = "greedy"
    return {
        r["question_id"]: r
        for r in read_jsonl(work / f"results/{bench}/random/demo/unified/{label}/{mode}/seed0.jsonl")
    }


def test_contrast_inputs_through_the_workflow(contrast_run):
    work, rows = contrast_run
    recs = {label: _records(work, "pope_custom", label) for label in LABELS}
    for label, got in recs.items():
        assert sorted(got) == sorted(rows), label
        assert all(r["error"] is None for r in got.values()), (label, got)  # "" = EOS first: an answer
    greedy = {q: r["answer"] for q, r in recs["greedy"].items()}
    assert set(greedy.values()) == {"yes", "no"}  # the demo model answers
    # λ 0 is greedy on every item, whatever the contrast input
    assert {q: r["answer"] for q, r in recs["cid0"].items()} == greedy
    for label in ("cid", "contrast"):
        got = {q: r["answer"] for q, r in recs[label].items()}
        # x' = x, v' = v: the contrast branch equals the original -> greedy (that x' goes through the
        # template is test_runner_builds_the_contrast_request's: the demo model's answer does not
        # depend on the suffix)
        assert [got[q] for q in SAME] == [greedy[q] for q in SAME], label
        # a different contrast question / image changes the answer somewhere
        assert any(got[q] != greedy[q] for q in TEXT), (label, got, greedy)
        assert any(got[q] != greedy[q] for q in IMAGE), (label, got, greedy)
        # the record keeps the item's contrast input
        for q, r in recs[label].items():
            want = {k: rows[q][k] for k in ("contrast_question", "contrast_image") if k in rows[q]}
            assert r["meta"]["contrast_input"] == want, (label, q)
    assert all("contrast_input" not in r["meta"] for r in recs["greedy"].values())
    # cid is contrast's formula with λ for α: the same answers at λ = α
    assert {q: r["answer"] for q, r in recs["cid"].items()} == {
        q: r["answer"] for q, r in recs["contrast"].items()
    }

    df = pd.read_csv(work / "results" / "metrics.csv")
    custom = df[df.benchmark == "pope_custom"]
    assert set(custom.method) == set(LABELS)
    for label in LABELS:
        m = custom[custom.method == label].set_index("metric").value
        assert m["n"] == len(rows) and m["n_errors"] == 0, label
        answers = recs[label]
        n_ok = sum(
            (
                (
                    "no"
                    if {"No", "not", "no"} & set(r["answer"].split(".")[0].replace(",", "").split(" "))
                    else "yes"
                )
                == r["label"]
            )
            for r in answers.values()
        )
        assert m["accuracy"] == pytest.approx(100 * n_ok / len(rows)), label


def test_bad_contrast_inputs_are_error_rows(contrast_run):
    work, _ = contrast_run
    missing = Path("data/pope/images/nope.png")
    for label in ("cid", "contrast"):
        got = _records(work, "pope_bad", label)
        assert got[1]["error"] == (
            f"contrast_image {missing}: FileNotFoundError: [Errno 2] No such file or directory: '{missing}'"
        ), got[1]["error"]
        assert got[2]["error"] == (
            f"method '{label}' needs the item key 'contrast_question' and/or "
            f"'contrast_image' (its contrastive input); item pope/random/2 has none"
        ), got[2]["error"]
        assert got[1]["answer"] == got[2]["answer"] == ""
    # greedy does not read the contrast input: both items answered
    assert all(r["error"] is None for r in _records(work, "pope_bad", "greedy").values())
    df = pd.read_csv(work / "results" / "metrics.csv")
    cid = df[(df.benchmark == "pope_bad") & (df.method == "cid")].set_index("metric").value
    assert cid["n_errors"] == 2


def test_runner_builds_the_contrast_request(tmp_path):
    """decode_batch's requests (a capturing generate): the contrast question through the template
    (the prompt suffix too), the contrast image loaded from ``contrast_image_path``; a method that
    does not declare ``item_contrast`` gets neither."""
    from PIL import Image

    from vcdflow.runner import decode_batch

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "b.png")
    item = {
        "item_id": "x/1",
        "image_path": str(tmp_path / "a.png"),
        "question": "Q1?",
        "label": "yes",
        "contrast_question": "Q2?",
        "contrast_image": "b.png",
        "contrast_image_path": str(tmp_path / "b.png"),
    }
    seen = []

    def capture(vlm, requests, **kw):
        from vcdflow.decoding.types import Output

        seen.extend(requests)
        return [Output(item_id=r.item_id, text="yes", token_ids=[1]) for r in requests]

    for name in ("cid", "greedy"):
        run = {
            "method": {"method": name, "do_sample": False},
            "seed": 0,
            "model": {},
            "benchmark": {"name": "pope", "prompt": "{question} One word.", "max_new_tokens": 2},
        }
        (rec,) = decode_batch(None, run, [item], capture)
        assert rec["error"] is None
    cid, greedy = seen
    assert cid.prompt == greedy.prompt == "Q1? One word."
    assert cid.contrast_prompt == "Q2? One word."
    assert cid.contrast_image.getpixel((0, 0)) == (0, 0, 255) and cid.image.getpixel((0, 0)) == (255, 0, 0)
    assert greedy.contrast_prompt is None and greedy.contrast_image is None
