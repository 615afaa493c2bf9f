"""Each paper protocol's benchmark data: the CHAIR images (OPERA's released ids, else the paper's
seed and rule) and the POPE question-file version, as declared with their official file:line, and
as the workflow's build_run applies them (real world) or leaves the config's (demo world, unified)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from vcdflow import config as runs
from vcdflow.data import chair_subsets
from vcdflow.metrics import chair
from vcdflow.protocols import get_protocol

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"\.(py|yaml|sh|jsonl?)(:\d+)?")  # an official file, with a line where code decides

# (protocol, family) -> declared CHAIR subset; protocol -> declared POPE version (None: the config's)
CHAIR = {
    ("opera", "llava"): {"ids": "opera_llava-1.5"},
    ("opera", "instructblip"): {"ids": "opera_instructblip"},
    ("deco", "llava"): {"ids": "opera_llava-1.5"},
    ("pai", "llava"): {"rule": "shuffle", "seed": 927, "n": 500, "exact": False},
    ("vista", "llava"): {"rule": "shuffle_choice", "seed": 1994, "n": 500, "exact": False},
    ("sid", "llava"): {"rule": "shuffle", "seed": 42, "n": 500, "exact": False},
    ("sid", "instructblip"): {"rule": "shuffle", "seed": 42, "n": 500, "exact": False},
    ("only", "llava"): {"rule": "shuffle", "seed": 3407, "n": 500, "exact": False},
    ("unified", "llava"): None,
    ("vcd", "llava"): None,
}
MIXED = {"random": "head", "popular": "e3e3926", "adversarial": "e3e3926"}
POPE = {
    "opera": "e3e3926",
    "vista": "e3e3926",
    "pai": MIXED,
    "sid": MIXED,
    "deco": None,
    "only": None,
    "unified": None,
}


@pytest.mark.parametrize("proto,family", list(CHAIR))
def test_declared_chair_subset_with_its_official_line(proto, family):
    res = get_protocol(proto).resolve(method="greedy", family=family, benchmark="chair")
    assert res.data.get("chair_subset") == CHAIR[(proto, family)]
    if CHAIR[(proto, family)] is not None:
        src = res.sources["chair_subset"]
        assert CITE.search(src), src
        if "rule" in CHAIR[(proto, family)]:
            assert "Not reproducible exactly" in src and str(CHAIR[(proto, family)]["seed"]) in src


@pytest.mark.parametrize("proto", list(POPE))
def test_declared_pope_version_with_its_official_line(proto):
    res = get_protocol(proto).resolve(method="greedy", family="llava", benchmark="pope")
    assert res.data.get("pope_version") == POPE[proto]
    if POPE[proto] is not None:
        assert CITE.search(res.sources["pope_version"]).group(2), res.sources["pope_version"]


def test_released_lists_are_operas_and_checked():
    ids = {name: chair_subsets.read_released(name) for name in chair_subsets.RELEASED}
    for name, entry in chair_subsets.RELEASED.items():
        data = (chair_subsets.IDS_DIR / entry.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256 and "61426ef" in entry.source
        assert len(ids[name]) == len(set(ids[name])) == 500
    # first lines of OPERA's log/chair_eval_results/{llava-1.5,instructblip}/ours.jsonl
    assert ids["opera_llava-1.5"][:3] == [226988, 337443, 112022]
    assert ids["opera_instructblip"][:3] == [415672, 177207, 428254]
    assert len(set(ids["opera_llava-1.5"]) & set(ids["opera_instructblip"])) == 6


def test_a_changed_released_list_is_refused(tmp_path, monkeypatch):
    entry = chair_subsets.RELEASED["opera_llava-1.5"]
    (tmp_path / entry.file).write_text(
        (chair_subsets.IDS_DIR / entry.file).read_text().replace("226988", "226989")
    )
    monkeypatch.setattr(chair_subsets, "IDS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"opera_llava-1\.5\.txt: sha256 .* is not the pinned"):
        chair_subsets.read_released("opera_llava-1.5")


def _captions(tmp_path, ids):
    path = tmp_path / "captions.json"
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in ids]
    path.write_text(json.dumps({"images": images, "annotations": []}))
    return path


def test_selection_rules_rerun_the_official_draws(tmp_path):
    ids = list(range(1000, 1060))
    names = [f"COCO_val2014_{i:012d}.jpg" for i in ids]
    path = _captions(tmp_path, ids[::-1])  # annotation order is not the draw's order
    # OPERA / PAI / SID / ONLY: random.seed(s); random.shuffle(os.listdir(...)); first n
    random.seed(927)
    files = sorted(names)
    random.shuffle(files)
    got = [it["image"] for it in chair.load_items(path, tmp_path, n=7, seed=927, rule="shuffle")]
    assert got == files[:7]
    # VISTA: the shuffle, then np.random.choice(len, n, replace=False) under np.random.seed(s)
    random.seed(1994)
    np.random.seed(1994)
    files = sorted(names)
    random.shuffle(files)
    picks = np.random.choice(len(files), 7, replace=False)
    got = [it["image"] for it in chair.load_items(path, tmp_path, n=7, seed=1994, rule="shuffle_choice")]
    assert got == [files[i] for i in picks]


def _real_config(tmp_path, **extra):
    cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    return {**cfg, **extra}


def test_build_run_applies_the_papers_data_in_the_real_world(tmp_path):
    cfg = _real_config(tmp_path)
    run = lambda **kw: runs.build_run(cfg, model="llava-1.5-7b", seed=42, **kw)  # noqa: E731
    opera_chair = run(benchmark="chair", split="all", method="opera", protocol="opera")
    assert opera_chair.benchmark["image_id_list"] == "opera_llava-1.5"
    assert opera_chair.protocol["data"] == {"chair_subset": {"ids": "opera_llava-1.5"}}
    ib = runs.build_run(
        cfg,
        model="instructblip-7b",
        seed=42,
        benchmark="chair",
        split="all",
        method="greedy",
        protocol="opera",
    )
    assert ib.benchmark["image_id_list"] == "opera_instructblip"
    vista = run(benchmark="chair", split="all", method="vista", protocol="vista").benchmark
    assert (vista["subset_rule"], vista["subset_seed"], vista["n_images"]) == ("shuffle_choice", 1994, 500)
    for split, version in MIXED.items():
        pai = run(benchmark="pope", split=split, method="pai", protocol="pai").benchmark
        assert pai["questions"] == f"resources/pope/coco/{version}/{split}.json" and pai["version"] == version
    assert (
        run(benchmark="pope", split="random", method="opera", protocol="opera").benchmark["questions"]
        == "resources/pope/coco/e3e3926/random.json"
    )
    # the decode job's input files (common.smk decode_inputs) are the ones build_run decodes
    for proto, method, split in (
        ("pai", "pai", "popular"),
        ("opera", "opera", "random"),
        ("unified", "vista", "random"),
    ):
        want = run(benchmark="pope", split=split, method=method, protocol=proto).benchmark
        got = runs.protocol_bench(cfg, "pope", split, model="llava-1.5-7b", method=method, protocol=proto)
        assert got["questions"] == want["questions"]
    # unified and a protocol that declares nothing keep the config's images and files; so do
    # POPE entries of other datasets (e3e3926 is COCO only)
    for proto, method in (("unified", "opera"), ("vcd", "vcd")):
        spec = run(benchmark="chair", split="all", method=method, protocol=proto)
        assert "image_id_list" not in spec.benchmark and spec.benchmark["subset_seed"] == 0
        assert "data" not in spec.protocol
        assert (
            run(benchmark="pope", split="random", method=method, protocol=proto).benchmark["questions"]
            == "resources/pope/coco/head/random.json"
        )
    assert (
        "e3e3926"
        not in run(benchmark="pope_aokvqa", split="random", method="opera", protocol="opera").benchmark[
            "questions"
        ]
    )


def test_demo_world_and_the_switch_keep_the_configs_data(tmp_path):
    cfg = _real_config(tmp_path, protocol_data=False)
    spec = runs.build_run(
        cfg, model="llava-1.5-7b", seed=42, benchmark="chair", split="all", method="opera", protocol="opera"
    )
    assert "image_id_list" not in spec.benchmark and "data" not in spec.protocol
    assert "chair_subset" not in spec.protocol["sources"]
    demo = dict(cfg, world="demo", protocol_data=None)
    assert not runs.protocol_data(demo) and runs.protocol_data(dict(cfg, protocol_data=None))


def test_a_questions_path_without_version_is_named(tmp_path):
    cfg = _real_config(tmp_path)
    cfg["benchmarks"]["pope"] = dict(
        cfg["benchmarks"]["pope"], questions="resources/pope/coco/head/{split}.json"
    )
    with pytest.raises(
        runs.ConfigError,
        match=r"benchmarks\.pope\.questions: a paper protocol declares POPE "
        r"version e3e3926; write \{version\}",
    ):
        runs.build_run(
            cfg,
            model="llava-1.5-7b",
            seed=42,
            benchmark="pope",
            split="random",
            method="opera",
            protocol="opera",
        )


def test_released_list_decodes_exactly_those_images(tmp_path):
    ids = chair_subsets.read_released("opera_llava-1.5")
    path = _captions(tmp_path, sorted(ids) + [1, 2, 3])
    bench = {
        "captions": str(path),
        "images": str(tmp_path),
        "image_id_list": "opera_llava-1.5",
        "n_images": 500,
    }
    from vcdflow.benchmarks import get_benchmark

    items = get_benchmark("chair").load_items(bench)
    assert [it["image_id"] for it in items] == ids
