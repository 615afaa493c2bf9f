"""High-level fetchers the workflow's download rules call (one function per resource).

Each one downloads through :func:`vcdflow.data.download.download` (streamed, resumable,
size- and checksum-verified, moved into place only when verified) or, with
``offline=True``, only verifies pre-placed files and names each missing one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..io import replace_dir
from . import registry
from .download import check_offline, extract, hf_snapshot

log = logging.getLogger(__name__)


def fetch_entry(name: str, dest: str | os.PathLike, *, offline: bool = False, progress: bool = True) -> Path:
    """Download (or, offline, verify) the registry entry ``name`` to ``dest``."""
    entry = registry.get(name)
    if entry.kind != "hf" and entry.checksum() is None:
        log.warning(
            "%s: no published checksum%s; %s is used unverified",
            name,
            "" if entry.size is None else " (size checked)",
            dest,
        )
    if offline:
        check_offline([(dest, entry.checksum())])
        return Path(dest)
    return entry.fetch(dest, progress=progress)


def fetch_pope(dataset: str, version: str, split: str, dest, *, offline: bool = False) -> Path:
    version = registry.pope_version(version)
    return fetch_entry(f"pope/{dataset}/{version}/{split}", dest, offline=offline)


def fetch_zip_members(
    name: str,
    dest_dir,
    *,
    cache_dir="resources/downloads",
    offline: bool = False,
    members=None,
    strip: str | None = None,
    progress: bool = True,
) -> Path:
    """Download a registry zip into ``cache_dir`` and extract (selected) members into ``dest_dir``.

    ``strip`` keeps only what is under a leading folder of the member paths and drops that
    folder (``annotations`` -> flat; ``en_core_web_lg/en_core_web_lg-3.8.0`` -> the spaCy
    model folder of a model wheel).
    """
    entry = registry.get(name)
    archive = Path(cache_dir) / entry.filename
    fetch_entry(name, archive, offline=offline, progress=progress)
    dest_dir = Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    if strip is None:
        extract(archive, dest_dir, members=members or entry.members)
        return dest_dir
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir.parent))
    try:
        extract(
            archive,
            tmp / "x",
            members=members or entry.members or [strip.rstrip("/") + "/"],
            progress=progress,
        )
        replace_dir(tmp / "x" / strip, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


def fetch_model(
    repo_id: str,
    dest,
    *,
    revision: str = "main",
    offline: bool = False,
    revisions_lock: str | os.PathLike | None = None,
    update_revisions: bool = False,
) -> Path:
    """Snapshot a hub model into ``dest`` (token from ``HF_TOKEN``; never logged). A branch or tag
    ``revision`` is pinned through ``revisions_lock`` (:func:`vcdflow.data.hub_revisions.pin`)."""
    if offline:
        dest = Path(dest)
        if not (dest / "config.json").exists():
            raise FileNotFoundError(
                f"offline: model folder {dest} is missing (no config.json); place a snapshot of {repo_id}@{revision} there"
            )
        return dest
    return hf_snapshot(
        repo_id,
        dest,
        revision=revision,
        repo_type="model",
        revisions_lock=revisions_lock,
        update_revisions=update_revisions,
    )


def fetch_halc_aux(
    spec: dict,
    dest,
    *,
    offline: bool = False,
    revisions_lock: str | os.PathLike | None = None,
    update_revisions: bool = False,
) -> Path:
    """One of HALC's helper models (``workflow/rules/halc.smk``) into ``dest``: a hub snapshot
    (``{"hf", "revision"}``; a branch pinned through ``revisions_lock``) or a model folder out of
    a sha256-checked wheel (``{"url", "sha256", "strip"}``). Offline, a pre-placed folder is
    checked and a missing one named."""
    from .download import download

    dest = Path(dest)
    if "hf" in spec:
        if offline:
            if not (dest / "config.json").exists():
                raise FileNotFoundError(
                    f"offline mode: place a snapshot of {spec['hf']} (config.json, weights, "
                    f"processor files) in {dest}"
                )
            return dest
        return hf_snapshot(
            spec["hf"],
            dest,
            revision=spec.get("revision") or "main",
            repo_type="model",
            revisions_lock=revisions_lock,
            update_revisions=update_revisions,
        )
    wheel = Path("resources/downloads") / Path(spec["url"]).name
    download(spec["url"], wheel, sha256=spec["sha256"], offline=offline)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        extract(wheel, tmp / "x", members=[spec["strip"].rstrip("/") + "/"])
        replace_dir(tmp / "x" / spec["strip"], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_mme_parquet(dest, *, offline: bool = False) -> Path:
    entry = registry.get("mme/lmms-lab")
    dest = Path(dest)
    if offline:
        if not list(dest.glob("**/*.parquet")):
            raise FileNotFoundError(
                f"offline: no MME parquet shards under {dest} (expected {entry.hf or entry.name})"
            )
        return dest
    hf = entry.hf or {}
    return hf_snapshot(
        hf.get("repo_id", "lmms-lab/MME"),
        dest,
        revision=hf.get("revision", "main"),
        repo_type="dataset",
        allow_patterns=hf.get("allow_patterns"),
    )


def prepare_mme_folder(parquet_dir, out_dir) -> Path:
    """Write the parquet shards out as images + a manifest so decode jobs read plain files."""
    from ..io import write_jsonl
    from ..metrics import mme

    out_dir = Path(out_dir)
    shards = sorted(Path(parquet_dir).glob("**/*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no MME parquet shards under {parquet_dir}")
    items = mme.load_items_parquet(shards, out_dir / "images")
    write_jsonl(out_dir / "items.jsonl", items)
    return out_dir
