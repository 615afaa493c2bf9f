"""Provenance of a report: config, code version, packages, hardware, dates, data checksums.

:func:`collect_provenance` gathers what the machine rendering the report knows (read-only
git queries, installed package versions, CPU/GPU, time); :func:`input_checksums` adds the
md5 of every file the report read. Hardware of the *decoding* machines is taken from the
result files' ``.meta.json`` sidecars when they record it (keys ``hardware``/``device``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..io import config_hash, file_digest, read_json

#: Packages whose versions change results or the report.
PACKAGES = (
    "vcdflow",
    "torch",
    "transformers",
    "tokenizers",
    "diffusers",
    "huggingface_hub",
    "accelerate",
    "numpy",
    "scipy",
    "pandas",
    "pillow",
    "nltk",
    "matplotlib",
    "seaborn",
    "jinja2",
    "snakemake",
)


def _git(repo: Path, *args: str) -> str | None:
    try:
        # --no-optional-locks: never refresh the index (a report only reads the repository).
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit, branch and dirty flag of ``repo`` (default: the checkout holding this package)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[3]
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown (not a git checkout, or no commit yet)"}
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": _git(repo, "rev-parse", "--abbrev-ref", "HEAD") or "",
        "dirty": bool(status),
        "commit_date": _git(repo, "log", "-1", "--format=%cI") or "",
    }


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware_info() -> dict[str, Any]:
    """The rendering machine: OS, CPU, memory; GPUs only if torch is already imported."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")  # importing torch only to list GPUs is not worth seconds
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            else:
                info["gpus"] = []
        except Exception:  # noqa: BLE001 - a broken CUDA setup must not break the report
            pass
    return info


def collect_provenance(
    config: Mapping | None = None,
    *,
    repo: str | os.PathLike | None = None,
    packages: Iterable[str] = PACKAGES,
    extra: Mapping | None = None,
) -> dict[str, Any]:
    """Everything known about how a report's inputs were produced, as a JSON-able dict.

    Keys: ``generated_at`` (UTC ISO time), ``git``, ``packages``, ``hardware``,
    ``config`` and ``config_hash`` (when a config is given), plus ``extra`` merged on top.
    """
    out: dict[str, Any] = {
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(repo),
        "packages": package_versions(packages),
        "hardware": hardware_info(),
    }
    if config is not None:
        out["config"] = dict(config)
        out["config_hash"] = config_hash(dict(config))
    if extra:
        out.update(dict(extra))
    return out


def input_checksums(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """md5, size and modification time (UTC) of each existing input file, in order."""
    out = []
    for p in dict.fromkeys(Path(x) for x in paths):
        if not p.is_file():
            continue
        st = p.stat()
        out.append(
            {
                "path": str(p),
                "md5": file_digest(p, "md5"),
                "bytes": st.st_size,
                "modified": _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
        )
    return out


def result_dates(checksums: list[dict[str, Any]]) -> dict[str, str]:
    """Earliest and latest modification time among the listed inputs."""
    times = sorted(c["modified"] for c in checksums)
    return {"first": times[0], "last": times[-1]} if times else {}


def sidecar_hardware(result_paths: Iterable[str | os.PathLike]) -> list[str]:
    """Distinct ``hardware``/``device`` entries found in ``seed*.meta.json`` sidecars."""
    seen: dict[str, None] = {}
    for p in result_paths:
        p = str(p)
        if not p.endswith(".jsonl"):
            continue
        side = Path(p[: -len(".jsonl")] + ".meta.json")
        if not side.is_file():
            continue
        try:
            meta = read_json(side)
        except ValueError:
            continue
        for key in ("hardware", "device"):
            if meta.get(key):
                seen[str(meta[key])] = None
    return list(seen)


def _sidecar_of(path: str | os.PathLike) -> dict | None:
    p = str(path)
    if not p.endswith(".jsonl"):
        return None
    side = Path(p[: -len(".jsonl")] + ".meta.json")
    try:
        return read_json(side) if side.is_file() else None
    except ValueError:
        return None


def result_versions(path: str | os.PathLike) -> list[dict[str, str]]:
    """The distinct library-version sets a result was decoded with, from its sidecar's
    ``versions`` (a dict; a list when its shards ran under different versions) and its
    shards' own records, each with the ``model commit`` of the model folder when the sidecar
    records one (``model_source``: a hub download); empty when none is recorded."""
    meta = _sidecar_of(path)
    if not meta:
        return []

    def commit_of(rec: Mapping, default: str | None = None) -> str | None:
        src = rec.get("model_source")
        return src.get("commit") if isinstance(src, Mapping) else default

    top = commit_of(meta)
    flat = []
    for rec in [meta] + [s for s in meta.get("shards") or [] if isinstance(s, Mapping)]:
        found, commit = rec.get("versions"), commit_of(rec, top)
        for v in found if isinstance(found, list) else [found]:
            if isinstance(v, Mapping):
                flat.append({**v, **({"model commit": commit} if commit else {})})
    return [json.loads(k) for k in dict.fromkeys(json.dumps(dict(v), sort_keys=True) for v in flat)]


def version_conflicts(result_files: Mapping[tuple, str | os.PathLike]) -> dict[tuple, str]:
    """One note per comparison — ``(benchmark, split, model)``, one table block of the report —
    whose results were decoded under different library versions: for each library that differs,
    its versions and the method labels run with each (``transformers 5.24.0: vcd; 5.25.0:
    greedy, opera``). Comparisons whose results agree (or record no versions) are left out.

    ``result_files`` maps ``(benchmark, split, model, label, seed)`` to a result JSONL whose
    ``.meta.json`` sidecar records ``versions`` (:func:`vcdflow.runner.merge_sidecars`)."""
    groups: dict[tuple, dict[str, dict[str, set]]] = {}
    for key, path in result_files.items():
        bench, split, model, label = key[:4]
        per_pkg = groups.setdefault((bench, split, model), {})
        for versions in result_versions(path):
            for pkg, ver in versions.items():
                per_pkg.setdefault(pkg, {}).setdefault(str(ver), set()).add(str(label))
    notes = {}
    for comp, per_pkg in groups.items():
        parts = [
            f"{pkg} "
            + "; ".join(f"{ver}: {', '.join(sorted(labels))}" for ver, labels in sorted(vers.items()))
            for pkg, vers in sorted(per_pkg.items())
            if len(vers) > 1
        ]
        if parts:
            notes[comp] = "results decoded under different library versions or model weights — " + " | ".join(
                parts
            )
    return notes


def versions_in_use(result_files: Mapping[tuple, str | os.PathLike]) -> list[dict[str, Any]]:
    """Each distinct library-version set among the results, with how many results used it."""
    count: dict[str, int] = {}
    for path in result_files.values():
        for v in result_versions(path):
            k = json.dumps(v, sort_keys=True)
            count[k] = count.get(k, 0) + 1
    return [{"versions": json.loads(k), "n_results": n} for k, n in count.items()]
