"""Pre-placed benchmark files are checked against their pinned checksums before anything decodes
(vcdflow.data.verify): the real POPE files of ../shared/data, a truncated copy, AMBER files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vcdflow.data import verify

ROOT = Path(__file__).resolve().parents[1]
SHARED_POPE = ROOT.parent / "shared" / "data" / "pope" / "coco"
HEAD_RANDOM_MD5 = (
    "dc9b6c41ad832c48da758cfa85b37d2c"  # AoiDragon/POPE@109985c output/coco/coco_pope_random.json
)


def _config(questions: str, **pope) -> dict:
    return {
        "world": "real",
        "offline": True,
        "seeds": [0],
        "device": "cpu",
        "benchmarks": {
            "pope": {
                "dataset": "coco",
                "version": "head",
                "splits": ["random"],
                "questions": questions,
                "images": "images",
                **pope,
            }
        },
        "models": {"m": {"path": "m", "family": "llava"}},
        "methods": {"greedy": {"method": "greedy"}},
        "protocol": "unified",
    }


def _truncated(tmp_path: Path, lines: int = 18) -> Path:
    path = tmp_path / "pope" / "random.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(SHARED_POPE / "coco_pope_random.json", "rb") as fh:
        path.write_bytes(b"".join(fh.readline() for _ in range(lines)))
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VCDFLOW_CACHE", str(tmp_path / "cache"))


def test_the_pinned_pope_file_passes_and_its_digest_is_cached(tmp_path, monkeypatch):
    real = tmp_path / "pope" / "random.json"
    real.parent.mkdir()
    shutil.copy(SHARED_POPE / "coco_pope_random.json", real)
    cfg = _config(str(tmp_path / "pope" / "{split}.json"))
    assert [p.path for p in verify.check_pinned(cfg)] == [str(real)]
    # a second check reads the digest from the cache (path, size, mtime), not the file
    monkeypatch.setattr("vcdflow.io.file_digest", lambda *a, **k: pytest.fail("file re-hashed"))
    assert len(verify.check_pinned(cfg)) == 1


def test_a_truncated_pope_file_is_named_with_both_checksums_and_its_version(tmp_path):
    bad = _truncated(tmp_path)
    have = hashlib.md5(bad.read_bytes()).hexdigest()
    with pytest.raises(verify.PinnedFileError) as err:
        verify.check_pinned(_config(str(tmp_path / "pope" / "{split}.json")))
    line = str(err.value).splitlines()[1]
    assert line == (
        f"{bad}: md5 {have}, but POPE coco random version head (AoiDragon/POPE@109985c) has md5 "
        f"{HEAD_RANDOM_MD5} (config benchmarks.pope.version); place the pinned file, or give your own "
        f"file a version and checksums"
    )


def test_own_files_declare_their_checksums_and_cannot_relabel_a_pinned_version(tmp_path):
    sub = _truncated(tmp_path)
    md5 = hashlib.md5(sub.read_bytes()).hexdigest()
    questions = str(tmp_path / "pope" / "{split}.json")
    with pytest.raises(
        ValueError,
        match=r"config benchmarks.pope.version: 'subset18' is not a pinned version, so "
        r"each of its files needs its checksum in benchmarks.pope.checksums",
    ):
        verify.pinned_files(_config(questions, version="subset18"))
    ok = verify.check_pinned(_config(questions, version="subset18", checksums={str(sub): f"md5:{md5}"}))
    assert ok[0].claim == "pope version subset18 (config benchmarks.pope.checksums)"
    with pytest.raises(
        ValueError, match=r"benchmarks.pope.checksums: .* claims POPE coco random version head"
    ):
        verify.pinned_files(_config(questions, checksums={str(sub): f"md5:{md5}"}))
    with pytest.raises(verify.PinnedFileError, match=r"md5 [0-9a-f]{32}, but pope version subset18"):
        verify.check_pinned(_config(questions, version="subset18", checksums={str(sub): "md5:" + "0" * 32}))


def test_amber_files_claim_the_pinned_commit(tmp_path):
    root = tmp_path / "amber"
    (root / "data" / "query").mkdir(parents=True)
    (root / "data" / "annotations.json").write_text("[]")
    cfg = {
        "world": "real",
        "benchmarks": {"amber": {"root": str(root), "tasks": ["generative"]}},
        "models": {},
        "methods": {},
        "seeds": [0],
    }
    paths = [p.path for p in verify.pinned_files(cfg)]
    assert paths == [
        f"{root}/data/{n}"
        for n in ("annotations.json", "relation.json", "safe_words.txt", "query/query_generative.json")
    ]
    with pytest.raises(
        verify.PinnedFileError,
        match=r"annotations.json: sha256 [0-9a-f]{64}, but AMBER "
        r"annotations.json version 534babf \(junyangwang0410/AMBER@534babf\) "
        r"has sha256 db22a436",
    ):
        verify.check_pinned(cfg)
    assert verify.pinned_files({**cfg, "world": "demo"}) == []  # the demo world builds its own files


def test_an_offline_run_with_a_wrong_file_stops_before_any_job(tmp_path):
    """The workflow: the onstart check fails the run before the first job, in one line per file."""
    work = tmp_path / "w"
    bad = _truncated(work / "resources")
    (work / "images").mkdir()
    model = work / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = _config("resources/pope/{split}.json")
    cfg["models"]["m"]["path"] = str(model)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--configfile",
            str(path),
            "--directory",
            str(work),
            "--cores",
            "1",
            "--workflow-profile",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert (
        f"resources/pope/random.json: md5 {hashlib.md5(bad.read_bytes()).hexdigest()}, but POPE coco random "
        f"version head (AoiDragon/POPE@109985c) has md5 {HEAD_RANDOM_MD5}" in text
    ), text[-3000:]
    assert not (work / "results").exists() and not (work / "logs").exists(), text[-2000:]


def test_a_version_path_checks_every_pinned_version_present(tmp_path):
    """questions with {version} (a paper protocol's own POPE files apply under it): the
    LLaVA-1.5/OPERA file placed at .../e3e3926/random.json claims e3e3926, whatever the entry's version."""
    good = tmp_path / "pope" / "e3e3926" / "random.json"
    good.parent.mkdir(parents=True)
    shutil.copy(ROOT.parent / "shared" / "data" / "pope" / "coco-e3e3926" / "coco_pope_random.json", good)
    cfg = _config(str(tmp_path / "pope" / "{version}" / "{split}.json"))
    assert [(p.path, p.checksum) for p in verify.check_pinned(cfg)] == [
        (str(good), "md5:b635b20061b1262cba65ed5bef7660a2")
    ]
    shutil.copy(SHARED_POPE / "coco_pope_random.json", good)  # the head file under the e3e3926 path
    with pytest.raises(
        verify.PinnedFileError,
        match=r"e3e3926/random.json: md5 dc9b6c41ad832c48da758cfa85b37d2c, "
        r"but POPE coco random version e3e3926",
    ):
        verify.check_pinned(cfg)
