"""Pinned hub revisions: a branch or tag named in a config is resolved to a commit once, recorded,
and every later download of it must resolve to the same commit.

A model entry (``revision: main``), the ConVis text-to-image weights (``base_revision``,
``unet_revision``) and a HALC helper model may name a branch or tag instead of a 40-hex commit.
Such a name moves when the repository's owner pushes, so two downloads of "``main``" months
apart can hold different weights. :func:`pin` makes the first download fix it:

1. the name is resolved to a commit with the hub's ``repo_info`` (:func:`resolve_commit`);
2. if the revisions lock (default ``config/hub-revisions.lock``, the config key
   ``revisions_lock``) already records a commit for ``(repo type, repo id, name)`` and the hub
   now says another one, the download stops with one line naming both commits — unless the
   user asks to update (config ``update_revisions: true``, e.g. ``--config
   update_revisions=true``), which downloads the new commit and records it;
3. the snapshot is downloaded at that *commit* (``snapshot_download(revision=<commit>)``), so a
   push between the resolution and the download cannot slip in, and only after it succeeds is
   the commit written to the lock.

A 40-hex revision is already pinned: it is downloaded as is and not recorded. The lock is a
JSON object, one entry per ``"<repo type>:<repo id>@<name>"`` with ``commit`` and ``recorded``
(UTC time), written atomically under an exclusive ``flock`` so parallel download jobs do not
lose each other's entries. Commit it beside the configs: a collaborator's download then gets
the same commits or an error. The report lists the lock (:func:`read_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..io import atomic_write_text

#: Where the lock lives unless the config's ``revisions_lock`` names another file.
DEFAULT_LOCK = "config/hub-revisions.lock"

_COMMIT = re.compile(r"[0-9a-f]{40}")


class RevisionChanged(UserError):
    """The hub resolves a recorded branch or tag to a commit other than the recorded one."""


def settings(config: dict | None) -> dict:
    """``{"revisions_lock", "update_revisions"}`` of a workflow config (defaults: the
    :data:`DEFAULT_LOCK` file, no update), as :func:`vcdflow.data.download.hf_snapshot` takes
    them. ``revisions_lock: null`` switches pinning off (a branch is downloaded as it is now)."""
    config = config or {}
    return {
        "revisions_lock": config.get("revisions_lock", DEFAULT_LOCK),
        "update_revisions": bool(config.get("update_revisions", False)),
    }


def is_commit(revision: str | None) -> bool:
    """True for a full 40-hex commit hash (already pinned)."""
    return bool(revision) and bool(_COMMIT.fullmatch(str(revision)))


def lock_key(repo_id: str, revision: str, repo_type: str = "model") -> str:
    return f"{repo_type}:{repo_id}@{revision}"


def read_lock(path: str | os.PathLike) -> dict[str, dict]:
    """The lock's entries (empty when the file does not exist); a file that is not a JSON object
    raises :class:`vcdflow.errors.UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except ValueError as e:
        raise UserError(f"{path}: not a revisions lock (JSON: {e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and is_commit(v.get("commit")) for v in data.values()
    ):
        raise UserError(
            f'{path}: not a revisions lock (expected {{"<type>:<repo>@<revision>": '
            '{"commit": <40 hex>, ...}})'
        )
    return data


#: Written into every hub snapshot folder after its download: where the files came from.
SOURCE_FILE = ".vcdflow-source.json"


def write_source(
    local_dir: str | os.PathLike, repo_id: str, revision: str, commit: str, repo_type: str
) -> None:
    """Record in ``local_dir`` the repository, the revision asked for and the commit downloaded."""
    atomic_write_text(
        Path(local_dir) / SOURCE_FILE,
        json.dumps(
            {"repo_type": repo_type, "repo_id": repo_id, "revision": revision, "commit": commit},
            sort_keys=True,
        )
        + "\n",
    )


def read_source(local_dir: str | os.PathLike | None) -> dict | None:
    """What :func:`write_source` recorded in ``local_dir`` (None for a folder placed by hand or built locally)."""
    if not local_dir:
        return None
    try:
        data = json.loads((Path(local_dir) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_rows(config: dict | None) -> list[dict]:
    """The config's revisions lock as report rows ``{"repo_type", "repo", "revision", "commit",
    "recorded", "lock"}`` (sorted; empty without a lock file or with pinning off)."""
    path = settings(config)["revisions_lock"]
    if not path:
        return []
    rows = []
    for key, entry in sorted(read_lock(path).items()):
        repo_type, _, rest = key.partition(":")
        repo, _, revision = rest.rpartition("@")
        rows.append(
            {
                "repo_type": repo_type,
                "repo": repo,
                "revision": revision,
                "commit": entry["commit"],
                "recorded": entry.get("recorded", ""),
                "lock": str(path),
            }
        )
    return rows


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".flock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record(path: str | os.PathLike, key: str, commit: str) -> None:
    """Write ``key → commit`` into the lock (atomically, under the lock's flock)."""
    path = Path(path)
    with _locked(path):
        data = read_lock(path)
        if data.get(key, {}).get("commit") == commit:
            return
        data[key] = {"commit": commit, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def resolve_commit(repo_id: str, revision: str, repo_type: str = "model", token: str | None = None) -> str:
    """The commit the hub's ``revision`` (branch or tag) of ``repo_id`` points at now."""
    from huggingface_hub import HfApi

    return HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, token=token).sha


def pin(
    repo_id: str,
    revision: str,
    *,
    repo_type: str = "model",
    lock: str | os.PathLike | None,
    update: bool = False,
    token: str | None = None,
) -> tuple[str, str | None]:
    """``(commit to download, lock key to record after it)``: a 40-hex ``revision`` (or no lock)
    is returned as is with no key; otherwise the name is resolved (:func:`resolve_commit`) and
    checked against the lock. A recorded commit that differs raises :class:`RevisionChanged`
    (one line: both commits, the lock, and how to update) unless ``update``."""
    if lock is None or is_commit(revision):
        return revision, None
    key = lock_key(repo_id, revision, repo_type)
    commit = resolve_commit(repo_id, revision, repo_type, token)
    recorded = read_lock(lock).get(key, {}).get("commit")
    if recorded and recorded != commit and not update:
        raise RevisionChanged(
            f"{lock}: {repo_type} {repo_id} revision '{revision}' was recorded as commit {recorded}, the hub now "
            f"resolves it to {commit}; to keep the recorded weights pin revision {recorded}, to take the new ones "
            f"rerun with update_revisions: true (--config update_revisions=true)"
        )
    return commit, key
