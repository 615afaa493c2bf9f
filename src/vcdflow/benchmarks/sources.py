"""Where the files of MMVP, HallusionBench, LLaVA-Bench (in the wild) and MMHal-Bench come from,
with checksums where they could be obtained (rules ``download_<kind>`` of
``workflow/rules/benchmarks_extra.smk``).

Every file is fetched with :func:`vcdflow.data.download.download` (streamed, resumable, moved
into place only after its checks). A file with a known ``sha256`` is verified against it
(``checksum_status = "verified"``: computed here from the pinned bytes). A file without one is
**UNVERIFIED**: accepted as downloaded, and the sha256 actually seen is recorded in
``<dest>/SHA256SUMS`` (``<sha256>  <path>  UNVERIFIED``), so a later run or another site can
compare. ``offline=True`` only checks that pre-placed files exist (and verified ones match).

* ``hallusionbench``: ``HallusionBench.json`` from ``tianyi-lab/HallusionBench@744007c``
  (sha256 computed here from that commit's git blob: verified); the images
  ``hallusion_bench.zip`` from the Google Drive link of that README (line 68/78): UNVERIFIED.
* ``mmvp``: ``Questions.csv`` and ``MMVP Images/<1..300>.jpg`` from the HF dataset ``MMVP/MMVP``
  (``tsb0601/MMVP README.md:39``): UNVERIFIED (the hub was not reachable from the machine that
  wrote this; revision ``main``).
* ``llavabench``: ``questions.jsonl``, ``context.jsonl``, ``answers_gpt4.jsonl`` and
  ``images/001.jpg``..``024.jpg`` from the HF dataset ``liuhaotian/llava-bench-in-the-wild``
  (``haotian-liu/LLaVA docs/Evaluation.md:130``): UNVERIFIED (file names as the LLaVA scripts
  read them; revision ``main``).
* ``mmhal``: ``response_template.json`` and ``test_data.zip`` (extracted: ``images/``) from the
  HF dataset ``Shengcao1006/MMHal-Bench``: UNVERIFIED (file names from third-party download
  scripts; revision ``main``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

HB_COMMIT = "744007c232c292942c7f80eb61edb2465482da31"
_HF = "https://huggingface.co/datasets/{repo}/resolve/{rev}/{path}"


@dataclass(frozen=True)
class File:
    path: str  # relative to the benchmark folder
    url: str
    sha256: str | None = None  # None: UNVERIFIED (the sha256 seen is recorded)
    unzip: bool = False  # extract into the folder (the archive is kept in downloads/)


def _hf(repo: str, path: str, rev: str = "main", **kw) -> File:
    return File(path, _HF.format(repo=repo, rev=rev, path=quote(path)), **kw)


SOURCES: dict[str, tuple[File, ...]] = {
    "hallusionbench": (
        File(
            "HallusionBench.json",
            f"https://raw.githubusercontent.com/tianyi-lab/HallusionBench/{HB_COMMIT}/HallusionBench.json",
            sha256="ca6e0fb677dd56e5fb0e2700d06c58d01f8a6ae66e0f1773b2ac48c0a095d051",
        ),
        File(
            "downloads/hallusion_bench.zip",
            "https://drive.usercontent.google.com/download?id=1eeO1i0G9BSZTE1yd5XeFwmrbe1hwyf_0"
            "&export=download&confirm=t",
            unzip=True,
        ),
    ),
    "mmvp": (
        _hf("MMVP/MMVP", "Questions.csv"),
        *(_hf("MMVP/MMVP", f"MMVP Images/{i}.jpg") for i in range(1, 301)),
    ),
    "llavabench": tuple(
        _hf("liuhaotian/llava-bench-in-the-wild", p)
        for p in (
            "questions.jsonl",
            "context.jsonl",
            "answers_gpt4.jsonl",
            *(f"images/{i:03d}.jpg" for i in range(1, 25)),
        )
    ),
    "mmhal": (
        _hf("Shengcao1006/MMHal-Bench", "response_template.json"),
        _hf("Shengcao1006/MMHal-Bench", "test_data.zip", unzip=True),
    ),
}


def fetch_benchmark(
    kind: str, dest: str | os.PathLike, *, offline: bool = False, progress: bool = False
) -> Path:
    """Download (or, offline, check) every file of ``kind`` into the folder ``dest``; write
    ``dest/SHA256SUMS``. Returns ``dest``."""
    from ..data.download import check_offline, download, extract, hash_file

    if kind not in SOURCES:
        raise ValueError(f"no download sources for benchmark {kind!r}; known: {', '.join(SOURCES)}")
    dest = Path(dest)
    lines = []
    for f in SOURCES[kind]:
        target = dest / f.path
        if offline:
            check_offline([(target, f"sha256:{f.sha256}" if f.sha256 else None)])
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            download(f.url, target, sha256=f.sha256, progress=progress)
        seen = hash_file(target, ["sha256"])["sha256"]
        status = "verified" if f.sha256 else "UNVERIFIED"
        if not f.sha256:
            log.warning("%s: no published checksum; accepted unverified (sha256 seen %s)", target, seen)
        lines.append(f"{seen}  {f.path}  {status}\n")
        if f.unzip:
            extract(target, dest, progress=progress)
    (dest / "SHA256SUMS").write_text("".join(lines))
    return dest
