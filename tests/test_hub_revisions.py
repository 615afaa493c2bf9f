"""Pinned hub revisions: a branch named in a config is resolved once, downloaded at its commit and
recorded; a later download that resolves to another commit fails in one line naming both unless
the user asks to update — for models (fetch_model), the ConVis T2I weights (download_t2i) and
HALC's helper models (fetch_halc_aux).

The hub is a local fake folder: ``<hub>/<repo>/refs/<branch>`` holds a commit and
``<hub>/<repo>/<commit>/`` its files. Only the two hub-client calls are replaced —
``HfApi.repo_info`` (reads the ref) and ``snapshot_download`` (copies the files of the commit the
revision names, and logs the revision it was asked for) — so vcdflow's own code path runs as it does online."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from vcdflow.data import hub_revisions
from vcdflow.data.fetch import fetch_halc_aux, fetch_model

C1, C2, C3 = "1" * 40, "2" * 40, "3" * 40


class FakeHub:
    def __init__(self, root: Path):
        self.root = root
        self.downloads: list[tuple[str, str]] = []

    def push(self, repo: str, commit: str, files: dict[str, str], branch: str = "main") -> None:
        for name, text in files.items():
            (self.root / repo / commit / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / repo / commit / name).write_text(text)
        (self.root / repo / "refs").mkdir(parents=True, exist_ok=True)
        (self.root / repo / "refs" / branch).write_text(commit)

    def repo_info(self, repo_id, *, revision=None, repo_type=None, token=None, **kw):
        ref = self.root / repo_id / "refs" / (revision or "main")
        return SimpleNamespace(
            sha=revision if re.fullmatch("[0-9a-f]{40}", revision or "") else ref.read_text()
        )

    def snapshot_download(self, *, repo_id, revision, local_dir, allow_patterns=None, **kw):
        commit = self.repo_info(repo_id, revision=revision).sha
        src = self.root / repo_id / commit
        for f in src.rglob("*"):
            rel = f.relative_to(src).as_posix()
            if f.is_file() and (not allow_patterns or any(fnmatch.fnmatch(rel, p) for p in allow_patterns)):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, Path(local_dir) / rel)
        self.downloads.append((repo_id, revision))
        return local_dir


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", fake.repo_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def test_a_model_branch_is_pinned_at_its_first_download(tmp_path, hub):
    lock = tmp_path / "config" / "hub-revisions.lock"
    hub.push("org/vlm", C1, {"config.json": '{"v": 1}'})
    dest = tmp_path / "models" / "vlm"
    fetch_model("org/vlm", dest, revision="main", revisions_lock=lock)
    assert hub.downloads == [("org/vlm", C1)] and json.loads((dest / "config.json").read_text()) == {"v": 1}
    assert json.loads(lock.read_text())["model:org/vlm@main"]["commit"] == C1
    # the folder says where it came from; a result decoded from it records that (its sidecar's model_source)
    assert hub_revisions.read_source(dest) == {
        "repo_type": "model",
        "repo_id": "org/vlm",
        "revision": "main",
        "commit": C1,
    }
    from vcdflow.runner import _model_source

    assert _model_source({"model": {"path": str(dest)}})["commit"] == C1
    assert _model_source({"model": {"path": str(tmp_path)}}) is None  # a folder placed by hand
    # the owner pushes; a fresh checkout (folder gone) downloading "main" again stops, naming both
    hub.push("org/vlm", C2, {"config.json": '{"v": 2}'})
    shutil.rmtree(dest)
    with pytest.raises(hub_revisions.RevisionChanged) as ei:
        fetch_model("org/vlm", dest, revision="main", revisions_lock=lock)
    msg = str(ei.value)
    assert "\n" not in msg and C1 in msg and C2 in msg and "org/vlm" in msg and str(lock) in msg
    assert "update_revisions" in msg
    assert not dest.exists() and hub.downloads == [("org/vlm", C1)]
    assert json.loads(lock.read_text())["model:org/vlm@main"]["commit"] == C1  # unchanged
    # the recorded commit is still downloadable by pinning it (not recorded: already a commit)
    fetch_model("org/vlm", dest, revision=C1, revisions_lock=lock)
    assert hub.downloads[-1] == ("org/vlm", C1) and json.loads((dest / "config.json").read_text()) == {"v": 1}
    # asked to update: the new commit is downloaded and recorded
    fetch_model(
        "org/vlm", tmp_path / "models" / "vlm2", revision="main", revisions_lock=lock, update_revisions=True
    )
    assert hub.downloads[-1] == ("org/vlm", C2)
    assert json.loads(lock.read_text())["model:org/vlm@main"]["commit"] == C2
    assert set(json.loads(lock.read_text())) == {"model:org/vlm@main"}
    # pinning off (revisions_lock: null): the branch is downloaded as it is, nothing recorded
    hub.push("org/other", C3, {"config.json": "{}"})
    fetch_model("org/other", tmp_path / "models" / "other", revision="main", revisions_lock=None)
    assert hub.downloads[-1] == ("org/other", "main")
    assert "model:org/other@main" not in json.loads(lock.read_text())


def test_t2i_weights_and_halc_helpers_share_the_lock(tmp_path, hub):
    from vcdflow.t2i.pipeline import PAPER_T2I, download_t2i

    lock = tmp_path / "hub-revisions.lock"
    hub.push(
        PAPER_T2I["base"], C1, {"model_index.json": "{}", "unet/config.json": "{}", "vae/config.json": "{}"}
    )
    hub.push(PAPER_T2I["unet_repo"], C2, {PAPER_T2I["unet_file"]: "w"})
    hub.push("Salesforce/blip-image-captioning-large", C3, {"config.json": "{}"})
    download_t2i(PAPER_T2I, tmp_path / "t2i", revisions_lock=lock)
    fetch_halc_aux(
        {"hf": "Salesforce/blip-image-captioning-large", "revision": "main"},
        tmp_path / "blip",
        revisions_lock=lock,
    )
    # a pinned helper (40-hex) is downloaded at that commit and not recorded
    hub.push("openai/clip-vit-base-patch32", C1, {"config.json": "{}"}, branch="other")
    fetch_halc_aux(
        {"hf": "openai/clip-vit-base-patch32", "revision": C1}, tmp_path / "clip", revisions_lock=lock
    )
    assert {k: v["commit"] for k, v in json.loads(lock.read_text()).items()} == {
        f"model:{PAPER_T2I['base']}@main": C1,
        f"model:{PAPER_T2I['unet_repo']}@main": C2,
        "model:Salesforce/blip-image-captioning-large@main": C3,
    }
    assert (tmp_path / "t2i" / "unet" / PAPER_T2I["unet_file"]).is_file()
    assert not (tmp_path / "t2i" / "unet" / "model_index.json").exists()
    # Hyper-SD's main moves: the T2I download stops naming both commits
    hub.push(PAPER_T2I["unet_repo"], C3, {PAPER_T2I["unet_file"]: "w2"})
    with pytest.raises(
        hub_revisions.RevisionChanged,
        match=f"ByteDance/Hyper-SD revision 'main' was recorded as "
        f"commit {C2}, the hub now resolves it to {C3}",
    ):
        download_t2i(PAPER_T2I, tmp_path / "t2i-again", revisions_lock=lock)
    # the report's rows
    rows = hub_revisions.lock_rows({"revisions_lock": str(lock)})
    assert [(r["repo"], r["revision"], r["commit"]) for r in rows] == [
        ("ByteDance/Hyper-SD", "main", C2),
        ("Salesforce/blip-image-captioning-large", "main", C3),
        (PAPER_T2I["base"], "main", C1),
    ]
    assert hub_revisions.lock_rows({"revisions_lock": None}) == []


def test_a_bad_lock_is_named(tmp_path):
    bad = tmp_path / "hub-revisions.lock"
    bad.write_text('{"model:x@main": {"commit": "abc"}}')
    with pytest.raises(hub_revisions.UserError, match="hub-revisions.lock: not a revisions lock"):
        hub_revisions.read_lock(bad)
    assert hub_revisions.settings({}) == {
        "revisions_lock": "config/hub-revisions.lock",
        "update_revisions": False,
    }
