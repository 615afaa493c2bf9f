"""run_shard in-process: the provenance sidecar, batches grouped by image with the
file order kept, stale partial files kept, the output lock, leftover temp files, and
typed parameter errors in the library — with a stand-in generate function (no model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from PIL import Image

from vcdflow import errors
from vcdflow.envlock import RESULT_PACKAGES
from vcdflow.checkpoint import Checkpoint, output_lock
from vcdflow.decoding import Output
from vcdflow.io import _HOST, atomic_write_text, file_digest, read_jsonl, remove_leftover_tmp
from vcdflow.runner import result_hash, run_shard, sidecar_path

SIDECAR_KEYS = {
    "output",
    "config_hash",
    "result_sha256",
    "run",
    "protocol",
    "protocol_name",
    "shard",
    "n_shards",
    "n_items",
    "n_decoded",
    "n_resumed",
    "n_errors",
    "error_items",
    "device",
    "cpu",
    "gpu",
    "hardware",
    "peak_mem_mb",
    "peak_mem_kind",
    "wall_seconds",
    "versions",
    "environment_lock",
    "model_source",
    "git_commit",
    "git_dirty",
    "finished_utc",
}


def make_items(tmp_path, images=("a", "b", "c", "a", "b", "c", "a", "d"), missing=("d",)):
    items = []
    for i, name in enumerate(images):
        path = tmp_path / f"{name}.png"
        if name not in missing and not path.exists():
            Image.new("RGB", (8, 8), (len(name) * 40, 0, 0)).save(path)
        items.append(
            {
                "item_id": f"pope/random/{i}",
                "image": path.name,
                "image_path": str(path),
                "image_id": name,
                "question_id": i,
                "question": f"Is there a cup {i}?",
                "label": "yes" if i % 2 else "no",
            }
        )
    return items


def make_run(batch_size=2, **extra):
    return {
        "benchmark": {"name": "pope", "split": "random", "prompt": "{question}", "max_new_tokens": 2},
        "model": {
            "name": "m",
            "path": "unused",
            "dtype": "float32",
            "batch_size": batch_size,
            "prompt_suffix": {},
        },
        "method": {
            "label": "greedy",
            "method": "greedy",
            "mode": "greedy",
            "do_sample": False,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": None,
            "params": {},
            "prompt_suffix": {},
        },
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "gpu_lock_dir": "x",
        **extra,
    }


class FakeGenerate:
    def __init__(self, fail_after_calls=None):
        self.calls, self.fail_after_calls = [], fail_after_calls

    def __call__(self, vlm, requests, **kw):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append([r.item_id for r in requests])
        return [Output(item_id=r.item_id, text=f"ans {r.item_id}", token_ids=[1]) for r in requests]


def test_batches_group_questions_of_one_image_and_the_file_keeps_item_order(tmp_path):
    items = make_items(tmp_path)
    gen = FakeGenerate()
    out = run_shard(
        make_run(batch_size=2),
        tmp_path / "r.jsonl",
        items=items,
        vlm=object(),
        generate_fn=gen,
        progress=False,
    )
    # images a, b, c, d in first-appearance order; a's three questions, then b's, c's (d is missing:
    # an error row that never reaches generate)
    by_image = [
        "pope/random/0",
        "pope/random/3",
        "pope/random/6",
        "pope/random/1",
        "pope/random/4",
        "pope/random/2",
        "pope/random/5",
    ]
    assert sum(gen.calls, []) == by_image
    assert gen.calls[:2] == [["pope/random/0", "pope/random/3"], ["pope/random/6", "pope/random/1"]]
    assert [r["item_id"] for r in read_jsonl(out)] == [it["item_id"] for it in items]
    # a resume continues the same order: the batches are those of the uninterrupted run
    out2 = tmp_path / "r2.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_shard(
            make_run(batch_size=2),
            out2,
            items=items,
            vlm=object(),
            generate_fn=FakeGenerate(1),
            progress=False,
        )
    rest = FakeGenerate()
    run_shard(make_run(batch_size=2), out2, items=items, vlm=object(), generate_fn=rest, progress=False)
    assert rest.calls == gen.calls[1:]
    assert out2.read_bytes() != b"" and strip(read_jsonl(out2)) == strip(read_jsonl(out))


def strip(recs):
    return [{k: v for k, v in r.items() if k != "timing"} for r in recs]


def test_sidecar_records_provenance_and_resume_counts(tmp_path):
    items = make_items(tmp_path)
    run = make_run(batch_size=3, protocol={"protocol": "vcd_paper", "system": None})
    out = tmp_path / "0-of-1.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_shard(run, out, items=items, vlm=object(), generate_fn=FakeGenerate(1), progress=False)
    assert not sidecar_path(out).exists()
    run_shard(run, out, items=items, vlm=object(), generate_fn=FakeGenerate(), progress=False)
    side = tmp_path / "0-of-1.meta.json"
    assert (
        sidecar_path(out) == side and sidecar_path(tmp_path / "seed0.jsonl") == tmp_path / "seed0.meta.json"
    )
    meta = json.loads(side.read_text())
    assert set(meta) == SIDECAR_KEYS
    # the first batch (3 items, d's error row is not among them) was checkpointed before the kill
    assert (meta["n_items"], meta["n_resumed"], meta["n_decoded"], meta["n_errors"]) == (8, 3, 5, 1)
    assert meta["error_items"] == ["pope/random/7"]
    assert meta["result_sha256"] == file_digest(out, "sha256")
    assert meta["config_hash"] == result_hash(run) and meta["protocol_name"] == "vcd_paper"
    assert meta["protocol"] == {"protocol": "vcd_paper", "system": None}
    assert meta["output"] == "0-of-1.jsonl" and (meta["shard"], meta["n_shards"]) == (0, 1)
    assert meta["device"] == "cpu" and meta["gpu"] is None and meta["hardware"] == f"CPU {meta['cpu']}"
    assert meta["peak_mem_kind"] == "cpu_max_rss" and meta["peak_mem_mb"] > 10
    assert set(meta["versions"]) == {"python", *RESULT_PACKAGES}
    assert meta["versions"]["transformers"] == metadata.version("transformers")
    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
    assert meta["environment_lock"] == {
        "lock_sha256": file_digest(lock, "sha256"),
        "matches": True,
        "differences": [],
    }
    assert meta["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    assert meta["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert meta["wall_seconds"] >= 0 and meta["run"]["seed"] == 0


def test_sidecar_without_git(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git checkout: no commit, no failure
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    items = make_items(tmp_path, images=("a",), missing=())
    out = run_shard(
        make_run(),
        tmp_path / "seed0.jsonl",
        items=items,
        vlm=object(),
        generate_fn=FakeGenerate(),
        progress=False,
    )
    meta = json.loads((tmp_path / "seed0.meta.json").read_text())
    assert meta["git_commit"] is None and meta["git_dirty"] is None and meta["n_errors"] == 0
    assert meta["protocol"] is None and meta["protocol_name"] is None
    assert out.exists()


def test_partial_of_another_config_is_kept_as_stale(tmp_path, caplog):
    p = tmp_path / "x.jsonl.partial"
    body = json.dumps({"config_hash": "old"}) + "\n" + json.dumps({"item_id": "a"}) + "\n"
    p.write_text(body)
    assert Checkpoint(p, "new").peek() == ("old", {"a"}) and p.read_text() == body  # peek changes nothing
    assert Checkpoint(p, "new").load() == {}
    assert not p.exists() and (tmp_path / "x.jsonl.partial.stale-old").read_text() == body
    assert "mv " + str(tmp_path / "x.jsonl.partial.stale-old") + " " + str(p) in caplog.text
    p.write_text(body)  # the same stale hash again: a second name, nothing overwritten
    Checkpoint(p, "new").load()
    assert (tmp_path / "x.jsonl.partial.stale-old-2").read_text() == body


def test_output_lock_names_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    out = tmp_path / "r.jsonl"
    lock = tmp_path / "r.jsonl.lock"
    with output_lock(out):
        assert lock.read_text() == f"pid {os.getpid()} on {__import__('socket').gethostname()}\n"
        # another process trying the same lock fails at once, naming us
        code = (
            "import sys; from vcdflow.checkpoint import output_lock; from vcdflow import errors\n"
            f"try:\n    with output_lock({str(out)!r}): pass\n"
            "except errors.OutputLocked as e:\n    print(e); sys.exit(3)\n"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert res.returncode == 3 and f"pid {os.getpid()} on" in res.stdout
    assert not lock.exists()
    lock.write_text("pid 999999999 on elsewhere\n")  # left by a killed process: no flock held
    with output_lock(out):
        assert str(os.getpid()) in lock.read_text()


def test_leftover_temp_files_of_dead_writers_are_removed(tmp_path):
    dest = tmp_path / "m.csv"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f".m.csv.{_HOST}-{dead.pid}-abc.tmp"
    alive = tmp_path / f".m.csv.{_HOST}-{os.getppid()}-def.tmp"
    other_host = tmp_path / ".m.csv.otherhost-1-ghi.tmp"
    old_style = tmp_path / ".m.csv.k2j3h4g5.tmp"
    other_file = tmp_path / f".m.csv.partial.{_HOST}-{dead.pid}-jkl.tmp"
    for p in (gone, alive, other_host, old_style, other_file):
        p.write_text("half")
    atomic_write_text(dest, "x\n")  # an ordinary atomic write cleans what dead local writers left
    assert not gone.exists() and alive.exists() and other_host.exists() and old_style.exists()
    assert other_file.exists() and dest.read_text() == "x\n"
    removed = remove_leftover_tmp(dest, any_writer=True)  # under the output lock: every writer's
    assert sorted(removed) == sorted([alive, other_host, old_style]) and other_file.exists()


def test_library_parameter_errors_name_the_parameter_and_type(tmp_path):
    from vcdflow.validate import check_params

    with pytest.raises(errors.UsageError) as e:
        check_params("vcd", {"alpha": "abc"}, where="method 'vcd'")
    assert str(e.value) == "method 'vcd': parameter 'alpha' of method 'vcd' must be number, got 'abc' (str)"
    run = make_run()
    run["method"].update(method="vcd", label="vcd", params={"noise_step": "500"})
    out = tmp_path / "r.jsonl"
    ck = Checkpoint(str(out) + ".partial", "whatever")
    ck.open()
    ck.close()
    before = (tmp_path / "r.jsonl.partial").read_bytes()
    with pytest.raises(
        errors.UsageError, match=r"parameter 'noise_step' of method 'vcd' must be int, got '500'"
    ):
        run_shard(
            run, out, items=make_items(tmp_path, images=("a",), missing=()), vlm=object(), progress=False
        )
    assert (tmp_path / "r.jsonl.partial").read_bytes() == before  # checked before the checkpoint
