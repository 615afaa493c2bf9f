"""HALC through the workflow: its auxiliary model folders are decode inputs (vcdflow.config
METHOD_INPUTS ``halc_aux``, rule download_halc_aux's resources/halc/<name>), attached as the
method's detector/scorer/tagger params with each folder's weights digest in the run hash; a
micro config (tests/configs/halc.yaml) with tiny stand-ins placed where the rule puts the real
folders runs decode -> score -> metrics; a missing BLIP folder stops the run with one line naming
the folder and how to fill it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from scene_pope import write_scene_pope

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "halc.yaml"
FUNCTION_WORDS = [
    "a",
    "an",
    "the",
    "is",
    "are",
    "there",
    "any",
    "in",
    "on",
    "of",
    "to",
    "and",
    "with",
    "this",
    "that",
    "what",
    "how",
    "yes",
    "no",
]


def _snakemake(workdir, config, *args, timeout=600):
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
        "--quiet",
        "rules",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def _aux(work: Path, tmp: Path) -> dict:
    """The stand-ins in resources/halc/: tiny GroundingDINO and BLIP (tests/reference_halc.py), a
    word-list tagger (vcdflow.aux_models.WordTagger: function words DET, other words NOUN)."""
    from reference_halc import build_aux, build_tiny_grounding_dino

    dest = work / "resources" / "halc"
    dest.mkdir(parents=True)
    shutil.copytree(build_tiny_grounding_dino(tmp), dest / "grounding_dino_tiny")
    shutil.copytree(build_aux(tmp / "aux")["paths"]["blip"], dest / "blip_large")
    (dest / "spacy_sm").mkdir()
    (dest / "spacy_sm" / "word_tags.json").write_text(
        json.dumps({"default": "NOUN", "tags": {w: "DET" for w in FUNCTION_WORDS}})
    )
    return {
        "detector": dest / "grounding_dino_tiny",
        "scorer": dest / "blip_large",
        "tagger": dest / "spacy_sm",
    }


def test_halc_decode_inputs_through_the_workflow(tmp_path):
    from vcdflow import config as runs
    from vcdflow.io import file_digest, read_jsonl
    from vcdflow.models.demo import build_demo_vlm

    # the declared input: the three folders of rule download_halc_aux
    assert runs.method_inputs("halc") == ("halc_aux",)
    cfg = yaml.safe_load(CONFIG.read_text())
    assert runs.method_input_path("halc_aux", cfg, "pope", "demo") == [
        "resources/halc/grounding_dino_tiny",
        "resources/halc/blip_large",
        "resources/halc/spacy_sm",
    ]

    work = tmp_path / "work"
    # 96 x 64: the tiny GroundingDINO's coarsest feature map keeps 2 positions (a 1 x 1 map fails
    # its GroupNorm)
    write_scene_pope(work / "data" / "pope", 2, (3, 7), 64, save_size=(96, 64))
    model, processor = build_demo_vlm(seed=6)
    model.save_pretrained(work / "model")
    processor.save_pretrained(work / "model")
    folders = _aux(work, tmp_path / "build")
    out = _snakemake(work, CONFIG, "--", "results/metrics.csv")  # decode -> score -> metrics (no report)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert not (work / "logs" / "halc").exists()  # the placed folders were used: no download job ran
    digests = {
        k: file_digest(folders[k] / w)
        for k, w in (
            ("detector", "model.safetensors"),
            ("scorer", "model.safetensors"),
            ("tagger", "word_tags.json"),
        )
    }
    for label, beams in (("halc", 3), ("halc_b1", 1)):
        result = work / f"results/pope/random/demo/unified/{label}/greedy/seed0.jsonl"
        records = read_jsonl(result)
        assert len(records) == 4
        assert all(not r.get("error") and isinstance(r.get("answer"), str) for r in records), records
        assert any(r["meta"].get("halc_events") for r in records)  # words were judged
        side = result.with_name("seed0.meta.json").read_text()
        for k in ("detector", "scorer", "tagger"):
            assert f'"{k}": "resources/halc/' in side, (label, k)  # the input folders are the params
            assert digests[k] in side, (label, k)  # their digests are in the run
        assert f'"beam_size": {beams}' in side or beams == 3
    metrics = (work / "results" / "metrics.csv").read_text()
    assert ",halc," in metrics and ",halc_b1," in metrics


def test_attach_halc_aux_sets_params_and_digests(tmp_path):
    """vcdflow.runner.INPUT_ATTACHERS["halc_aux"]: the three folders become the detector/scorer/
    tagger params; each folder's weights digest joins the run, so a changed folder changes the
    result hash; a config that sets one of the params itself, or a missing folder, is refused
    naming it."""
    import pytest

    from vcdflow.io import file_digest
    from vcdflow.runner import attach_method_inputs, result_hash

    paths = []
    for name, weights in (
        ("det", "model.safetensors"),
        ("blip", "model.safetensors"),
        ("tags", "word_tags.json"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / weights).write_text(name)
        (tmp_path / name / "config.json").write_text("{}")
        paths.append(str(tmp_path / name))
    run = {
        "method": {"method": "halc", "params": {"beam_size": 1}},
        "model": {},
        "benchmark": {},
        "inputs": {"halc_aux": paths},
    }
    got, items = attach_method_inputs(run, [{"item_id": "x"}])
    assert items == [{"item_id": "x"}]
    assert got["method"]["params"] == {
        "beam_size": 1,
        "detector": paths[0],
        "scorer": paths[1],
        "tagger": paths[2],
    }
    assert got["halc_detector_digest"] == file_digest(tmp_path / "det" / "model.safetensors")
    assert got["halc_tagger_digest"] == file_digest(tmp_path / "tags" / "word_tags.json")
    (tmp_path / "tags" / "word_tags.json").write_text("changed")
    assert result_hash(attach_method_inputs(run, [])[0]) != result_hash(got)
    with pytest.raises(ValueError, match="takes parameter 'scorer' from its input folder"):
        attach_method_inputs({**run, "method": {"method": "halc", "params": {"scorer": "/x"}}}, [])
    with pytest.raises(FileNotFoundError, match="halc scorer folder missing: .*blip_large"):
        attach_method_inputs(
            {**run, "inputs": {"halc_aux": [paths[0], str(tmp_path / "blip_large"), paths[2]]}}, []
        )


def test_missing_blip_folder_fails_with_one_line(tmp_path):
    """Offline, without resources/halc/blip_large the run stops at its rule in one line naming
    the folder and what to place there (online its "main" is resolved, downloaded at that
    commit and recorded in the revisions lock: tests/test_hub_revisions.py)."""
    work = tmp_path / "work"
    out = _snakemake(work, CONFIG, "--config", "offline=True", "--", "resources/halc/blip_large")
    assert out.returncode != 0
    log = (work / "logs" / "halc" / "blip_large.log").read_text()
    line = (
        "halc auxiliary model resources/halc/blip_large: error: offline mode: place a snapshot of "
        "Salesforce/blip-image-captioning-large (config.json, weights, processor files) in resources/halc/blip_large"
    )
    assert line in log.splitlines() and "Traceback" not in log, log  # one line, no traceback
    assert line in out.stderr  # on the console too
    assert not (work / "resources" / "halc" / "blip_large").exists()
