"""MMVP, HallusionBench, LLaVA-Bench (in the wild) and MMHal-Bench through the whole workflow
(decode -> score -> results/metrics.csv -> report) on demo-world stand-in files this test writes,
the judged ones judged by a fake OpenAI-compatible server on loopback (tests/test_judge.py);
and LQCD's leading-query POPE and debias's calibrated rows in a dry run and through the registry.

Checks that cannot pass by accident: every headline number in metrics.csv equals the library
scorer run here on the workflow's own result files with the same (fake) judge replies; the judge
label sits in every judged per-item row and beside the judged tables of the report; the API key
reaches the server only in its header and appears in no file the run wrote.
"""

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_judge import FakeOpenAI  # noqa: E402  (tests/ is on sys.path: rootdir-less test modules)

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-extra-NEVER-WRITE-THIS-42"
KEY_ENV = "VCDFLOW_TEST_BENCH_JUDGE_KEY"
JUDGE_MODEL = "fake-judge-1"


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def judge_reply(messages) -> str:
    """Deterministic replies in each benchmark's official format, varying with the answer.
    ``messages``: the chat messages, or the request body holding them (the fake server's call)."""
    if isinstance(messages, dict):
        messages = messages["messages"]
    user = [m for m in messages if m["role"] == "user"][-1]["content"]
    if "[Assistant 2]" in user:  # LLaVA-Bench review: "ref model" scores on the first line
        answer = user.split("[Assistant 2]\n", 1)[1].split("\n\n[End of Assistant 2]")[0]
        return f"8 {2 + _h(answer) % 7}\nThe second assistant is shorter."
    if "### LMM Response to Evaluate" in user:  # MMHal rating
        answer = user.rsplit("### LMM Response to Evaluate\n", 1)[1]
        return f"Short explanation.\nRating: {_h(answer) % 7}"
    if "Does the following answer correctly answers the question" in user:  # MMVP gpt grader
        return "yes" if _h(user) % 2 else "no"
    return "correct"


def _scenes(n, seed=0):
    from vcdflow.data.demo_world import render_scene, sample_scene

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        _, objects, background = sample_scene(rng, 32)
        out.append((render_scene(objects, background, 32), [o.category.name for o in objects]))
    return out


def write_standins(root: Path) -> dict:
    """Tiny MMVP / HallusionBench / LLaVA-Bench / MMHal / POPE folders from demo-world scenes, in
    the official layouts the loaders read."""
    from vcdflow.data.demo_world import CATEGORIES, captions_for

    names = [c.name for c in CATEGORIES]
    scenes = _scenes(4)
    absent = lambda objs: next(n for n in names if n not in objs)  # noqa: E731
    # MMVP: 2 pairs, Questions.csv + "MMVP Images/<Index>.jpg"
    mmvp = root / "mmvp"
    (mmvp / "MMVP Images").mkdir(parents=True)
    with open(mmvp / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lndex", "Question", "Options", "Correct Answer"])  # the release's own spelling
        for i, (img, objs) in enumerate(scenes, 1):
            obj = objs[0] if i % 2 else absent(objs)
            w.writerow([i, f"Is there a {obj} in the image?", "(a) Yes (b) No", "(a)" if i % 2 else "(b)"])
            img.save(mmvp / "MMVP Images" / f"{i}.jpg")
    # HallusionBench: VD figure 0 (original) and 1 (edited) of one set, plus one VS text-only question
    hb = root / "hallusionbench"
    (hb / "hallusion_bench" / "VD" / "demo").mkdir(parents=True)
    recs = []
    for fig, (img, objs) in enumerate(scenes[:2]):
        img.save(hb / "hallusion_bench" / "VD" / "demo" / f"0_{fig}.png")
        for q, (obj, gt) in enumerate([(objs[0], "1"), (absent(objs), "0")]):
            recs.append(
                {
                    "category": "VD",
                    "subcategory": "demo",
                    "visual_input": "1" if fig == 0 else "2",
                    "set_id": "0",
                    "figure_id": str(fig),
                    "sample_note": "demo",
                    "question_id": str(q),
                    "question": f"Is there a {obj} in the image?",
                    "gt_answer": gt,
                    "gt_answer_details": f"There is {'a' if gt == '1' else 'no'} {obj}.",
                    "filename": f"./hallusion_bench/VD/demo/0_{fig}.png",
                }
            )
    recs.append(
        {
            "category": "VS",
            "subcategory": "demo",
            "visual_input": "0",
            "set_id": "0",
            "figure_id": "0",
            "sample_note": "demo",
            "question_id": "0",
            "question": "Is a cup a kind of animal?",
            "gt_answer": "0",
            "gt_answer_details": "No.",
            "filename": None,
        }
    )
    (hb / "HallusionBench.json").write_text(json.dumps(recs))
    # LLaVA-Bench (in the wild): 2 images, 3 questions
    lb = root / "llavabench"
    (lb / "images").mkdir(parents=True)
    qs, ctx, refs = [], [], []
    for i, (img, objs) in enumerate(scenes[:2]):
        name = f"{i + 1:03d}.jpg"
        img.save(lb / "images" / name)
        ctx.append({"image": name, "caption": captions_for(objs)[:2]})
    for qid, (img_i, cat, text) in enumerate(
        [
            (0, "conv", "What is in the image?"),
            (0, "detail", "Describe the image."),
            (1, "complex", "Why are these objects together?"),
        ]
    ):
        qs.append({"question_id": qid, "image": f"{img_i + 1:03d}.jpg", "text": text, "category": cat})
        refs.append({"question_id": qid, "text": captions_for(scenes[img_i][1])[0]})
    for fn, rows in (("questions.jsonl", qs), ("context.jsonl", ctx), ("answers_gpt4.jsonl", refs)):
        (lb / fn).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # MMHal-Bench: 3 records, images/ by the image_src file name
    mh = root / "mmhal"
    (mh / "images").mkdir(parents=True)
    mrecs = []
    for i, (img, objs) in enumerate(scenes[:3]):
        img.save(mh / "images" / f"demo{i}.jpg")
        mrecs.append(
            {
                "question_type": ["attribute", "adversarial", "comparison"][i],
                "question_topic": "demo",
                "image_id": f"demo{i}",
                "image_src": f"https://example.invalid/x/demo{i}.jpg",
                "image_content": [o.capitalize() for o in objs],
                "question": "What objects are there?",
                "gt_answer": captions_for(objs)[0],
                "model_answer": "",
            }
        )
    (mh / "response_template.json").write_text(json.dumps(mrecs))
    # POPE (the base of the leading-query variant): 2 questions per image, both splits
    pope = root / "pope"
    (pope / "images").mkdir(parents=True)
    for split in ("random", "adversarial"):
        rows = []
        for i, (img, objs) in enumerate(scenes):
            img.save(pope / "images" / f"p{i}.png")
            rows += [
                {
                    "question_id": 2 * i + 1,
                    "image": f"p{i}.png",
                    "text": f"Is there a {objs[0]} in the image?",
                    "label": "yes",
                },
                {
                    "question_id": 2 * i + 2,
                    "image": f"p{i}.png",
                    "text": f"Is there a {absent(objs)} in the image?",
                    "label": "no",
                },
            ]
        (pope / f"pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"mmvp": mmvp, "hallusionbench": hb, "llavabench": lb, "mmhal": mh, "pope": pope}


def _model(root: Path) -> Path:
    from vcdflow.models.demo import build_demo_vlm

    model, processor = build_demo_vlm(seed=6)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


def _snakemake(workdir, config, *args, env=None, timeout=600, quiet=True, check=True):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *(["--quiet", "rules"] if quiet else []),
        *args,
    ]
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert out.returncode == 0, f"snakemake failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_extra")
    data = write_standins(root / "data")
    model = _model(root)
    with FakeOpenAI(judge_reply, lifetime=600) as srv:
        judge = {
            "kind": "openai",
            "url": srv.url,
            "model": JUDGE_MODEL,
            "api_key_env": KEY_ENV,
            "retry_sleep": 0,
        }
        cfg = {
            "world": "demo",
            "seeds": [0],
            "device": "cpu",
            "batch_size": 4,
            "threads": 1,
            "group_decode": True,  # one decode + one scoring job for the label (model loaded once)
            "models": {"demo": {"path": str(model), "family": "llava"}},
            "benchmarks": {
                "mmvp": {"root": str(data["mmvp"]), "parser": "gpt", "judge": judge, "max_new_tokens_cap": 4},
                "hallusionbench": {
                    "questions": str(data["hallusionbench"] / "HallusionBench.json"),
                    "max_new_tokens_cap": 4,
                },
                "llavabench": {
                    "root": str(data["llavabench"]),
                    "judge": judge,
                    "judge_workers": 2,
                    "max_new_tokens_cap": 6,
                },
                "mmhal": {
                    "questions": str(data["mmhal"] / "response_template.json"),
                    "images": str(data["mmhal"] / "images"),
                    "judge": judge,
                    "max_new_tokens_cap": 6,
                },
            },
            "protocol": "unified",
            "methods": {"greedy": {"method": "greedy"}},
            "report": {"title": "bench-extra"},
        }
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(cfg))
        work = root / "work"
        _snakemake(work, config, env={KEY_ENV: KEY})
        requests = list(srv.requests)
    return work, data, cfg, requests


RESULT = "results/{b}/all/demo/unified/greedy/greedy/seed0"


def _metrics(work):
    with open(work / "results" / "metrics.csv") as f:
        return {
            (r["benchmark"], r["split"], r["metric"]): float(r["value"] or "nan") for r in csv.DictReader(f)
        }


def test_metrics_equal_the_library_scorers_on_the_workflow_results(bench_run):
    from vcdflow.io import read_jsonl
    from vcdflow.metrics import hallusionbench, llavabench, mmhal, mmvp
    from vcdflow.metrics.judge import CallableJudge

    work, data, cfg, _ = bench_run
    m = _metrics(work)
    judge = CallableJudge(judge_reply, JUDGE_MODEL)
    recs = {b: read_jsonl(work / (RESULT.format(b=b) + ".jsonl")) for b in cfg["benchmarks"]}
    assert {b: len(r) for b, r in recs.items()} == {
        "mmvp": 4,
        "hallusionbench": 5,
        "llavabench": 3,
        "mmhal": 3,
    }
    assert all(r["error"] is None for rs in recs.values() for r in rs)  # the text-only question too
    items = mmvp.load_items(data["mmvp"])
    want = mmvp.score(mmvp.judge_items(recs["mmvp"], items, judge), None, "gpt")
    want_hb = hallusionbench.score(
        recs["hallusionbench"], hallusionbench.load_items(data["hallusionbench"] / "HallusionBench.json")
    )
    want_lb = llavabench.score(
        llavabench.judge_items(recs["llavabench"], llavabench.load_items(data["llavabench"]), judge)
    )
    mh_items = mmhal.load_items(data["mmhal"] / "response_template.json", data["mmhal"] / "images")
    want_mh = mmhal.score(mmhal.judge_items(recs["mmhal"], mh_items, judge))
    for bench, want_scores, keys in (
        ("mmvp", want, ("pair_accuracy", "accuracy", "n")),
        ("hallusionbench", want_hb, ("aAcc", "fAcc", "qAcc", "n")),
        ("llavabench", want_lb, ("relative", "model_score", "reference_score", "n")),
        ("mmhal", want_mh, ("score", "hallucination_rate", "n")),
    ):
        for k in keys:
            got = m[(bench, "all", k)]
            assert got == pytest.approx(want_scores[k], nan_ok=True), (bench, k)
    assert m[("llavabench", "all", "reference_score")] == 80.0  # the fake judge's fixed reference score
    assert m[("mmhal", "all", "n")] == 3 and m[("hallusionbench", "all", "n")] == 5


def test_judge_label_beside_every_judged_number_and_key_never_written(bench_run):
    from vcdflow.io import read_jsonl

    work, _, cfg, requests = bench_run
    label = f"openai:{JUDGE_MODEL}"
    for b in ("mmvp", "llavabench", "mmhal"):
        rows = read_jsonl(work / (RESULT.format(b=b) + ".scored.jsonl"))
        assert rows and all(r["judge"] == label for r in rows), b
    assert all(
        "judge" not in r for r in read_jsonl(work / (RESULT.format(b="hallusionbench") + ".scored.jsonl"))
    )
    # 4 MMVP + 3 LLaVA-Bench + 3 MMHal questions judged, each once, with the key only in the header
    assert len(requests) == 10 and all(r["auth"] == f"Bearer {KEY}" for r in requests)
    html = (work / "reports" / "index.html").read_text()
    for b in ("mmvp", "llavabench", "mmhal"):
        section = html.split(f'id="bench-{b}"', 1)[1].split("<section", 1)[0]
        assert f"Judged by: <b>{label}</b> (demo/greedy)" in section, b
    hb = html.split('id="bench-hallusionbench"', 1)[1].split("<section", 1)[0]
    assert "Judged by" not in hb
    for title in ("MMVP", "HallusionBench", "LLaVA-Bench (in the wild)", "MMHal-Bench"):
        assert f"<h2>{title}" in html
    for path in work.rglob("*"):
        if path.is_file() and ".snakemake" not in path.parts:
            assert KEY.encode() not in path.read_bytes(), path


def test_failed_judged_scoring_leaves_no_current_table_and_its_judgements_resume(bench_run):
    """A new judge for LLaVA-Bench that dies (HTTP 500) after one reply: the run fails with one line
    naming the judge and the cause, the metrics table and the report are set aside (never shown
    with the old judge's numbers), the one judgement is kept; the rerun against a working judge
    asks only the 2 others (MMVP's and MMHal's kept judgements are reused) and the table says the
    new judge. A key written into the config, and an unset key variable, fail at parse time naming
    the key / variable, before any job, and the key is printed nowhere."""
    from vcdflow.io import read_jsonl

    work, _, cfg, _ = bench_run
    config = work.parent / "config_judge2.yaml"
    lb = RESULT.format(b="llavabench")
    with FakeOpenAI(judge_reply, fail_after=1, failure="500", lifetime=300) as srv:
        judge2 = {
            "kind": "openai",
            "url": srv.url,
            "model": "fake-judge-2",
            "api_key_env": KEY_ENV,
            "retries": 2,
            "retry_sleep": 0,
        }
        cfg2 = json.loads(json.dumps(cfg))
        cfg2["benchmarks"]["llavabench"]["judge"] = judge2
        cfg2["benchmarks"]["llavabench"]["judge_workers"] = 1
        config.write_text(yaml.safe_dump(cfg2))
        out = _snakemake(work, config, env={KEY_ENV: KEY}, check=False)
        n_failed = len(srv.requests)
    consoles = [out]
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "judge fake-judge-2 at" in ln]
    assert lines and "HTTP 500" in lines[0] and "(after 2 attempt(s))" in lines[0], out.stderr[-3000:]
    assert f"every judgement made so far is kept in {lb}.judgements.jsonl" in lines[0]
    kept = [r for r in read_jsonl(work / (lb + ".judgements.jsonl")) if r["judge"] == "openai:fake-judge-2"]
    assert len(kept) == 1
    logs = "".join(p.read_text() for p in (work / "logs").rglob("*.log"))
    assert "Traceback" not in logs
    assert not (work / "results/metrics.csv").exists() and (work / "results/metrics.csv.stale").exists()
    assert not (work / "reports/index.html").exists() and (work / "reports/index.html.stale").exists()
    assert n_failed == 1 + 2  # one good reply, then the failing request twice
    with FakeOpenAI(judge_reply, lifetime=300) as srv:
        cfg2["benchmarks"]["llavabench"]["judge"]["url"] = srv.url
        config.write_text(yaml.safe_dump(cfg2))
        consoles.append(_snakemake(work, config, env={KEY_ENV: KEY}))
        assert len(srv.requests) == 2  # only LLaVA-Bench's two unjudged answers
    assert all(r["judge"] == "openai:fake-judge-2" for r in read_jsonl(work / (lb + ".scored.jsonl")))
    assert all(
        r["judge"] == f"openai:{JUDGE_MODEL}"
        for r in read_jsonl(work / (RESULT.format(b="mmhal") + ".scored.jsonl"))
    )
    html = (work / "reports" / "index.html").read_text()
    assert (
        "Judged by: <b>openai:fake-judge-2</b>"
        in html.split('id="bench-llavabench"', 1)[1].split("<section", 1)[0]
    )
    # a key in the config / an unset key variable: one line at parse time, the key nowhere
    secret = "sk-in-config-NEVER-PRINT-77"
    bad = json.loads(json.dumps(cfg2))
    bad["benchmarks"]["mmhal"]["judge"]["api_key"] = secret
    config.write_text(yaml.safe_dump(bad))
    out = _snakemake(work, config, env={KEY_ENV: KEY}, check=False)
    consoles.append(out)
    assert (
        out.returncode != 0
        and "config.benchmarks.mmhal.judge.api_key: a secret does not go into a config" in out.stderr
    )
    assert secret not in out.stdout + out.stderr
    config.write_text(yaml.safe_dump(cfg2))
    (work / "results/metrics.csv").unlink()  # something to do: the check runs before the first job
    out = _snakemake(work, config, env={KEY_ENV: None}, check=False)
    assert out.returncode != 0 and f"environment variable {KEY_ENV} is not set" in out.stderr, out.stderr[
        -2000:
    ]
    assert not (work / "results/metrics.csv").exists()  # no job ran
    consoles.append(out)
    for run in consoles:  # the key from the environment / the config: on no console
        assert KEY not in run.stdout + run.stderr and secret not in run.stdout + run.stderr
    for path in work.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and secret.encode() not in data, path


def test_leading_pope_and_debias_micro_run_and_registry(tmp_path, monkeypatch):
    """The workflow builds the leading-query POPE of every split (rule build_leading_pope) and
    scores lqcd and debias on POPE and on it; debias's POPE rows include the calibrated ones (not
    lqcd's). Through the registry: the leading items carry both queries, and a debias result's
    calibrated rows equal vcdflow.metrics.calibrated."""
    from vcdflow.benchmarks import get_benchmark
    from vcdflow.decoding import Request, generate
    from vcdflow.io import read_jsonl
    from vcdflow.metrics import calibrated
    from vcdflow.models import load_vlm

    data = write_standins(tmp_path / "data")
    pope_q = str(data["pope"] / "pope_{split}.json")
    images = str(data["pope"] / "images")
    _model(tmp_path)
    cfg = {
        "world": "demo",
        "seeds": [0],
        "device": "cpu",
        "batch_size": 8,
        "threads": 1,
        "group_decode": True,
        "models": {"demo": {"path": str(tmp_path / "model"), "family": "llava"}},
        "benchmarks": {
            "pope": {
                "dataset": "demo",
                "splits": ["random", "adversarial"],
                "questions": pope_q,
                "images": images,
                "max_new_tokens_cap": 2,
            },
            "leading_pope": {
                "base": pope_q,
                "images": images,
                "splits": ["random", "adversarial"],
                "max_new_tokens_cap": 2,
            },
        },
        "protocol": "unified",
        "methods": {"lqcd": {"method": "lqcd"}, "debias": {"method": "debias"}},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    _snakemake(work, config)
    m = _metrics(work)
    for split in ("random", "adversarial"):
        lead = work / "resources" / "leading_pope" / "leading_pope" / f"{split}.json"
        assert len(read_jsonl(lead)) == 8
        for b in ("pope", "leading_pope"):
            for meth in ("lqcd", "debias"):
                assert (work / f"results/{b}/{split}/demo/unified/{meth}/greedy/seed0.jsonl").exists(), (
                    b,
                    split,
                    meth,
                )
    with open(work / "results" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    metrics_of = lambda b, meth: {r["metric"] for r in rows if r["benchmark"] == b and r["method"] == meth}  # noqa: E731
    assert {"accuracy", "follow_lead"} <= metrics_of("leading_pope", "lqcd")
    assert {"accuracy", "f1"} <= metrics_of("pope", "lqcd") and "accuracy_calibrated" not in metrics_of(
        "pope", "lqcd"
    )
    assert {
        "accuracy_calibrated",
        "f1_calibrated",
        "yes_ratio_calibrated",
        "n_uncalibrated",
        "accuracy_calibrated_unk",
        "n_uncalibrated_naive",
        "yes_ratio_before",
    } <= metrics_of("pope", "debias")
    db_rec = read_jsonl(work / "results/pope/random/demo/unified/debias/greedy/seed0.jsonl")
    assert m[("pope", "random", "accuracy_calibrated")] == pytest.approx(
        calibrated.pope_calibrated(db_rec)["accuracy"]
    )
    assert m[("pope", "random", "n_uncalibrated")] == calibrated.pope_calibrated(db_rec)["n_uncalibrated"]

    # registry: the leading items, decoded with lqcd and debias on the same demo model
    monkeypatch.chdir(work)  # the leading file path is relative to the workflow directory
    bench = {
        "name": "leading_pope",
        "kind": "leading_pope",
        "split": "random",
        "base": pope_q,
        "images": images,
    }
    spec = get_benchmark("leading_pope")
    items = spec.load_items(bench)
    assert [
        it["neutral_question"]
        + " "
        + ("It seems like there is." if it["label"] == "no" else "It seems like there isn't.")
        for it in items
    ] == [it["question"] for it in items]
    assert [it["lead"] for it in items] == ["no", "yes"] * 4
    vlm = load_vlm(tmp_path / "model")
    from PIL import Image

    reqs = [
        Request(
            image=Image.open(it["image_path"]).convert("RGB"), prompt=it["question"], item_id=it["item_id"]
        )
        for it in items
    ]

    def records(method):
        outs = generate(vlm, reqs, method=method, max_new_tokens=2, seed=0, batch_size=8)
        return [
            {
                "item_id": it["item_id"],
                "label": it["label"],
                "answer": o.text,
                "error": o.error,
                "meta": dict(o.meta or {}),
            }
            for it, o in zip(items, outs)
        ]

    lq = records("lqcd")
    scores, rows = spec.score(bench, lq)
    assert scores["n"] == 8 and len(rows) == 8 and 0 <= scores["follow_lead"] <= 100
    assert scores["follow_lead"] == pytest.approx(
        100 * sum(r["pred"] == it["lead"] for r, it in zip(rows, items)) / 8
    )
    assert not any(k.endswith("_calibrated") for k in scores)  # not a debias result
    pope_bench = {"name": "pope", "kind": "pope", "split": "random"}
    pope_scores, _ = get_benchmark("pope").score(pope_bench, lq)
    assert pope_scores["accuracy"] == scores["accuracy"] and "accuracy_calibrated" not in pope_scores
    db = records("debias")
    assert all("debias_top" in r["meta"] for r in db)
    cal, _ = get_benchmark("pope").score(pope_bench, db)
    for mode, suffix in (("none_unk", ""), ("none", "_none"), ("unk", "_unk"), ("naive", "_naive")):
        want = calibrated.pope_calibrated(db, mode)
        for k in ("accuracy", "f1", "yes_ratio"):
            assert cal[f"{k}_calibrated{suffix}"] == pytest.approx(want[k], nan_ok=True)
        assert cal[f"n_uncalibrated{suffix}"] == want["n_uncalibrated"]
    assert cal["yes_ratio_before"] == pytest.approx(cal["yes_ratio"])
    # MME: calibrated rows from records with MME items' fields
    mme_recs = [
        {
            **r,
            "item_id": f"mme/existence/{i // 2}/{i % 2}",
            "subtask": "existence",
            "image_id": str(i // 2),
            "label": "Yes" if i % 2 == 0 else "No",
            "answer": r["answer"],
        }
        for i, r in enumerate(db)
    ]
    mme_cal = get_benchmark("mme").score({"name": "mme", "kind": "mme", "split": "all"}, mme_recs)[0]
    want = calibrated.mme_calibrated(mme_recs, "none_unk")
    assert mme_cal["n_uncalibrated"] == want["n_uncalibrated"]
    assert mme_cal["yes_ratio_before"] == pytest.approx(want["yes_ratio_before"])
