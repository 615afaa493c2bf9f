"""The real path end to end: ``world: real``, ``offline: true``, a tiny llava-hf model folder and
pre-placed files in the official formats, through the pinned-file check, decode, score,
``metrics.csv`` and the report, under ``unified`` and ``paper``.

Inputs (``tests/fixtures/real``; each file's md5 is declared in the config's ``checksums``, under
a ``version`` of its own, so the pinned-file check runs on them as on the registry's files):

* POPE: the first 12 lines of the real COCO random (JSON lines) and adversarial (JSON lines with
  CRLF) question files of AoiDragon/POPE@109985c, and the first 6 questions of the A-OKVQA file
  (a pretty-printed JSON array) — cut from ``../shared/data/pope``, bytes otherwise unchanged;
* CHAIR: COCO-format ``instances``/``captions`` JSON for the same COCO-named images, the real
  ``synonyms.txt`` (LisaAnne/Hallucination, md5 fdf03d16…) and NLTK data packages in NLTK's own
  on-disk format (:func:`vcdflow.metrics.nltk_mini.build_mini_nltk_data`);
* MME: a parquet shard in the ``lmms-lab/MME`` layout (rule prepare_mme writes the release);
* AMBER: ``data/annotations.json``, ``relation.json``, ``safe_words.txt``, ``query/`` and
  ``image/`` in the AMBER repository's layout.

The test fails if a loader, a rule or the pre-placed-file check breaks on these formats: POPE's
accuracies are recomputed here from the answer files with the official POPE rule, and a
truncated question file stops a second run before anything decodes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tiny_models import build_tiny_llava
from vcdflow.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "real"
pytestmark = pytest.mark.slow

#: fixture -> md5 (recorded when the files were cut from ../shared/data/pope)
FIXTURE_MD5 = {
    "pope/coco_pope_random_first12.json": "fbbee501e260b10f6a190ce6d265d602",
    "pope/coco_pope_adversarial_first12.json": "9a80b36593eace2496ffe780eb7a195e",
    "pope/aokvqa_pope_seem_random_first6.json": "c79508503b75583e08ba8fca3d84cf88",
    "chair/synonyms.txt": "fdf03d16beb2507696d1b881c958904d",
}
COCO = "data/coco/val2014"


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def _coco_images(work: Path) -> list[str]:
    names = sorted(
        {
            r["image"]
            for f in ("coco_pope_random_first12.json", "coco_pope_adversarial_first12.json")
            for r in read_jsonl(FIX / "pope" / f)
        }
        | {r["image"] for r in json.loads((FIX / "pope" / "aokvqa_pope_seem_random_first6.json").read_text())}
    )
    for i, name in enumerate(names):
        _jpeg(work / COCO / name, i)
    return names


def _chair(work: Path, names: list[str]) -> None:
    """COCO-format instances and captions (the keys of instances_val2014.json/captions_val2014.json)."""
    cats = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 35, "name": "skis", "supercategory": "sports"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
    ]
    images = [
        {"id": int(n.split("_")[-1].split(".")[0]), "file_name": n, "height": 40, "width": 48} for n in names
    ]
    anns = [
        {
            "id": i + 1,
            "image_id": im["id"],
            "category_id": 1 + 34 * (i % 2),
            "bbox": [1, 1, 9, 9],
            "area": 81.0,
            "iscrowd": 0,
        }
        for i, im in enumerate(images)
    ]
    caps = [
        {"id": 100 + i, "image_id": im["id"], "caption": "A person on skis in the snow."}
        for i, im in enumerate(images)
    ]
    ann = work / "data" / "coco" / "annotations"
    ann.mkdir(parents=True)
    (ann / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    (ann / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": caps}))
    from vcdflow.metrics.nltk_mini import build_mini_nltk_data

    words = {
        "person": ("NN", "person"),
        "skis": ("NNS", "ski"),
        "car": ("NN", "car"),
        "dog": ("NN", "dog"),
        "cup": ("NN", "cup"),
        "table": ("NN", "table"),
        "chair": ("NN", "chair"),
        "tree": ("NN", "tree"),
    }
    build_mini_nltk_data(work / "data" / "nltk_data", words)


def _mme(work: Path) -> None:
    """One parquet shard in the lmms-lab/MME layout: two questions per image, HF image structs."""
    rows = []
    for k, (sub, q) in enumerate(
        [
            ("existence", "Is there a dog in this image?"),
            ("existence", "Is there a cup in this image?"),
            ("count", "Are there two cups in this image?"),
        ]
    ):
        qid = f"{sub}/{k:012d}.png"
        img = {"bytes": _png_bytes(100 + k), "path": f"{k:012d}.png"}
        for answer, suffix in (("Yes", ""), ("No", " not")):
            rows.append(
                {
                    "question_id": qid,
                    "image": img,
                    "question": f"{q}{suffix} Please answer yes or no.",
                    "answer": answer,
                    "category": sub,
                }
            )
    out = work / "resources" / "mme" / "parquet" / "data"
    out.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(out / "test-00000-of-00001.parquet")


def _amber(work: Path) -> dict:
    """AMBER's data/ and image/ layout (junyangwang0410/AMBER), one query of each kind."""
    root = work / "data" / "amber"
    (root / "data" / "query").mkdir(parents=True)
    anns = [
        {"id": 1, "type": "generative", "truth": ["person", "ski"], "hallu": ["car"]},
        {"id": 2, "type": "generative", "truth": ["dog"], "hallu": ["cup"]},
        {"id": 3, "type": "discriminative-hallucination", "truth": "yes"},
        {"id": 4, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 5, "type": "discriminative-attribute-state", "truth": "no"},
        {"id": 6, "type": "discriminative-relation", "truth": "yes"},
    ]
    queries = {
        "generative": [
            {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
            {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
        ],
        "discriminative": [
            {"id": 3, "image": "AMBER_1.jpg", "query": "Is there a person in this image?"},
            {"id": 4, "image": "AMBER_1.jpg", "query": "Is there a car in this image?"},
            {"id": 5, "image": "AMBER_2.jpg", "query": "Is the dog running in this image?"},
            {"id": 6, "image": "AMBER_2.jpg", "query": "Is the dog on the grass?"},
        ],
    }
    (root / "data" / "annotations.json").write_text(json.dumps(anns))
    (root / "data" / "relation.json").write_text(
        json.dumps({"person": ["man"], "ski": [], "car": [], "dog": ["puppy"], "cup": []})
    )
    (root / "data" / "safe_words.txt").write_text("image\nphoto\n")
    for task, qs in queries.items():
        (root / "data" / "query" / f"query_{task}.json").write_text(json.dumps(qs))
    for i in (1, 2):
        _jpeg(root / "image" / f"AMBER_{i}.jpg", 200 + i)
    files = [
        "annotations.json",
        "relation.json",
        "safe_words.txt",
        "query/query_generative.json",
        "query/query_discriminative.json",
    ]
    return {
        f"data/amber/data/{f}": "md5:" + hashlib.md5((root / "data" / f).read_bytes()).hexdigest()
        for f in files
    }


def _config(work: Path) -> dict:
    pope_dir = work / "data" / "pope"
    pope_dir.mkdir(parents=True)
    for name in FIXTURE_MD5:
        if name.startswith("pope/"):
            shutil.copy(FIX / name, pope_dir / Path(name).name)
    (work / "data" / "chair").mkdir(parents=True)
    shutil.copy(FIX / "chair" / "synonyms.txt", work / "data" / "chair" / "synonyms.txt")
    names = _coco_images(work)
    _chair(work, names)
    _mme(work)
    amber_sums = _amber(work)
    build_tiny_llava(work / "models" / "tiny-llava")
    md5 = {f"data/{k}": f"md5:{v}" for k, v in FIXTURE_MD5.items()}
    pope = {
        "prompt": "{question} Please answer this question with one word.",
        "max_new_tokens": 3,
        "max_new_tokens_cap": 3,
        "images": COCO,
    }
    return {
        "world": "real",
        "offline": True,
        "seeds": [0],
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 4,
        "threads": 1,
        "n_shards": 1,
        "group_decode": True,
        "group_labels": 4,
        "models": {"tiny-llava": {"path": "models/tiny-llava", "family": "llava", "revision": "local"}},
        "benchmarks": {
            "pope": {
                **pope,
                "dataset": "coco",
                "version": "first12",
                "splits": ["random", "adversarial"],
                "questions": "data/pope/coco_pope_{split}_first12.json",
                "checksums": {k: v for k, v in md5.items() if "coco_pope" in k},
            },
            "pope_aokvqa": {
                **pope,
                "dataset": "aokvqa",
                "version": "first6",
                "splits": ["random"],
                "questions": "data/pope/aokvqa_pope_seem_{split}_first6.json",
                "checksums": {k: v for k, v in md5.items() if "aokvqa" in k},
            },
            "chair": {
                "instances": "data/coco/annotations/instances_val2014.json",
                "captions": "data/coco/annotations/captions_val2014.json",
                "images": COCO,
                "synonyms": "data/chair/synonyms.txt",
                "nltk_data": "data/nltk_data",
                "n_images": 2,
                "max_new_tokens": 6,
                "max_new_tokens_cap": 6,
            },
            "mme": {
                "root": "resources/mme/release",
                "subtasks": ["existence", "count"],
                "max_new_tokens": 3,
                "max_new_tokens_cap": 3,
            },
            "amber": {
                "root": "data/amber",
                "nltk_data": "data/nltk_data",
                "spacy_model": None,
                "tasks": ["generative", "discriminative"],
                "version": "fixture",
                "checksums": amber_sums,
                "max_new_tokens": 6,
                "max_new_tokens_cap": 6,
            },
        },
        "protocol": "unified",
        "methods": {
            "greedy": {"method": "greedy"},
            "vcd": {
                "method": "vcd",
                "params": {"alpha": 1.0, "beta": 0.1, "noise_step": 500},
                "protocol": ["unified", "paper"],
            },
            "sample": {"method": "sample", "do_sample": True, "protocol": ["unified", "paper"]},
        },
        "report": {"title": "real-format micro"},
    }


def _snakemake(work: Path, config: Path, *args, check=True):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--directory",
        str(work),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


def _official_pope(text: str) -> str:
    """RUCAIBox/POPE evaluate.py: the first sentence, commas dropped, 'no'/'not'/'No' -> no."""
    text = text.split(".")[0] if "." in text else text
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def test_real_format_world_runs_end_to_end_offline(tmp_path):
    for name, md5 in FIXTURE_MD5.items():  # the fixtures are what the test world declares
        assert hashlib.md5((FIX / name).read_bytes()).hexdigest() == md5, name
    assert b"\r\n" in (FIX / "pope" / "coco_pope_adversarial_first12.json").read_bytes()  # CRLF kept
    work = tmp_path / "w"
    work.mkdir()
    cfg = _config(work)
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = _snakemake(work, config)
    assert "pre-placed benchmark file(s) match their pinned checksums" in out.stderr, out.stderr[-3000:]
    df = pd.read_csv(work / "results" / "metrics.csv")
    have = set(
        df[["benchmark", "split", "protocol", "method"]].drop_duplicates().itertuples(index=False, name=None)
    )
    for bench, split in [
        ("pope", "random"),
        ("pope", "adversarial"),
        ("pope_aokvqa", "random"),
        ("chair", "all"),
        ("mme", "all"),
        ("amber", "generative"),
        ("amber", "discriminative"),
    ]:
        for protocol, method in [
            ("unified", "greedy"),
            ("unified", "vcd"),
            ("unified", "sample"),
            ("vcd", "vcd"),
            ("vcd", "sample"),
        ]:
            assert (bench, split, protocol, method) in have, (bench, split, protocol, method)
    # POPE: every question decoded, accuracy = the official rule on the answer files (unified parser)
    for bench, split, n in [
        ("pope", "random", 12),
        ("pope", "adversarial", 12),
        ("pope_aokvqa", "random", 6),
    ]:
        recs = read_jsonl(work / f"results/{bench}/{split}/tiny-llava/unified/greedy/greedy/seed0.jsonl")
        assert len(recs) == n and all(r.get("error") is None for r in recs)
        acc = 100 * np.mean([_official_pope(r["answer"]) == r["label"] for r in recs])
        got = df.query(
            "benchmark == @bench and split == @split and protocol == 'unified' and method == 'greedy' "
            "and metric == 'accuracy'"
        )["value"]
        assert got.tolist() == pytest.approx([acc]), (bench, split)
    side = json.loads(
        (work / "results/pope/random/tiny-llava/unified/greedy/greedy/seed0.meta.json").read_text()
    )
    assert side["run"]["benchmark"]["version"] == "first12"  # the version it declared, not "head"
    chair = df.query("benchmark == 'chair' and metric == 'chair_s'")
    assert len(chair) == 5 and chair["value"].between(0, 100).all()
    amber = df.query("benchmark == 'amber' and split == 'discriminative' and metric == 'accuracy'")
    assert len(amber) == 5  # unified's AMBER parser is one AMBER's scorer runs
    assert (work / "reports" / "index.html").stat().st_size > 0
    # a truncated question file (its mtime moves too): the rerun stops before anything decodes
    shards = sorted((work / "results" / "shards").rglob("*.jsonl"))
    q = work / "data" / "pope" / "coco_pope_random_first12.json"
    q.write_bytes(b"".join(q.read_bytes().splitlines(keepends=True)[:5]))
    bad = _snakemake(work, config, check=False)
    assert bad.returncode != 0
    assert (
        f"data/pope/coco_pope_random_first12.json: md5 {hashlib.md5(q.read_bytes()).hexdigest()}, but pope "
        f"version first12 (config benchmarks.pope.checksums) has md5 {FIXTURE_MD5['pope/coco_pope_random_first12.json']}"
        in bad.stdout
        + bad.stderr
    ), (bad.stdout + bad.stderr)[-3000:]
    assert sorted((work / "results" / "shards").rglob("*.jsonl")) == shards
    assert not list((work / "results" / "shards").rglob("*.partial*"))
