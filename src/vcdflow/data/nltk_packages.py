"""Pinned NLTK data packages for CHAIR and AMBER, installed ahead of scoring (never at scoring time).

CHAIR (OPERA ``chair.py``) and AMBER (``inference.py``) call ``nltk.word_tokenize``,
``nltk.pos_tag`` and ``WordNetLemmatizer``.  NLTK >= 3.9 (the project pins 3.10.4) loads
``punkt_tab`` and ``averaged_perceptron_tagger_eng``; older NLTK loads ``punkt`` and
``averaged_perceptron_tagger``; both need ``wordnet``.  Tagger and lemmatizer data shift CHAIR
scores, so the zips are pinned by commit of ``nltk/nltk_data`` and verified by size + sha256.

Pin: ``nltk/nltk_data`` commit ``550b6625bcef1f2abff2ff770a5a0d272c9c6b2a`` (branch gh-pages, the
branch NLTK's downloader reads), URL
``https://raw.githubusercontent.com/nltk/nltk_data/<commit>/packages/<subdir>/<id>.zip``.

Provenance of the numbers (see each package's ``note``):

* ``subdir``/``unzip``/``size``/``unzipped_size``/``md5`` of punkt, averaged_perceptron_tagger and
  wordnet are the ``index.xml`` entries of the stored nltk_data snapshot (gh-pages commit
  ``5db857e6``, 2023-02-02).  Their git blob ids there (punkt ``da7ffbd1``, tagger ``d5bfb685``,
  wordnet ``3c68cd20``) are the ones recorded for commit ``550b6625`` by independent third-party
  manifests, so the same bytes are pinned.  The tagger zip itself was hashed here (md5 and sha256
  match).
* punkt_tab and averaged_perceptron_tagger_eng were added to nltk_data in 2024, after the stored
  snapshot: their size/sha256/blob come from several independent third-party manifests that pin
  commit ``550b6625`` and agree with each other (and, for the older packages, with the index).

Layout produced by :func:`install_nltk_data` (NLTK's own downloader layout, so ``NLTK_DATA`` or
``nltk.data.path.append(dest_dir)`` finds it)::

    dest_dir/tokenizers/punkt_tab.zip   dest_dir/tokenizers/punkt_tab/...
    dest_dir/taggers/averaged_perceptron_tagger_eng.zip   .../averaged_perceptron_tagger_eng/...
    dest_dir/corpora/wordnet.zip        (index says unzip="0": NLTK reads wordnet from the zip)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .download import check_offline, download, extract, hash_file

NLTK_DATA_REPO = "nltk/nltk_data"
NLTK_DATA_COMMIT = "550b6625bcef1f2abff2ff770a5a0d272c9c6b2a"
BASE_URL = f"https://raw.githubusercontent.com/{NLTK_DATA_REPO}/{NLTK_DATA_COMMIT}/packages"
MARKER = ".vcdflow-sha256"  # written inside an extracted package folder; names the zip it came from


@dataclass(frozen=True)
class NltkPackage:
    """One nltk_data package zip (fields as in nltk_data ``index.xml`` plus pinned digests)."""

    id: str
    subdir: str  # corpora | tokenizers | taggers
    size: int  # zip bytes
    sha256: str
    unzip: bool  # index.xml ``unzip``: extract the zip next to it
    md5: str | None = None  # index.xml ``checksum`` (md5) where the stored index has it
    unzipped_size: int | None = None
    git_blob: str | None = None  # git blob id of the zip at NLTK_DATA_COMMIT
    checksum_status: str = "third-party"  # verified | third-party
    note: str = ""

    def url(self, base_url: str = BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.subdir}/{self.id}.zip"

    def zip_path(self, dest_dir: str | os.PathLike) -> Path:
        return Path(dest_dir) / self.subdir / f"{self.id}.zip"

    def folder(self, dest_dir: str | os.PathLike) -> Path:
        return Path(dest_dir) / self.subdir / self.id


PACKAGES: dict[str, NltkPackage] = {
    p.id: p
    for p in (
        NltkPackage(
            id="punkt_tab",
            subdir="tokenizers",
            size=4_319_076,
            unzip=True,
            sha256="e57f64187974277726a3417ca6f181ec5403676c717672eef6a748a7b20e0106",
            unzipped_size=10_885_330,
            git_blob="5e5ff6137d5ee6025e400d1c3a7b21914c48b635",
            note="Punkt sentence tokenizer tables (NLTK >= 3.9, used by word_tokenize). Size/sha256/"
            "blob from third-party manifests pinning 550b6625 (several agree); not in the "
            "stored 2023 index.",
        ),
        NltkPackage(
            id="averaged_perceptron_tagger_eng",
            subdir="taggers",
            size=1_539_115,
            unzip=True,
            sha256="6025f530624335c67d6547d44757b357b4e79bae030a0383e9887a92c1718f0b",
            unzipped_size=5_703_817,
            git_blob="b792e19546a5711218a05f4029ef17c8d62cd839",
            note="English averaged-perceptron POS tagger in JSON (NLTK >= 3.9, used by pos_tag). "
            "Size/sha256/blob from third-party manifests pinning 550b6625 (several agree).",
        ),
        NltkPackage(
            id="wordnet",
            subdir="corpora",
            size=10_775_600,
            unzip=False,
            sha256="cbda5ea6eef7f36a97a43d4a75f85e07fccbb4f23657d27b4ccbc93e2646ab59",
            md5="b3f38606f626e54c6f060548546f71f0",
            unzipped_size=36_353_991,
            git_blob="3c68cd207844f071a5206f7fbed23e5c607ec02f",
            note="WordNet 3.0 (WordNetLemmatizer). Size/md5/unzip from index.xml of the stored "
            "snapshot (blob 3c68cd20, the blob third parties record at 550b6625); sha256 from "
            "third-party manifests.",
        ),
        NltkPackage(
            id="punkt",
            subdir="tokenizers",
            size=13_905_355,
            unzip=True,
            sha256="51c3078994aeaf650bfc8e028be4fb42b4a0d177d41c012b6a983979653660ec",
            md5="8dd1d8760a0976f96e5c262decd75165",
            unzipped_size=37_245_719,
            git_blob="da7ffbd1e6fd6cc5c2f6879c2d4da23c7691944c",
            note="Pickled Punkt models for NLTK < 3.9 (OPERA-era environments). Size/md5 from the "
            "stored index.xml; sha256 from third-party manifests; same blob id.",
        ),
        NltkPackage(
            id="averaged_perceptron_tagger",
            subdir="taggers",
            size=2_526_731,
            unzip=True,
            sha256="e1f13cf2532daadfd6f3bc481a49859f0b8ea6432ccdcd83e6a49a5f19008de9",
            md5="05c91d607ee1043181233365b3f76978",
            unzipped_size=6_138_625,
            git_blob="d5bfb6852aa5d288c8f33b3f0ef0fde343afa405",
            checksum_status="verified",
            note="Pickled POS tagger for NLTK < 3.9. md5 and sha256 computed here from the blob in "
            "the stored nltk_data snapshot (matches index.xml and third-party manifests).",
        ),
    )
}

#: packages CHAIR/AMBER need with the project's NLTK (>= 3.9)
DEFAULT_PACKAGES: tuple[str, ...] = ("punkt_tab", "averaged_perceptron_tagger_eng", "wordnet")
#: the same for NLTK < 3.9 (as OPERA/AMBER were run originally)
LEGACY_PACKAGES: tuple[str, ...] = ("punkt", "averaged_perceptron_tagger", "wordnet")


def _resolve(packages: Iterable[str | NltkPackage]) -> list[NltkPackage]:
    out = []
    for p in packages:
        if isinstance(p, NltkPackage):
            out.append(p)
        elif p in PACKAGES:
            out.append(PACKAGES[p])
        else:
            raise KeyError(f"unknown NLTK package {p!r}; pinned packages: {sorted(PACKAGES)}")
    return out


def _extract_package(pkg: NltkPackage, zip_path: Path, dest_dir: Path, progress: bool) -> None:
    """Extract ``zip_path`` so that ``<subdir>/<id>/`` appears in one rename, with a marker."""
    final = pkg.folder(dest_dir)
    marker = final / MARKER
    if marker.is_file() and marker.read_text().strip() == pkg.sha256:
        return
    parent = final.parent
    stage = Path(tempfile.mkdtemp(prefix=f".{pkg.id}-", dir=parent))
    try:
        extract(zip_path, stage, progress=progress)
        staged = stage / pkg.id
        if not staged.is_dir():
            found = sorted(p.name for p in stage.iterdir())
            raise ValueError(f"{zip_path}: expected a top-level folder {pkg.id}/ in the zip, found {found}")
        (staged / MARKER).write_text(pkg.sha256 + "\n")
        if final.exists():
            shutil.rmtree(final)  # stale or partial copy from another version
        os.replace(staged, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def install_nltk_data(
    dest_dir: str | os.PathLike,
    packages: Sequence[str | NltkPackage] = DEFAULT_PACKAGES,
    *,
    offline: bool = False,
    progress: bool = True,
    base_url: str = BASE_URL,
    session=None,
    retries: int = 3,
    timeout: float = 60,
) -> Path:
    """Download (verified: size + sha256, and md5 where the index has it) and unpack pinned NLTK
    packages into NLTK's layout under ``dest_dir``; return ``dest_dir``.

    Idempotent: verified zips are not downloaded again and an extracted folder carrying the
    marker of the same sha256 is not extracted again.  ``offline=True`` touches no network: every
    zip must already be in place (one error names each missing zip), then folders are unpacked
    from them.  ``base_url``: override of the pinned raw.githubusercontent URL prefix (mirrors,
    tests).  Use the result with ``nltk.data.path.insert(0, str(dest_dir))`` or ``NLTK_DATA``.
    """
    dest_dir = Path(dest_dir)
    pkgs = _resolve(packages)
    if offline:
        check_offline([(p.zip_path(dest_dir), f"sha256:{p.sha256}") for p in pkgs], progress=progress)
    for pkg in pkgs:
        zpath = download(
            pkg.url(base_url),
            pkg.zip_path(dest_dir),
            sha256=pkg.sha256,
            md5=pkg.md5,
            size=pkg.size,
            offline=offline,
            progress=progress,
            session=session,
            retries=retries,
            timeout=timeout,
        )
        if pkg.unzip:
            _extract_package(pkg, zpath, dest_dir, progress)
    return dest_dir


def nltk_data_status(
    dest_dir: str | os.PathLike, packages: Sequence[str | NltkPackage] = DEFAULT_PACKAGES
) -> dict[str, bool]:
    """``{package id: installed and verified}`` without network (zip sha256 + extracted marker)."""
    dest_dir = Path(dest_dir)
    out = {}
    for pkg in _resolve(packages):
        z = pkg.zip_path(dest_dir)
        ok = z.is_file() and z.stat().st_size == pkg.size and hash_file(z, ["sha256"])["sha256"] == pkg.sha256
        if ok and pkg.unzip:
            m = pkg.folder(dest_dir) / MARKER
            ok = m.is_file() and m.read_text().strip() == pkg.sha256
        out[pkg.id] = ok
    return out
