"""Shipped demo-model weights: used instead of training when they were trained on the same inputs.

Training the demo LLaVA (:func:`vcdflow.models.demo.train_demo_model`) takes ~2.5 min of the
two cores ``make demo`` has. The weights ``make demo``'s settings give ship in
``resources/demo_model/`` (as the demo T2I's do in ``resources/demo_t2i/``); the workflow's rule
``train_demo_model`` copies them instead of training when the training inputs are the ones they
were trained on, and trains otherwise. The check is made at job time on what training would
read, so it cannot go stale:

* the training settings (``demo.train`` of the config, ``threads`` included: another thread
  count rounds differently and gives other weights);
* the SHA-256 of the demo world's train annotations (``instances_train.json``,
  ``captions_train.json``) and of every train image (name and bytes).

:func:`training_inputs` computes that record, :func:`record_inputs` writes it into a trained
model folder as ``training_inputs.json`` (so that folder can be shipped as it is) and
:func:`copy_if_same_inputs` copies a shipped folder whose record matches. The torch version
the weights were trained with is recorded beside (``torch``), not compared: a newer torch may
round differently, and retraining is one config switch away (``demo.train.shipped: false``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

RECORD = "training_inputs.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_inputs(world_dir: str | os.PathLike, settings: Mapping[str, Any]) -> dict:
    """The record of what training reads: the settings and the digests of the world's train split."""
    world = Path(world_dir)
    images = world / "images" / "train"
    files = sorted(p for p in images.iterdir() if p.is_file()) if images.is_dir() else []
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return {
        "settings": {k: settings[k] for k in sorted(settings)},
        "instances_train": _sha256(world / "annotations" / "instances_train.json"),
        "captions_train": _sha256(world / "annotations" / "captions_train.json"),
        "train_images": {"n": len(files), "sha256": digest.hexdigest()},
    }


def _torch_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def record_inputs(
    model_dir: str | os.PathLike, world_dir: str | os.PathLike, settings: Mapping[str, Any]
) -> dict:
    """Write ``training_inputs.json`` into a freshly trained model folder; returns the record."""
    record = {**training_inputs(world_dir, settings), "torch": _torch_version()}
    (Path(model_dir) / RECORD).write_text(
        json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return record


def same_inputs(
    shipped_dir: str | os.PathLike, world_dir: str | os.PathLike, settings: Mapping[str, Any]
) -> tuple[bool, str]:
    """(True, "") when ``shipped_dir`` holds weights trained on exactly these inputs, else
    (False, the first thing that differs)."""
    path = Path(shipped_dir) / RECORD
    if not path.is_file():
        return False, f"{path} is missing"
    shipped = json.loads(path.read_text(encoding="utf-8"))
    now = training_inputs(world_dir, settings)
    for key, value in now.items():
        if shipped.get(key) != value:
            return False, f"{key} differs (shipped {shipped.get(key)!r}, now {value!r})"
    return True, ""


def copy_if_same_inputs(
    shipped_dir: str | os.PathLike,
    world_dir: str | os.PathLike,
    settings: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> tuple[bool, str]:
    """Copy ``shipped_dir`` to ``out_dir`` (complete or not at all) when :func:`same_inputs`;
    returns (copied, why not)."""
    ok, why = same_inputs(shipped_dir, world_dir, settings)
    if not ok:
        return False, why
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(shipped_dir, tmp, dirs_exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True, ""
