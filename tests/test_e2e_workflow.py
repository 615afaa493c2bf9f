"""The whole workflow on the micro demo config, in a temp directory, via ``python -m snakemake``.

One run builds the demo world, trains a (micro) demo LLaVA, decodes POPE and CHAIR with
greedy/sample/VCD, scores and renders the report. Further tests reuse that run: rerun is a
no-op, a second run from scratch is byte-identical (timing aside), a killed decode shard
resumes without losing or duplicating items.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vcdflow.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "configs" / "micro.yaml"
pytestmark = pytest.mark.slow


def snakemake(workdir, *args, config=MICRO, timeout=900, check=True):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        "--rerun-incomplete",
        *args,
    ]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


def strip_timing(path):
    return [{k: v for k, v in r.items() if k != "timing"} for r in read_jsonl(path)]


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("micro")
    t0 = time.time()
    snakemake(workdir)
    return workdir, time.time() - t0


def test_pipeline_outputs(micro_run):
    workdir, _ = micro_run
    cfg = yaml.safe_load(MICRO.read_text())
    df = pd.read_csv(workdir / "results" / "metrics.csv")
    assert list(df.columns) == [
        "benchmark",
        "split",
        "model",
        "protocol",
        "method",
        "mode",
        "seed",
        "metric",
        "value",
    ]
    # every label under unified; sample and vcd also under VCD's paper protocol (micro.yaml); the
    # splits of metrics.csv: POPE's, CHAIR's and MME's "all", AMBER's two tasks and its four
    # discriminative dimensions
    n_splits = len(cfg["benchmarks"]["pope"]["splits"]) + 1 + 1 + 6
    n_runs = n_splits * (len(cfg["methods"]) + 2) * len(cfg["seeds"])
    assert len(df.groupby(["benchmark", "split", "model", "protocol", "method", "mode", "seed"])) == n_runs
    runs = set(df[["protocol", "method", "mode"]].drop_duplicates().itertuples(index=False, name=None))
    assert runs == {
        ("unified", "greedy", "greedy"),
        ("unified", "sample", "sample"),
        ("unified", "vcd", "greedy"),
        ("unified", "convis", "greedy"),
        ("vcd", "vcd", "sample"),
        ("vcd", "sample", "sample"),
    }
    # under VCD's protocol: its system text and parser (DAMO-NLP-SG/VCD eval_pope.py), its sampling,
    # max_new_tokens capped by the config (recorded in the run)
    vrec = read_jsonl(workdir / "results/pope/random/demo/vcd/vcd/sample/seed0.jsonl")
    assert [r["question_id"] for r in vrec] == [
        r["question_id"]
        for r in read_jsonl(workdir / "results/pope/random/demo/vcd/sample/sample/seed0.jsonl")
    ]
    side = json.loads((workdir / "results/pope/random/demo/vcd/vcd/sample/seed0.meta.json").read_text())
    # the answer parser (VCD's "vcd") decides the scores only: not in the decode record
    assert side["run"]["protocol"]["protocol"] == "vcd" and "parser" not in side["run"]["protocol"]
    assert "parser" not in side["run"]["benchmark"]
    assert side["run"]["benchmark"]["max_new_tokens"] == 3 and side["run"]["method"]["do_sample"] is True
    assert side["peak_mem_mb"] > 0 and side["hardware"]
    # the libraries it ran with (vcdflow.envlock.RESULT_PACKAGES) and whether they are the locked ones
    assert side["versions"]["transformers"] == metadata.version("transformers")
    assert side["versions"]["torch"] == metadata.version("torch")
    assert side["environment_lock"]["matches"] is True
    pope = df[(df.benchmark == "pope")]
    assert set(pope.metric) >= {"accuracy", "precision", "recall", "f1", "yes_ratio", "n", "n_errors"}
    chair = df[(df.benchmark == "chair")]
    assert set(chair.metric) >= {"chair_s", "chair_i", "recall", "length"}
    # the demo MME and AMBER (rules build_demo_mme / build_demo_amber) decoded and scored
    mme = df[(df.benchmark == "mme")]
    assert set(mme.split) == {"all"} and set(mme.metric) >= {
        "existence_acc",
        "existence_acc_plus",
        "hallucination",
    }
    amber = df[(df.benchmark == "amber")]
    assert set(amber.split) == {"generative", "discriminative", "existence", "attribute", "relation", "state"}
    assert set(amber[amber.split == "generative"].metric) >= {"chair", "cover", "hal", "cog"}
    assert set(amber[amber.split == "discriminative"].metric) >= {"accuracy", "f1"}
    n_mme = len(read_jsonl(workdir / "results/mme/all/demo/unified/greedy/greedy/seed0.jsonl"))
    assert n_mme == 4 * 2 * cfg["demo"]["mme_images"]  # 4 subtasks x images x 2 questions
    assert (
        len(read_jsonl(workdir / "results/amber/generative/demo/unified/greedy/greedy/seed0.jsonl"))
        == cfg["demo"]["amber_images"]
    )
    # every POPE question of the split is answered once, in file order
    questions = read_jsonl(workdir / "resources/demo/pope/demo_pope_random.json")
    recs = read_jsonl(workdir / "results/pope/random/demo/unified/vcd/greedy/seed0.jsonl")
    assert [r["question_id"] for r in recs] == [q["question_id"] for q in questions]
    assert all(
        set(r)
        == {
            "item_id",
            "image",
            "image_id",
            "question_id",
            "prompt",
            "answer",
            "label",
            "seed",
            "error",
            "meta",
            "timing",
        }
        for r in recs
    )
    # accuracy in metrics.csv is what the official parser gives on the answers
    n_ok = sum(
        (
            (
                "no"
                if {"No", "not", "no"} & set(r["answer"].split(".")[0].replace(",", "").split(" "))
                else "yes"
            )
            == r["label"]
        )
        for r in recs
    )
    acc = pope[
        (pope.split == "random")
        & (pope.method == "vcd")
        & (pope.protocol == "unified")
        & (pope.metric == "accuracy")
    ].value.item()
    assert acc == pytest.approx(100 * n_ok / len(recs))
    html = (workdir / "reports" / "index.html").read_text()
    assert "<html" in html and "demo" in html.lower()
    assert not list(workdir.glob("results/**/*.partial"))
    # the speed section: peak memory and hardware from the sidecars
    speed = re.search(r'<table id="speed-table">(.*?)</table>', html, re.S).group(1)
    mems = re.findall(r'<td class="num">(\d+)</td><td class="hardware">([^<]+)</td>', speed)
    assert len(mems) == 4 * 6  # (pope, chair, mme, amber) x 6 runs
    assert all(int(m) > 0 and "(cpu)" in hw for m, hw in mems)
    # every run is labelled with its protocol; the protocol section lists how VCD's differs
    assert '<code>vcd@vcd</code></td><td class="protocol">vcd</td>' in html
    diff = re.search(r'<table class="protocol-diff" data-protocol="vcd">(.*?)</table>', html, re.S).group(1)
    assert "<td>pope</td><td>parser</td>" in diff
    # the overview shows the MME and AMBER headline metrics of metrics.csv (one seed: the value)
    for bench, split, metric in (
        ("mme", "all", "hallucination"),
        ("amber", "generative", "chair"),
        ("amber", "discriminative", "accuracy"),
    ):
        m = re.search(rf'data-sort="([^"]+)" data-glance="{bench}/{split}/demo/vcd/{metric}"', html)
        assert m, (bench, split, metric)
        want = df[
            (df.benchmark == bench)
            & (df.split == split)
            & (df.method == "vcd")
            & (df.protocol == "unified")
            & (df.metric == metric)
        ].value.item()
        assert float(m.group(1)) == pytest.approx(want)
    assert 'id="bench-mme"' in html and 'id="bench-amber"' in html
    # one library-version set for every result: listed once in the provenance, no table flagged
    libs = re.search(r'<td id="decode-versions">(.*?)</td>', html, re.S).group(1)
    assert libs.count("transformers ") == 1 and "versions-conflict" not in html
    assert "none recorded (no hub branch or tag was downloaded)" in html  # demo models are local


def test_execution_settings_never_redecode(micro_run):
    """threads, batch size and device are how a run executes, not what it gives: after a complete
    run, changing them plans no decode, caption or render job."""
    workdir, _ = micro_run
    assert yaml.safe_load(MICRO.read_text())["batch_size"] == 4  # so batch_size=8 is a change
    out = snakemake(workdir, "-n", "--config", "threads=2", "batch_size=8", "device=cpu")
    text = out.stdout + out.stderr
    for rule in (
        "decode",
        "decode_group",
        r"decode_batch_\w+",
        "convis_captions",
        "convis_reconstruct",
        "merge_shards",
    ):
        assert not re.search(rf"^rule {rule}:", text, re.M), text[-3000:]
    # at most the report re-renders (its provenance shows the config, threads included)
    planned = set(re.findall(r"^(?:local)?rule (\w+):", text, re.M))
    assert planned <= {"report", "all"}, planned


#: a score-only setting of the micro config (benchmark, key, new value): on the finished run it
#: plans re-scoring, never a decode job (vcdflow.config.RunSpec scoring)
SCORE_ONLY_EDITS = {
    "pope parser": ("pope", "parser", "opera"),
    "chair nltk_data trailing slash": ("chair", "nltk_data", "resources/demo/nltk_data/"),
    "chair synonyms": ("chair", "synonyms", "resources/demo/world/../chair_synonyms.txt"),
    "amber spacy_model": ("amber", "spacy_model", "resources/spacy/en_core_web_lg"),
    "amber parser": ("amber", "parser", "first_word"),
}


@pytest.mark.parametrize("edit", list(SCORE_ONLY_EDITS))
def test_score_only_settings_plan_no_decode_job(micro_run, tmp_path, edit):
    workdir, _ = micro_run
    cfg = yaml.safe_load(MICRO.read_text())
    bench, key, value = SCORE_ONLY_EDITS[edit]
    cfg["benchmarks"][bench][key] = value
    path = tmp_path / "edited.yaml"
    path.write_text(
        yaml.safe_dump(cfg, sort_keys=False)
    )  # the demo section's order kept (its params are dicts)
    out = snakemake(workdir, "-n", config=path)
    planned = set(re.findall(r"^(?:local)?rule (\w+):", out.stdout + out.stderr, re.M))
    reasons = re.findall(r"^\s*reason: .*$", out.stdout + out.stderr, re.M)
    assert not {r for r in planned if r.startswith(("decode", "convis")) or r == "merge_shards"}, (
        planned,
        reasons[:8],
    )
    assert any(r.startswith("score") for r in planned), planned  # it does re-score


def test_rerun_is_a_no_op(micro_run):
    workdir, _ = micro_run
    out = snakemake(workdir, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_second_run_is_byte_identical(micro_run, tmp_path):
    """A second run gives the same records — with one decode and one scoring job per label
    (group_labels 1) where the first run batched two labels a job (micro.yaml). It starts from the
    first run's built world, trained model and ConVis renders (resources/, results/convis: that
    they are rebuilt the same from scratch is tests/test_slurm.py's local-vs-cluster comparison)
    and redoes everything after them: decoding, scoring, metrics.csv."""
    workdir, _ = micro_run
    assert yaml.safe_load(MICRO.read_text())["group_labels"] == 2
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    shutil.copytree(workdir / "results" / "convis", tmp_path / "results" / "convis")
    snakemake(tmp_path, "--config", "group_labels=1")
    assert (tmp_path / "logs/decode_group").is_dir() and not (tmp_path / "logs/decode_batch").exists()
    assert (workdir / "logs/decode_batch").is_dir() and not (workdir / "logs/decode_group").exists()
    for path in sorted((workdir / "results").rglob("seed*.jsonl")):
        other = tmp_path / path.relative_to(workdir)
        if path.name.endswith(".scored.jsonl"):
            assert path.read_bytes() == other.read_bytes(), path
        else:
            assert strip_timing(path) == strip_timing(other), path
    assert (workdir / "results/metrics.csv").read_bytes() == (tmp_path / "results/metrics.csv").read_bytes()


# the per-shard jobs' kill and resume: tests/test_slurm.py (a job scancelled mid-shard, the rerun
# resumes from its checkpoint) and tests/test_cli_reliability.py (SIGKILL, resume = uninterrupted)
@pytest.mark.parametrize("group", ["batch", "label"], ids=["group_labels", "group_decode"])
def test_kill_during_decode_then_resume(micro_run, tmp_path, group):
    """SIGKILL a running decode job mid-shard, rerun: nothing lost or duplicated, same output —
    for a decode job of two labels (group_labels 2, micro.yaml's; greedy is decoded before vcd)
    and one job per label (group_labels 1), whose records also equal each other."""
    workdir, _ = micro_run
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["batch_size"] = 2
    cfg["group_decode"] = True
    cfg["group_labels"] = 2 if group == "batch" else 1
    cfg["benchmarks"] = {"pope": dict(cfg["benchmarks"]["pope"], splits=["random"])}
    methods = cfg["methods"]
    cfg["methods"] = {"vcd": methods["vcd"]}
    if group == "batch":
        cfg["methods"] = {"greedy": methods["greedy"], "vcd": dict(methods["vcd"], protocol="unified")}
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = "results/pope/random/demo/unified/vcd/greedy/seed0.jsonl"
    partial = tmp_path / "results/shards/pope/random/demo/unified/vcd/greedy/seed0/0-of-1.jsonl.partial"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--cores",
        "1",
        "--workflow-profile",
        "none",
        target,
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if partial.exists() and len(partial.read_text().splitlines()) >= 1 + 4:  # two batches done
            break
        time.sleep(0.05)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("decode never checkpointed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len([line for line in partial.read_text().splitlines()[1:] if line.strip()])
    assert done_before >= 4
    assert not (tmp_path / target).exists()
    snakemake(tmp_path, "--unlock", config=config)  # the killed run left its lock behind
    snakemake(tmp_path, target, config=config)
    logs = {"batch": "logs/decode_batch", "label": "logs/decode_group/demo/unified/vcd"}[group]
    log = next((tmp_path / logs).glob("*.log")).read_text()
    assert "resuming" in log and "already decoded" in log
    if group == "batch":  # greedy's shard, finished before the kill, is not decoded again
        assert "0-of-1.jsonl: up to date, not decoded again" in log
    recs = strip_timing(tmp_path / target)
    assert [r["item_id"] for r in recs] == [r["item_id"] for r in strip_timing(workdir / target)]
    assert recs == strip_timing(workdir / target)


def test_overlay_config_runs_end_to_end(micro_run, tmp_path):
    """A 10-line overlay (vcdflow.overlay: `base:` + what differs) runs through the workflow: the
    micro config cut to POPE's random split and three of its methods, its decoding cut into jobs
    of at most two decodes (group_results) while each label batch is scored in one job. Its
    results are the micro run's records for the same results (the overlay is the same runs), and
    nothing else runs."""
    workdir, _ = micro_run
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(f"""\
base: {MICRO}
benchmarks:
  pope: {{splits: [random]}}
methods: [greedy, sample, vcd]
group_labels: 3
group_results: 2
""")
    assert len(overlay.read_text().splitlines()) <= 10
    snakemake(tmp_path, config=overlay)
    df = pd.read_csv(tmp_path / "results" / "metrics.csv")
    assert set(df[["benchmark", "split"]].itertuples(index=False, name=None)) == {("pope", "random")}
    runs = set(df[["protocol", "method", "mode"]].drop_duplicates().itertuples(index=False, name=None))
    assert runs == {
        ("unified", "greedy", "greedy"),
        ("unified", "sample", "sample"),
        ("unified", "vcd", "greedy"),
        ("vcd", "vcd", "sample"),
        ("vcd", "sample", "sample"),
    }  # micro.yaml's protocols kept
    results = sorted(
        p for p in (tmp_path / "results").rglob("seed*.jsonl") if not p.name.endswith(".scored.jsonl")
    )
    assert len(results) == len(runs)
    for path in results:
        assert strip_timing(path) == strip_timing(workdir / path.relative_to(tmp_path)), path
    # unified's three labels in one scoring job and two decode jobs (group_results 2), vcd's two in one each
    assert len(list((tmp_path / "logs/decode_batch").glob("*.log"))) == 3
    assert len(list((tmp_path / "logs/score_batch").glob("*.log"))) == 2
    assert (tmp_path / "reports" / "index.html").exists()


def _small_config(tmp_path, **changes):
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["benchmarks"] = {"pope": dict(cfg["benchmarks"]["pope"], splits=["random"])}
    cfg["methods"] = {"greedy": cfg["methods"]["greedy"]}
    cfg.pop("convis", None)
    cfg.update(changes)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return cfg, config


def test_bad_inputs_become_error_rows_and_no_secret_leaks(micro_run, tmp_path):
    """Missing, corrupt and truncated images and an over-long prompt, through the workflow.

    The config holds three POPE datasets: the demo's own, ``pope_custom`` (a hand-written file
    with the bad items) and ``pope_mine`` (built from COCO-format annotations by rule build_pope).

    Each bad item becomes an error row with its exact reason, the good item is still answered,
    the scorer counts the errors and the report refuses the run's metrics (3 of 4 items errored).
    A sentinel hub token in the environment appears in no file the run writes.
    """
    workdir, _ = micro_run
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    images = tmp_path / "custom" / "images"
    images.mkdir(parents=True)
    good = sorted((workdir / "resources/demo/world/images/val").glob("*.png"))[0]
    shutil.copy(good, images / "good.png")
    (images / "corrupt.png").write_bytes(b"this is not an image")
    data = good.read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    long_question = "Is there a " + " ".join(["cup"] * 2100) + " in the image?"
    questions = [
        {"question_id": 1, "image": "good.png", "text": "Is there a cup in the image?", "label": "yes"},
        {"question_id": 2, "image": "missing.png", "text": "Is there a cup in the image?", "label": "no"},
        {"question_id": 3, "image": "corrupt.png", "text": "Is there a cup in the image?", "label": "no"},
        {"question_id": 4, "image": "truncated.png", "text": "Is there a cup in the image?", "label": "yes"},
        {"question_id": 5, "image": "good.png", "text": long_question, "label": "no"},
    ]
    (tmp_path / "custom" / "pope_random.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
    cfg, config = _small_config(tmp_path)
    # a second POPE dataset in the same config (key pope_<name>) beside the demo's own POPE
    cfg["benchmarks"]["pope_custom"] = dict(
        cfg["benchmarks"]["pope"],
        dataset="custom",
        questions="custom/pope_{split}.json",
        images="custom/images",
    )
    # and a third, built from COCO-format annotations by rule build_pope (how users make POPE for their data)
    mine = {k: v for k, v in cfg["benchmarks"]["pope"].items() if k != "questions"}
    cfg["benchmarks"]["pope_mine"] = dict(
        mine,
        dataset="mine",
        build={"instances": "resources/demo/world/annotations/instances_val.json", "n_images": 2, "seed": 3},
    )
    config.write_text(yaml.safe_dump(cfg))

    sentinel = "hf_SENTINELtoken0123456789abcdefXYZ"
    env = dict(os.environ, HF_TOKEN=sentinel, HUGGING_FACE_HUB_TOKEN=sentinel)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        "results/metrics.csv",
        "reports/index.html",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    recs = {
        r["question_id"]: r
        for r in read_jsonl(tmp_path / "results/pope_custom/random/demo/unified/greedy/greedy/seed0.jsonl")
    }
    assert sorted(recs) == [1, 2, 3, 4, 5]
    assert recs[1]["error"] is None and recs[1]["answer"]
    rel = Path("custom/images")  # paths as the config gives them (relative to the working directory)
    missing = rel / "missing.png"
    assert (
        recs[2]["error"]
        == f"image {missing}: FileNotFoundError: [Errno 2] No such file or directory: '{missing}'"
    )
    corrupt = rel / "corrupt.png"
    assert (
        recs[3]["error"] == f"image {corrupt}: UnidentifiedImageError: cannot identify image file '{corrupt}'"
    )
    truncated = rel / "truncated.png"
    assert recs[4]["error"] == f"image {truncated}: OSError: image file is truncated"
    m = re.fullmatch(
        r"prompt of (\d+) tokens plus max_new_tokens=3 exceeds the model's (\d+) positions", recs[5]["error"]
    )
    assert m, recs[5]["error"]
    assert int(m.group(1)) > 2100 and int(m.group(1)) + 3 > int(m.group(2))
    assert all(recs[q]["answer"] == "" for q in (2, 3, 4, 5))

    from vcdflow.data.pope_builder import build_pope

    built = tmp_path / "resources/pope/built/pope_mine/pope_mine_pope_random.json"
    build_pope(
        tmp_path / "resources/demo/world/annotations/instances_val.json",
        tmp_path / "direct",
        n_images=2,
        seed=3,
        prefix="pope_mine",
    )
    assert built.read_bytes() == (tmp_path / "direct/pope_mine_pope_random.json").read_bytes()
    mine = read_jsonl(tmp_path / "results/pope_mine/random/demo/unified/greedy/greedy/seed0.jsonl")
    assert [r["question_id"] for r in mine] == [q["question_id"] for q in read_jsonl(built)] and len(
        mine
    ) == 12
    df = pd.read_csv(tmp_path / "results/metrics.csv")
    assert set(df.benchmark) == {"pope", "pope_custom", "pope_mine"}
    run = df[(df.benchmark == "pope_custom") & (df.split == "random") & (df.method == "greedy")].set_index(
        "metric"
    )
    assert run.value["n_errors"] == 4 and run.value["n"] == 1  # n counts the scored (error-free) items
    clean = df[(df.benchmark == "pope") & (df.split == "random") & (df.method == "greedy")].set_index(
        "metric"
    )
    assert clean.value["n_errors"] == 0
    assert strip_timing(
        tmp_path / "results/pope/random/demo/unified/greedy/greedy/seed0.jsonl"
    ) == strip_timing(workdir / "results/pope/random/demo/unified/greedy/greedy/seed0.jsonl")
    html = (tmp_path / "reports/index.html").read_text()
    assert "POPE (CUSTOM)" in html and 'class="refused"' in html

    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and sentinel.encode() in p.read_bytes()]
    assert not leaks, f"hub token written to {leaks}"

    # an input every item reads, lost (all the contrast images of cid): its decode job fails before
    # decoding, naming them, and leaves no result file; the tables above are set aside, never
    # shown older than a missing result
    gone = [dict(questions[0], question_id=i, contrast_image=f"gone{i}.png") for i in (1, 2)]
    for split in cfg["benchmarks"]["pope"].get("splits") or ["random", "popular", "adversarial"]:
        (tmp_path / "custom" / f"gone_pope_{split}.json").write_text(
            "".join(json.dumps(q) + "\n" for q in gone)
        )
    cfg["benchmarks"]["pope_gone"] = dict(
        cfg["benchmarks"]["pope_custom"], dataset="gone", questions="custom/gone_pope_{split}.json"
    )
    cfg["methods"]["cid"] = {"method": "cid"}
    config.write_text(yaml.safe_dump(cfg))
    target = "results/pope_gone/random/demo/unified/cid/greedy/seed0.jsonl"
    out = subprocess.run(
        cmd[:-2] + [target], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env
    )
    assert out.returncode != 0
    assert (
        f"none of the 2 contrast image files the items name exists (e.g. {rel / 'gone1.png'})" in out.stderr
    ), out.stderr[-3000:]
    assert not (tmp_path / target).exists() and not list((tmp_path / "results/shards").rglob("*cid*partial*"))
    assert (
        not (tmp_path / "results/metrics.csv").exists() and (tmp_path / "results/metrics.csv.stale").exists()
    )


def test_two_decode_shards_run_on_two_devices(micro_run, tmp_path):
    """``--resources gpu=2`` with a fake 2-device list: the two concurrent shards lease different devices."""
    workdir, _ = micro_run
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    # one job per shard (label batches decode a result's shards one after another in one job)
    cfg, config = _small_config(
        tmp_path,
        device="auto",
        n_shards=2,
        gpu_lock_dir=str(tmp_path / "locks"),
        group_decode=False,
        group_labels=1,
    )
    cfg.pop("group_results", None)
    cfg["benchmarks"].pop("chair", None)
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, VCDFLOW_GPUS="0,1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    target = "results/pope/random/demo/unified/greedy/greedy/seed0.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--cores",
        "2",
        "--resources",
        "gpu=2",
        "--workflow-profile",
        "none",
        target,
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    devices, spans = [], []
    for shard in ("0-of-2", "1-of-2"):
        lines = (
            (tmp_path / f"logs/decode/pope/random/demo/unified/greedy/greedy/seed0/{shard}.log")
            .read_text()
            .splitlines()
        )
        leased = [re.search(r"gpu: leased device (\d+)", line) for line in lines]
        devices += [m.group(1) for m in leased if m]
        stamps = [
            time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            for line in lines
            if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)
        ]
        spans.append((min(stamps), max(stamps)))
    assert sorted(devices) == ["0", "1"]
    # the two shards held their leases at the same time (otherwise both could have taken device 0)
    assert spans[0][0] <= spans[1][1] and spans[1][0] <= spans[0][1]
    assert [r["item_id"] for r in read_jsonl(tmp_path / target)] == [
        r["item_id"]
        for r in read_jsonl(workdir / "results/pope/random/demo/unified/greedy/greedy/seed0.jsonl")
    ]


# Registered methods the demo config (config/config.yaml) does not decode, and why; every other
# registered method is in it and so in the all-method workflow run below.
NOT_IN_THE_DEMO = {
    "contrast": "needs a contrast image or prompt per item, which the demo world does not have "
    "(tests/test_workflow_contrast.py gives one through the workflow)",
    "cid": "needs a contrastive input per item, which the demo world does not have "
    "(tests/test_workflow_contrast.py gives one through the workflow)",
    "halc": "needs an open-vocabulary detector and BLIP weights (tests/test_workflow_halc.py uses stand-ins)",
}
DEMO = ROOT / "config" / "config.yaml"


def test_the_demo_config_decodes_every_registered_method():
    from vcdflow.decoding.methods import METHODS

    used = {entry["method"] for entry in yaml.safe_load(DEMO.read_text())["methods"].values()}
    assert used.isdisjoint(NOT_IN_THE_DEMO)
    assert used | set(NOT_IN_THE_DEMO) == set(METHODS), sorted(set(METHODS) - used - set(NOT_IN_THE_DEMO))


def test_every_demo_method_decodes_and_scores_through_the_workflow(micro_run, tmp_path):
    """Every label of the demo config (every registered method but NOT_IN_THE_DEMO, greedy and
    sampling where it defines both; PBA, a yes/no control, on POPE only) through Snakemake on the
    micro world: decode (labels batched,
    group_labels 64, with text_cd's amateur trained and VTI's directions fitted by their rules),
    score, metrics.csv and the report. Each label: every POPE and CHAIR item answered, no error
    row, its metrics in metrics.csv and its row in the report's overview."""
    workdir, _ = micro_run
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    demo = yaml.safe_load(DEMO.read_text())
    cfg = yaml.safe_load(MICRO.read_text())
    # the first 8 POPE questions (4 yes, 4 no) keep 57 labels' decoding short
    questions = read_jsonl(workdir / "resources/demo/pope/demo_pope_random.json")[:8]
    (tmp_path / "pope8_random.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
    cfg["benchmarks"] = {
        "pope": dict(cfg["benchmarks"]["pope"], splits=["random"], questions="pope8_{split}.json"),
        "chair": dict(cfg["benchmarks"]["chair"], n_images=2, max_new_tokens=6, max_new_tokens_cap=6),
    }
    cfg["methods"] = demo["methods"]
    cfg["group_labels"] = 64
    cfg["demo"]["amateur"] = {
        "text_hidden": 16,
        "text_layers": 1,
        "text_heads": 2,
        "vision_hidden": 16,
        "vision_layers": 1,
        "align_steps": 5,
        "steps": 10,
        "batch_size": 8,
    }
    cfg["vti"] = {"fit_set": "demo", "fit": {"num_demos": 8, "num_trials": 2}}
    cfg["convis"]["alpha"] = {"pope": 0.1, "chair": 1.0}
    config = tmp_path / "all.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, config=config, timeout=1500)

    from vcdflow.config import grid

    planned = list(grid(cfg))
    labels = {(g["method"], g["mode"]) for g in planned}
    assert {label for label, _ in labels} == set(demo["methods"])
    # PBA (a yes/no control) is left out of CHAIR (Method.answer_kinds); every other label runs on both
    assert {(g["method"], g["benchmark"]) for g in planned if g["method"].startswith("pba")} == {
        ("pba", "pope"),
        ("pba_sample", "pope"),
    }
    assert len(planned) == 2 * len(labels) - 2
    n_pope = len(questions)
    for g in planned:
        path = (
            tmp_path
            / "results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.jsonl".format(**g)
        )
        recs = read_jsonl(path)
        assert len(recs) == {"pope": n_pope, "chair": 2}[g["benchmark"]], path
        assert all(r["error"] is None for r in recs), (path, [r["error"] for r in recs][:3])
    assert not (tmp_path / "results/chair/all/demo/unified/pba").exists()
    df = pd.read_csv(tmp_path / "results" / "metrics.csv")
    got = set(df[["method", "mode"]].drop_duplicates().itertuples(index=False, name=None))
    assert got == labels
    want = {"pope": {"accuracy", "f1", "yes_ratio"}, "chair": {"chair_s", "chair_i"}}
    for g in planned:
        rows = df[(df.method == g["method"]) & (df["mode"] == g["mode"]) & (df.benchmark == g["benchmark"])]
        assert set(rows.metric) >= want[g["benchmark"]], g
    # batched: one decode job per batch of labels, and the decoded methods ran through their inputs
    assert len(list((tmp_path / "logs/decode_batch").glob("*.log"))) == 4  # plain, convis, amateur, vti
    assert (tmp_path / "resources/amateurs/demo").is_dir()
    html = (tmp_path / "reports/index.html").read_text()
    for label, _ in labels:
        assert f'data-glance="pope/random/demo/{label}/' in html, label


def test_answer_kinds_leave_pba_out_of_caption_splits():
    """Every benchmark declares what its items ask for; a method with answer_kinds (PBA: yes/no)
    is planned only where the split's items are of that kind (AMBER: discriminative, not generative)."""
    from vcdflow.benchmarks import BENCHMARKS
    from vcdflow.config import applies

    for bench in BENCHMARKS.values():
        for split in ("all", "generative", "discriminative", "random"):
            assert bench.answer_kind(split) in {"yes_no", "caption", "choice", "open"}, bench.kind
    cfg = {
        "models": {"m": {"family": "llava"}},
        "methods": {"pba": {"method": "pba"}, "vcd": {"method": "vcd"}},
    }
    got = {
        (b, s): (applies(cfg, "pba", "m", b, s), applies(cfg, "vcd", "m", b, s))
        for b, s in (
            ("pope", "random"),
            ("pope_gqa", "adversarial"),
            ("mme", "all"),
            ("chair", "all"),
            ("amber", "generative"),
            ("amber", "discriminative"),
            ("llavabench", "all"),
        )
    }
    assert got == {
        ("pope", "random"): (True, True),
        ("pope_gqa", "adversarial"): (True, True),
        ("mme", "all"): (True, True),
        ("chair", "all"): (False, True),
        ("amber", "generative"): (False, True),
        ("amber", "discriminative"): (True, True),
        ("llavabench", "all"): (False, True),
    }
