"""The whole workflow on the micro demo config, in a temp directory, via ``python -m snakemake``.

One run builds the demo world, trains a (micro) demo LLaVA, decodes POPE and CHAIR with
greedy/sample/VCD, scores and renders the report. Further tests reuse that run: rerun is a
no-op, a second run from scratch is byte-identical (timing aside), a killed decode shard
resumes without losing or duplicating items.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vcdflow.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "configs" / "micro.yaml"
pytestmark = pytest.mark.slow


def snakemake(workdir, *args, config=MICRO, timeout=900, check=True):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(config),
           "--cores", "2", "--workflow-profile", "none", "--rerun-incomplete", *args]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
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
    assert list(df.columns) == ["benchmark", "split", "model", "method", "seed", "metric", "value"]
    n_runs = (len(cfg["benchmarks"]["pope"]["splits"]) + 1) * len(cfg["methods"]) * len(cfg["seeds"])
    assert len(df.groupby(["benchmark", "split", "model", "method", "seed"])) == n_runs
    pope = df[(df.benchmark == "pope")]
    assert set(pope.metric) >= {"accuracy", "precision", "recall", "f1", "yes_ratio", "n", "n_errors"}
    chair = df[(df.benchmark == "chair")]
    assert set(chair.metric) >= {"chair_s", "chair_i", "recall", "length"}
    # every POPE question of the split is answered once, in file order
    questions = read_jsonl(workdir / "resources/demo/pope/demo_pope_random.json")
    recs = read_jsonl(workdir / "results/pope/random/demo/vcd/seed0.jsonl")
    assert [r["question_id"] for r in recs] == [q["question_id"] for q in questions]
    assert all(set(r) == {"item_id", "image", "image_id", "question_id", "prompt", "answer", "label", "seed",
                          "error", "meta", "timing"} for r in recs)
    # accuracy in metrics.csv is what the official parser gives on the answers
    n_ok = sum((("no" if {"No", "not", "no"} & set(r["answer"].split(".")[0].replace(",", "").split(" ")) else "yes")
                == r["label"]) for r in recs)
    acc = pope[(pope.split == "random") & (pope.method == "vcd") & (pope.metric == "accuracy")].value.item()
    assert acc == pytest.approx(100 * n_ok / len(recs))
    html = (workdir / "reports" / "index.html").read_text()
    assert "<html" in html and "demo" in html.lower()
    assert not list(workdir.glob("results/**/*.partial"))


def test_rerun_is_a_no_op(micro_run):
    workdir, _ = micro_run
    out = snakemake(workdir, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_second_run_is_byte_identical(micro_run, tmp_path):
    workdir, _ = micro_run
    snakemake(tmp_path)
    for path in sorted((workdir / "results").rglob("seed*.jsonl")):
        other = tmp_path / path.relative_to(workdir)
        if path.name.endswith(".scored.jsonl"):
            assert path.read_bytes() == other.read_bytes(), path
        else:
            assert strip_timing(path) == strip_timing(other), path
    assert (workdir / "results/metrics.csv").read_bytes() == (tmp_path / "results/metrics.csv").read_bytes()


def test_kill_during_decode_then_resume(micro_run, tmp_path):
    """SIGKILL a running decode job mid-shard, rerun: nothing lost or duplicated, same output."""
    workdir, _ = micro_run
    shutil.copytree(workdir / "resources", tmp_path / "resources")
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["batch_size"] = 2
    cfg["benchmarks"] = {"pope": dict(cfg["benchmarks"]["pope"], splits=["random"])}
    cfg["methods"] = {"vcd": cfg["methods"]["vcd"]}
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = "results/pope/random/demo/vcd/seed0.jsonl"
    partial = tmp_path / "results/shards/pope/random/demo/vcd/seed0/0-of-1.jsonl.partial"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(config),
           "--cores", "1", "--workflow-profile", "none", target]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
    log = next((tmp_path / "logs/decode/pope/random/demo/vcd/seed0").glob("*.log")).read_text()
    assert "resuming" in log and "already decoded" in log
    recs = strip_timing(tmp_path / target)
    assert [r["item_id"] for r in recs] == [r["item_id"] for r in strip_timing(workdir / target)]
    assert recs == strip_timing(workdir / target)
