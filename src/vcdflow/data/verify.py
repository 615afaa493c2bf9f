"""Pre-placed benchmark files checked against their pinned checksums before anything decodes.

The download rules verify what they download, but Snakemake skips a rule whose output already
exists, so a file placed by hand (``offline: true``, or copied from elsewhere) would otherwise be
used as it is: an 18-line POPE file under a path that claims the 3,000-question version, a
truncated AMBER query file. :func:`check_pinned` runs once per workflow invocation, before the
first job (``onstart`` in the Snakefile; a dry run skips it), and stops the run with one line per
bad file naming the file, the checksum it should have, the one it has and the version it claims.

What a file claims (:func:`pinned_files`, ``world: real`` only; the demo world builds its files):

* POPE (every ``pope`` / ``pope_<name>`` entry without ``build``): ``dataset`` and ``version``
  name a file of the registry (:func:`vcdflow.data.registry.pope_files`, md5 computed from the
  pinned bytes of AoiDragon/POPE); each split's ``questions`` file must have that md5.
* AMBER: the data files under ``root`` (annotations, relation, safe words, each task's query
  file) claim junyangwang0410/AMBER at the pinned commit (``version`` default ``534babf``;
  sha256 from the stored snapshot's git blobs).
* A file of your own (a subset, your own data): give the entry a ``version`` of your own and
  its files' checksums, ``checksums: {<path>: "md5:<hex>"}`` (or ``sha256:``). A registry
  version cannot be given other checksums: a file that claims ``head`` is checked against the
  registry's, so the sidecars' ``version`` is only ever what the bytes are.

A missing file is left to its download rule (which verifies what it fetches, or, offline, names
the file). Digests are cached by path, size and modification time (``$VCDFLOW_CACHE``), so a
second run rereads nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import registry

#: AMBER's pinned commit, the ``version`` an AMBER entry claims by default
AMBER_VERSION = registry.AMBER_COMMIT[:7]


@dataclass(frozen=True)
class Pinned:
    """A file and the checksum (``algo:hex``) the version it claims gives it."""

    path: str
    checksum: str
    claim: str  # e.g. "POPE coco version head (AoiDragon/POPE@109985c)"
    key: str  # the config key that makes the claim


class PinnedFileError(ValueError):
    """One or more pre-placed files differ from their pinned checksums (one line each)."""


def _declared(entry: Mapping, name: str, path: str, version: str) -> Pinned:
    """The checksum a config declares for its own file (``checksums``); ConfigError-like
    ``ValueError`` naming the key when the file has none."""
    declared = dict(entry.get("checksums") or {})
    if path not in declared:
        raise ValueError(
            f"config benchmarks.{name}.version: {version!r} is not a pinned version, so each of its "
            f"files needs its checksum in benchmarks.{name}.checksums (missing: {path})"
        )
    return Pinned(
        path,
        str(declared[path]),
        f"{name} version {version} (config benchmarks.{name}.checksums)",
        f"benchmarks.{name}.checksums",
    )


def _no_override(entry: Mapping, name: str, pinned: Pinned) -> Pinned:
    declared = dict(entry.get("checksums") or {})
    if pinned.path in declared and str(declared[pinned.path]).lower() != pinned.checksum:
        raise ValueError(
            f"config benchmarks.{name}.checksums: {pinned.path} claims {pinned.claim} "
            f"({pinned.checksum}); give the file a version of your own to pin other bytes"
        )
    return pinned


def _pope(name: str, entry: Mapping, splits: list[str]) -> list[Pinned]:
    """Each split's question file, for the entry's ``version``; a ``questions`` path holding
    ``{version}`` (a paper protocol's own POPE files apply under it) also names, for every other
    pinned version of the dataset, the file that claims it."""
    if entry.get("build") or entry.get("dataset") == "demo" or not entry.get("questions"):
        return []
    version = str(entry.get("version") or registry.DEFAULT_POPE_VERSION)
    dataset = str(entry.get("dataset") or "coco")
    template = str(entry["questions"])
    versions = [version]
    if "{version}" in template:
        versions += [v for v in registry.POPE_COMMITS if v != version and _has(dataset, v)]
    out = []
    for v in versions:
        try:
            files = registry.pope_files(dataset, v)
        except KeyError:
            files = None
        for split in splits:
            path = template.format(split=split, version=v)
            if files is None:
                out.append(_declared(entry, name, path, v))
                continue
            canon = registry.pope_version(v)
            claim = f"POPE {dataset} {split} version {v} ({registry.POPE_REPO}@{canon})"
            out.append(
                _no_override(
                    entry, name, Pinned(path, f"md5:{files[split].md5}", claim, f"benchmarks.{name}.version")
                )
            )
    return list({p.path: p for p in out}.values())


def _has(dataset: str, version: str) -> bool:
    try:
        registry.pope_files(dataset, version)
    except KeyError:
        return False
    return True


def _amber(name: str, entry: Mapping, splits: list[str]) -> list[Pinned]:
    if not entry.get("root"):
        return []
    version = str(entry.get("version") or AMBER_VERSION)
    root = str(entry["root"])
    stems = ["annotations", "relation", "safe_words", *(f"query_{t}" for t in splits)]
    out = []
    for stem in stems:
        e = registry.get(f"amber/{stem}")
        sub = "query/" if stem.startswith("query_") else ""
        path = f"{root}/data/{sub}{e.filename}"
        if version != AMBER_VERSION:
            out.append(_declared(entry, name, path, version))
            continue
        claim = f"AMBER {e.filename} version {version} ({registry.AMBER_REPO}@{registry.AMBER_COMMIT[:7]})"
        out.append(
            _no_override(entry, name, Pinned(path, f"sha256:{e.sha256}", claim, f"benchmarks.{name}.version"))
        )
    return out


#: benchmark kind -> (config key, entry, its splits) -> the files it claims
PINNED_BY_KIND = {"pope": _pope, "amber": _amber}


def pinned_files(config: Mapping) -> list[Pinned]:
    """Every file of a ``world: real`` config that claims pinned bytes (see the module doc);
    ``ValueError`` naming the key for a version without checksums or an overridden one."""
    from ..benchmarks import kind_of
    from ..config import splits_of

    if config.get("world", "demo") != "real":
        return []
    out: list[Pinned] = []
    for name, entry in config["benchmarks"].items():
        fn = PINNED_BY_KIND.get(kind_of(name))
        if fn is not None:
            out.extend(fn(name, dict(entry or {}), splits_of(config, name)))
    return out


def cached_digest(path: str | os.PathLike, algo: str) -> str:
    """``algo`` hex digest of ``path``, cached on disk by real path, size and mtime."""
    from ..config import _read_cache, _write_cache
    from ..io import file_digest

    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{algo}"
    import hashlib

    record = f"digests/{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    hit = _read_cache(record)
    if isinstance(hit, dict) and hit.get("key") == key:
        return str(hit["digest"])
    digest = file_digest(path, algo)
    _write_cache(record, {"key": key, "digest": digest})
    return digest


def check_pinned(config: Mapping) -> list[Pinned]:
    """Verify every pinned file that exists (:func:`pinned_files`); :class:`PinnedFileError`
    with one line per mismatch: the file, the expected and the actual checksum, the version it
    claims and the key that claims it. Returns the files verified."""
    bad, ok = [], []
    for p in pinned_files(config):
        if not Path(p.path).is_file():
            continue  # its download rule fetches (and verifies) it, or names it offline
        algo, _, want = p.checksum.partition(":")
        have = cached_digest(p.path, algo)
        if have != want.lower():
            bad.append(
                f"{p.path}: {algo} {have}, but {p.claim} has {algo} {want} (config {p.key}); "
                f"place the pinned file, or give your own file a version and checksums"
            )
        else:
            ok.append(p)
    if bad:
        raise PinnedFileError(
            "pre-placed file(s) differ from their pinned checksums, nothing was decoded:\n" + "\n".join(bad)
        )
    return ok
