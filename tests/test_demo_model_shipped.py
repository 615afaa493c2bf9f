"""Shipped demo-model weights are used only when trained on the very same inputs (digest check)."""

import json

from vcdflow.models.demo_shipped import RECORD, copy_if_same_inputs, record_inputs, same_inputs

SETTINGS = {
    "steps": 1500,
    "align_steps": 600,
    "batch_size": 32,
    "lr": 0.002,
    "seed": 0,
    "max_seconds": None,
    "threads": 2,
}


def _world(root, pixel=b"png-1"):
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text('{"images": []}')
    (root / "annotations" / "captions_train.json").write_text('{"annotations": []}')
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "a.png").write_bytes(pixel)
    (root / "images" / "train" / "b.png").write_bytes(b"png-2")
    return root


def _shipped(tmp_path, world):
    ship = tmp_path / "ship"
    ship.mkdir()
    (ship / "model.safetensors").write_bytes(b"weights")
    record = record_inputs(ship, world, SETTINGS)
    assert json.loads((ship / RECORD).read_text()) == record and record["train_images"]["n"] == 2
    return ship


def test_same_inputs_copies_the_shipped_folder(tmp_path):
    world = _world(tmp_path / "world")
    ship = _shipped(tmp_path, world)
    out = tmp_path / "out" / "model"
    assert copy_if_same_inputs(ship, world, dict(SETTINGS), out) == (True, "")
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / RECORD).is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_other_settings_threads_or_world_are_not_the_same_inputs(tmp_path):
    world = _world(tmp_path / "world")
    ship = _shipped(tmp_path, world)
    for change in ({"steps": 10}, {"threads": 1}):
        ok, why = same_inputs(ship, world, {**SETTINGS, **change})
        assert not ok and why.startswith("settings differs")
    other = _world(tmp_path / "other", pixel=b"png-X")  # one train image differs
    ok, why = same_inputs(ship, other, SETTINGS)
    assert not ok and why.startswith("train_images differs")
    (other / "images" / "train" / "a.png").write_bytes(b"png-1")
    (other / "annotations" / "captions_train.json").write_text('{"annotations": [1]}')
    ok, why = same_inputs(ship, other, SETTINGS)
    assert not ok and why.startswith("captions_train differs")
    out = tmp_path / "out"
    assert copy_if_same_inputs(ship, other, SETTINGS, out)[0] is False and not out.exists()
    assert same_inputs(tmp_path / "nothing", world, SETTINGS) == (
        False,
        f"{tmp_path / 'nothing' / RECORD} is missing",
    )


def test_the_shipped_demo_model_records_make_demo_settings():
    """resources/demo_model/ was trained with config/config.yaml's demo.train (threads included)."""
    from pathlib import Path

    import yaml
    from snakemake.utils import validate

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    validate(cfg, str(root / "workflow" / "schemas" / "config.schema.yaml"))
    settings = {k: v for k, v in cfg["demo"]["train"].items() if k != "shipped"}
    record = json.loads((root / "resources" / "demo_model" / RECORD).read_text())
    assert record["settings"] == settings
    assert record["train_images"]["n"] == cfg["demo"]["n_train"]
