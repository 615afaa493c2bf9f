"""`vcdflow decode` / `score` under bad input, SIGKILL and a second writer, through
the real command line (subprocesses), plus the runner's provenance sidecar and its by-image
batch order in-process.

One small demo-architecture model and 9 POPE questions (4 images x 2 objects, in file order
im0 im1 im2 im3 im0 …, plus one question whose image is missing: an error row) serve every
test. The reference is one uninterrupted decode; every other run must equal it (``timing``
aside)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcdflow.cli import main
from vcdflow.io import read_jsonl

VCDFLOW = str(Path(sys.executable).with_name("vcdflow"))
N = 9


def strip_timing(records):
    return [{k: v for k, v in r.items() if k != "timing"} for r in records]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vcdflow.models.demo import build_demo_vlm

    root = tmp_path_factory.mktemp("reliability")
    model, processor = build_demo_vlm(seed=0)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    images = root / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(images / f"im{i}.png")
    qs = []
    for obj, label in (("cup", "yes"), ("fork", "no")):
        for i in range(4):
            qs.append(
                {
                    "question_id": len(qs),
                    "image": f"im{i}.png",
                    "text": f"Is there a {obj} in the image?",
                    "label": label,
                }
            )
    qs.append({"question_id": 8, "image": "gone.png", "text": "Is there a dog in the image?", "label": "no"})
    qfile = root / "mine_pope_random.json"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    args = [
        "decode",
        "--model",
        str(root / "model"),
        "--questions",
        str(qfile),
        "--images",
        str(images),
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--max-new-tokens",
        "3",
    ]
    ref = root / "ref" / "res.jsonl"
    assert main(args + ["--out", str(ref)]) == 0
    return {
        "root": root,
        "args": args,
        "ref": strip_timing(read_jsonl(ref)),
        "qfile": qfile,
        "images": images,
    }


def cli(*args, env=None, timeout=300):
    e = {k: v for k, v in os.environ.items() if k != "VCDFLOW_DEBUG"}
    e.update(env or {})
    return subprocess.run([VCDFLOW, *args], capture_output=True, text=True, timeout=timeout, env=e)


def swap(args, flag, value):
    """``args`` with ``flag``'s value replaced (or the flag added)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def kill_after_first_records(args, partial: Path, min_records=1):
    """Start a decode, SIGKILL it once its partial file holds ``min_records`` records."""
    proc = subprocess.Popen([VCDFLOW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= 1 + min_records:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc
        if proc.poll() is not None:
            pytest.fail(
                f"decode ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read()}"
            )
        time.sleep(0.005)
    proc.kill()
    pytest.fail("decode never checkpointed")


def assert_one_line(res, rc, line):
    assert res.returncode == rc, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr == line + "\n"


def test_bad_input_keeps_the_checkpoint_then_sigkill_resume_equals_an_uninterrupted_run(
    world, tmp_path, capsys
):
    root, base = world["root"], world["args"]
    out = tmp_path / "res.jsonl"
    partial = Path(str(out) + ".partial")
    lock = Path(str(out) + ".lock")
    args = base + ["--out", str(out)]
    killed = kill_after_first_records(args, partial)
    assert not out.exists()
    k = partial.read_text().count("\n") - 1  # complete records (a torn line has no newline)
    assert 1 <= k < N
    assert lock.read_text() == f"pid {killed.pid} on {socket.gethostname()}\n"  # a dead holder's lock
    # a killed final write leaves temp files beside the output (host-pid names, and older random ones)
    from vcdflow.io import _HOST

    litter = [tmp_path / f".res.jsonl.{_HOST}-{killed.pid}-abc123.tmp", tmp_path / ".res.jsonl.q1w2e3r4.tmp"]
    for p in litter:
        p.write_text('{"item_id": "half')
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notjson_pope_random.json").write_text("question_id,image,text,label\n")
    lines = world["qfile"].read_text().splitlines()
    rec = json.loads(lines[1])
    del rec["image"]
    (bad / "noimage_pope_random.json").write_text("\n".join([lines[0], json.dumps(rec)] + lines[2:]) + "\n")
    cut_cfg = bad / "cut_config"
    shutil.copytree(root / "model", cut_cfg)
    (cut_cfg / "config.json").write_text(
        '{\n  "architectures": [\n    "LlavaForConditionalGeneration"\n  ],\n  "dtype": "flo'
    )
    cut_w = bad / "cut_weights"
    shutil.copytree(root / "model", cut_w)
    weights = (cut_w / "model.safetensors").read_bytes()
    (cut_w / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    snapshot = partial.read_bytes()
    listing = sorted(p.name for p in tmp_path.iterdir())
    expect = "expected a POPE question file (one JSON object per line with question_id, image, text, label) — fix the file and rerun"
    model_hint = "expected a save_pretrained folder (config.json + weights) — check --model (models.<name>.path in a workflow config)"
    cases = [
        (
            swap(args, "--questions", str(bad / "notjson_pope_random.json")),
            1,
            f"{bad / 'notjson_pope_random.json'}:1: not valid JSON (Expecting value); {expect}",
        ),
        (
            swap(args, "--questions", str(bad / "noimage_pope_random.json")),
            1,
            f"{bad / 'noimage_pope_random.json'} line 2: missing key 'image'; {expect}",
        ),
        (
            swap(args, "--images", str(root / "imgs")),
            1,
            f"images folder {root / 'imgs'} does not exist; check --images",
        ),
        (
            swap(args, "--model", str(root / "modl")),
            1,  # a typo in --model
            f"model directory {root / 'modl'} does not exist; {model_hint}",
        ),
        (
            swap(args, "--model", str(cut_cfg)),
            1,
            f"{cut_cfg / 'config.json'}: not valid JSON (Unterminated string starting at at line 5 column 12; cut "
            f"short?); expected the model's JSON config — restore it from the original download or save_pretrained",
        ),
        (
            swap(args, "--model", str(cut_w)),
            1,
            f"{cut_w / 'model.safetensors'}: corrupt weights file (the header promises {len(weights)} bytes, the "
            f"file has {len(weights) // 2}; truncated?); re-download the model or re-save it with save_pretrained",
        ),
        (
            args + ["--method", "vcd", "--params", '{"alpha": "1"}'],
            2,
            "--params: parameter 'alpha' of method 'vcd' must be number, got '1' (str)",
        ),
        (
            args + ["--method", "vcd", "--params", '{"alpha": "abc"}'],
            2,
            "--params: parameter 'alpha' of method 'vcd' must be number, got 'abc' (str)",
        ),
    ]
    for case_args, rc, message in cases:
        res = cli(*case_args)
        assert_one_line(res, rc, f"vcdflow decode: error: {message}")
        assert partial.read_bytes() == snapshot, case_args
        assert sorted(p.name for p in tmp_path.iterdir()) == listing, case_args

    # VCDFLOW_DEBUG=1 (and --debug, in-process below): the same line after the traceback
    res = cli(*swap(args, "--model", str(root / "modl")), env={"VCDFLOW_DEBUG": "1"})
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.endswith(
        f"vcdflow decode: error: model directory {root / 'modl'} does not exist; {model_hint}\n"
    )
    capsys.readouterr()
    assert main(swap(args, "--model", str(root / "modl")) + ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.endswith(
        f"vcdflow decode: error: model directory {root / 'modl'} does not exist; {model_hint}\n"
    )
    assert partial.read_bytes() == snapshot

    # a changed result-deciding option keeps the partial file as .stale-<hash> and says how to restore it
    old_hash = json.loads(snapshot.split(b"\n", 1)[0])["config_hash"]
    res = cli(*swap(args, "--max-new-tokens", "1"))
    assert res.returncode == 0, res.stderr
    stale = Path(f"{partial}.stale-{old_hash}")
    assert stale.read_bytes() == snapshot and not partial.exists()
    new_hash = json.loads((tmp_path / "res.meta.json").read_text())["config_hash"]
    assert (
        f"vcdflow: warning: kept {partial} as {stale}: it was written under config {old_hash}, the current "
        f"config is {new_hash}; starting fresh. To resume it instead, rerun with the options it was written "
        f"with after: mv {stale} {partial}\n"
    ) in res.stderr
    assert not any(p.exists() for p in litter)  # the rerun removed the killed write's temp files
    assert not lock.exists()

    # restore as told, rerun the original command: resumes at K, equals the uninterrupted run
    os.replace(stale, partial)
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"vcdflow: resuming {out}: {k} of {N} items already decoded\n" in res.stderr
    assert (
        f"vcdflow: warning: {out}: 1 of {N} items are error rows (pope/random/8); their `error` field says "
        f"why. To redo them, fix the inputs, delete {out} and rerun\n"
    ) in res.stderr
    assert (
        f"vcdflow: wrote {out}: {N} records ({N - k} decoded now, {k} resumed), 1 error rows; provenance in "
        f"{tmp_path / 'res.meta.json'}\n" in res.stderr
    )
    assert res.stdout == f"{out}\n" and "Traceback" not in res.stderr
    assert strip_timing(read_jsonl(out)) == world["ref"]
    meta = json.loads((tmp_path / "res.meta.json").read_text())
    assert (meta["n_resumed"], meta["n_decoded"], meta["n_errors"]) == (k, N - k, 1)
    assert not partial.exists() and not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "res.jsonl", "res.meta.json"]


def test_second_writer_fails_at_once_and_the_first_finishes(world, tmp_path):
    out = tmp_path / "res.jsonl"
    lock = Path(str(out) + ".lock")
    args = world["args"] + ["--out", str(out)]
    first = subprocess.Popen([VCDFLOW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holder = f"pid {first.pid} on {socket.gethostname()}"
        deadline = time.monotonic() + 300
        while not (lock.exists() and lock.read_text().strip() == holder):
            assert first.poll() is None and time.monotonic() < deadline, "first decode never took the lock"
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # hold it there, lock taken, while the second one starts
        try:
            t0 = time.monotonic()
            second = cli(*args)
            elapsed = time.monotonic() - t0
        finally:
            first.send_signal(signal.SIGCONT)
        assert_one_line(
            second,
            1,
            f"vcdflow decode: error: {out} is being written by another process ({holder}; "
            f"lock {lock}); wait for it to finish or stop it — two writers would "
            f"interleave one output",
        )
        assert elapsed < 120
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert strip_timing(read_jsonl(out)) == world["ref"]
    assert not lock.exists()


def test_score_names_a_torn_result_file(world, tmp_path):
    good = tmp_path / "r.jsonl"
    lines = [json.dumps(r) for r in world["ref"]]
    good.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    res = cli("score", "--results", str(good), "--metrics", str(tmp_path / "m.csv"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"vcdflow score: error: {good}:{N}: not valid JSON (")
    assert res.stderr.endswith(
        "); expected one JSON record per line as `vcdflow decode` writes them — the file is "
        "cut or edited (decode writes it atomically): write it again (rerun `vcdflow decode` "
        "with the same options, or delete it and rerun the workflow)\n"
    )
    assert res.stderr.count("\n") == 1 and not (tmp_path / "m.csv").exists()
