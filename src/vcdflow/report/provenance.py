"""Provenance of a report: config, code version, packages, hardware, dates, data checksums.

:func:`collect_provenance` gathers what the machine rendering the report knows (read-only
git queries, installed package versions, CPU/GPU, time); :func:`input_checksums` adds the
md5 of every file the report read. Hardware of the *decoding* machines is taken from the
result files' ``.meta.json`` sidecars when they record it (keys ``hardware``/``device``).
"""

from __future__ import annotations

import datetime as _dt
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
    "vcdflow", "torch", "transformers", "tokenizers", "diffusers", "huggingface_hub", "accelerate",
    "numpy", "scipy", "pandas", "pillow", "nltk", "matplotlib", "seaborn", "jinja2", "snakemake",
)


def _git(repo: Path, *args: str) -> str | None:
    try:
        # --no-optional-locks: never refresh the index (a report only reads the repository).
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=10)
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
        out.append({
            "path": str(p),
            "md5": file_digest(p, "md5"),
            "bytes": st.st_size,
            "modified": _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds"),
        })
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
