"""Declarative table of the real benchmark files: URL, size and checksums, with provenance.

Every :class:`Entry` says where its numbers come from (``source``) and how far they can be
trusted (``checksum_status``):

* ``verified`` - the checksum was computed here from the exact pinned bytes (the POPE files in
  ``/work/shared/data/pope`` and git blobs of stored snapshots of AoiDragon/POPE,
  junyangwang0410/AMBER, BradyFU/Awesome-Multimodal-Large-Language-Models, nltk/nltk_data);
* ``third-party`` - copied from other repositories or hub pages and not checked here (COCO
  publishes no checksums; the COCO md5/sha1 values come from download scripts of other
  projects, see the spec ``benchmarks.md`` section 5);
* ``none`` - no checksum known: the file is accepted as downloaded (size unknown too unless
  given).  GQA images, AMBER images (Google Drive) are in this group.

Names (``get(name)``)::

    coco/val2014                      coco/annotations_trainval2014
    pope/<dataset>/<version>/<split>  dataset in coco|aokvqa|gqa, version 109985c|e3e3926|edebdda
    gqa/images
    mme/lmms-lab (HF snapshot)        mme/lmms-lab/test-0000{0..3} (parquet shards, plain HTTP)
    mme/original-zip                  mme/eval_tool
    amber/<file stem>                 amber/images
    spacy/en_core_web_lg
    nltk/<package id>                 (see :mod:`vcdflow.data.nltk_packages`)

POPE versions (AoiDragon/POPE; RUCAIBox/POPE has the same history up to 3df3ba1):

* ``109985c`` (default; aliases ``head``, ``08d957b``) - 3000 questions per split, every typo
  fixed; blobs identical at 08d957b (HEAD, "POPEv2" upload).  Used by VCD and later work.
* ``e3e3926`` (aliases ``llava-1.5``, ``opera``, ``28f884a``) - the version LLaVA-1.5 and OPERA
  evaluate: COCO only, random has 2910 questions, "imange" typos.  No A-OKVQA/GQA files.
* ``edebdda`` - COCO only, 3000 questions; its adversarial split still has 57 "imange" typos
  (the adversarial file VCD ships); random/popular equal 109985c.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .download import download, hf_snapshot

POPE_REPO = "AoiDragon/POPE"
POPE_COMMITS = {
    "109985c": "109985c74a00a88ba5341f9b0c1d4900f2a1f789",
    "e3e3926": "e3e39262c85a6a83f26cf5094022a782cb0df58d",
    "edebdda": "edebdda36a969afac02bc49972c48c38e24dc6fe",
}
POPE_VERSION_ALIASES = {
    "head": "109985c",
    "default": "109985c",
    "08d957b": "109985c",
    "llava-1.5": "e3e3926",
    "llava1.5": "e3e3926",
    "opera": "e3e3926",
    "28f884a": "e3e3926",
}
DEFAULT_POPE_VERSION = "109985c"
POPE_DATASETS = ("coco", "aokvqa", "gqa")
POPE_SPLITS = ("random", "popular", "adversarial")

AMBER_REPO = "junyangwang0410/AMBER"
AMBER_COMMIT = "534babf6bbfcce2e735c26289dedfb21cef3c939"  # HEAD 2024-01-15; data/ unchanged since 5e1fd52
MME_HF_REVISION = "d6c9023f017b564f7b3ccccf5348166bce8fdbcd"  # lmms-lab/MME main, 2374 rows
MME_EVAL_COMMIT = "dd2950902889cd614d4edf606827240166d29381"  # BradyFU/... branch Evaluation


@dataclass(frozen=True)
class Entry:
    """One downloadable file (or, for ``kind == "hf"``, one pinned hub snapshot)."""

    name: str
    url: str | None
    filename: str
    size: int | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    source: str = ""  # provenance of URL and numbers
    checksum_status: str = "none"  # verified | third-party | none
    kind: str = "http"  # http | hf | gdrive
    members: tuple[str, ...] | None = None  # zip members to extract (None: all / not a zip)
    hf: dict[str, Any] | None = field(default=None, compare=False)
    note: str = ""

    @property
    def verified(self) -> bool:
        return self.checksum_status == "verified"

    def checksum(self) -> str | None:
        """Strongest known checksum as ``"algo:hex"`` (for :func:`check_offline`), or None."""
        for algo in ("sha256", "sha1", "md5"):
            val = getattr(self, algo)
            if val:
                return f"{algo}:{val}"
        return None

    def checksums(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ("md5", "sha1", "sha256") if getattr(self, a)}

    def fetch(self, dest: str | os.PathLike, **kwargs) -> Path:
        """Download this entry to ``dest`` (a file; for ``kind == "hf"`` a folder) with all its
        known checks.  ``kwargs`` go to :func:`download` (``offline``, ``progress``, ...)."""
        if self.kind == "hf":
            h = self.hf or {}
            return hf_snapshot(
                h["repo_id"],
                dest,
                revision=h["revision"],
                repo_type=h.get("repo_type", "model"),
                allow_patterns=h.get("allow_patterns"),
                offline=kwargs.get("offline", False),
            )
        if not self.url:
            raise ValueError(f"{self.name}: no download URL; {self.note}")
        return download(
            self.url, dest, md5=self.md5, sha1=self.sha1, sha256=self.sha256, size=self.size, **kwargs
        )


# ----------------------------------------------------------------------------- POPE
# (dataset, split) -> (path in repo, bytes, md5) per version.  md5/sizes computed here from the
# files in /work/shared/data/pope (109985c and e3e3926) and from git blobs of the stored
# AoiDragon/POPE snapshot (all three versions; they agree).
_POPE_TABLE: dict[str, dict[tuple[str, str], tuple[str, int, str]]] = {
    "109985c": {
        ("coco", "random"): ("output/coco/coco_pope_random.json", 368166, "dc9b6c41ad832c48da758cfa85b37d2c"),
        ("coco", "popular"): (
            "output/coco/coco_pope_popular.json",
            370190,
            "64902313fb995e09fa478de9741910d7",
        ),
        ("coco", "adversarial"): (
            "output/coco/coco_pope_adversarial.json",
            370401,
            "3b1a278f8d61acd21b27020d0af817cb",
        ),
        ("aokvqa", "random"): (
            "output/seem/aokvqa/aokvqa_pope_seem_random.json",
            495827,
            "fefaa62a6a849aa5d219c0dfc8fbbdac",
        ),
        ("aokvqa", "popular"): (
            "output/seem/aokvqa/aokvqa_pope_seem_popular.json",
            492597,
            "a2ead7d2a8e19ad7b570f3bcfd1d279a",
        ),
        ("aokvqa", "adversarial"): (
            "output/seem/aokvqa/aokvqa_pope_seem_adversarial.json",
            494039,
            "93a94c763f52c9108678616e92ce47ac",
        ),
        ("gqa", "random"): (
            "output/seem/gqa/gqa_pope_seem_random.json",
            441272,
            "fb7febb7630ea7c16870ed744e81815d",
        ),
        ("gqa", "popular"): (
            "output/seem/gqa/gqa_pope_seem_popular.json",
            438334,
            "d70bdec01a590524073e371819566c7d",
        ),
        ("gqa", "adversarial"): (
            "output/seem/gqa/gqa_pope_seem_adversarial.json",
            439786,
            "c92e5e77da5ecec97e3f626580d7e8ad",
        ),
    },
    "e3e3926": {
        ("coco", "random"): ("output/coco/coco_pope_random.json", 360212, "b635b20061b1262cba65ed5bef7660a2"),
        ("coco", "popular"): (
            "output/coco/coco_pope_popular.json",
            370234,
            "8233e15e9bb7587b03a624b38a1cee74",
        ),
        ("coco", "adversarial"): (
            "output/coco/coco_pope_adversarial.json",
            370459,
            "b3f9df71709d436462611d7e88ce1447",
        ),
    },
    "edebdda": {
        ("coco", "random"): ("output/coco/coco_pope_random.json", 368166, "dc9b6c41ad832c48da758cfa85b37d2c"),
        ("coco", "popular"): (
            "output/coco/coco_pope_popular.json",
            370190,
            "64902313fb995e09fa478de9741910d7",
        ),
        ("coco", "adversarial"): (
            "output/coco/coco_pope_adversarial.json",
            370458,
            "d7e0cec9b2ea24bed9614eec4b28a50f",
        ),
    },
}
_POPE_NOTES = {
    "109985c": "3000 questions per split (1500 yes / 1500 no); COCO files are JSON lines "
    "(popular/adversarial with CRLF), A-OKVQA/GQA files are pretty-printed JSON arrays.",
    "e3e3926": "LLaVA-1.5/OPERA version: random 2910 questions (1500 yes / 1410 no); "
    "'imange' typos in some questions. COCO only.",
    "edebdda": "VCD-era COCO version: random/popular identical to 109985c; adversarial keeps 57 "
    "'imange' typos. COCO only; md5 from the git blob, not in /work/shared.",
}


def pope_version(version: str | None) -> str:
    """Canonical POPE version key for ``version`` or an alias (None -> default)."""
    v = DEFAULT_POPE_VERSION if version is None else str(version).strip().lower()
    v = POPE_VERSION_ALIASES.get(v, v)
    if v not in _POPE_TABLE:
        raise KeyError(
            f"unknown POPE version {version!r}; known: {sorted(_POPE_TABLE)} "
            f"and aliases {sorted(POPE_VERSION_ALIASES)}"
        )
    return v


def _pope_entry(dataset: str, version: str, split: str) -> Entry:
    path, size, md5 = _POPE_TABLE[version][(dataset, split)]
    commit = POPE_COMMITS[version]
    return Entry(
        name=f"pope/{dataset}/{version}/{split}",
        url=f"https://raw.githubusercontent.com/{POPE_REPO}/{commit}/{path}",
        filename=path.rsplit("/", 1)[1],
        size=size,
        md5=md5,
        source=f"{POPE_REPO}@{commit}:{path}; size/md5 computed here from the pinned bytes",
        checksum_status="verified",
        note=_POPE_NOTES[version],
    )


def pope_files(dataset: str = "coco", version: str | None = DEFAULT_POPE_VERSION) -> dict[str, Entry]:
    """``{split: Entry}`` of the official POPE files of ``dataset`` at ``version``."""
    v = pope_version(version)
    if dataset not in POPE_DATASETS:
        raise KeyError(f"unknown POPE dataset {dataset!r}; known: {list(POPE_DATASETS)}")
    if (dataset, "random") not in _POPE_TABLE[v]:
        have = sorted(k for k, t in _POPE_TABLE.items() if (dataset, "random") in t)
        raise KeyError(
            f"POPE version {v} has no {dataset} files (only coco); {dataset} exists in versions {have}"
        )
    return {s: _pope_entry(dataset, v, s) for s in POPE_SPLITS}


# ----------------------------------------------------------------------------- static table
_COCO_SRC = (
    "images.cocodataset.org (COCO publishes no checksums); size and md5/sha1 from "
    "third-party download scripts (spec benchmarks.md section 5)"
)

_STATIC: list[Entry] = [
    Entry(
        name="coco/val2014",
        url="http://images.cocodataset.org/zips/val2014.zip",
        filename="val2014.zip",
        size=6_645_013_297,
        md5="a3d79f5ed8d289b7a7554ce06a5782b3",
        sha1="fbedd73593f242db65cce6bcefde193fcedcc5c0",
        source=_COCO_SRC + ": md5 from salesforce/LAVIS builder comments, sha1 from an "
        "MLCommons-style coco2014 script",
        checksum_status="third-party",
        members=("val2014/",),
        note="40,504 images COCO_val2014_%012d.jpg under val2014/. Used by POPE (COCO, "
        "A-OKVQA) and CHAIR. If a check fails, the bytes are kept in val2014.zip.bad.",
    ),
    Entry(
        name="coco/annotations_trainval2014",
        url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        filename="annotations_trainval2014.zip",
        size=252_872_794,
        md5="d3e24dc9f5bda3e7887a1e6a5ff34c0c",
        sha1="8e0b9df54c175f1688400e98d1a97f292e726870",
        source=_COCO_SRC + ": md5 from R torchvision coco_detection_dataset",
        checksum_status="third-party",
        members=(
            "annotations/instances_train2014.json",
            "annotations/instances_val2014.json",
            "annotations/captions_train2014.json",
            "annotations/captions_val2014.json",
        ),
        note="CHAIR (OPERA chair.py) loads all four JSONs (train+val instances and captions).",
    ),
    Entry(
        name="gqa/images",
        url="https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip",
        filename="gqa_images.zip",
        size=None,
        source="GQA project page (Stanford)",
        checksum_status="none",
        members=("images/",),
        note="About 20.3 GB (unverified); no published checksum. Holds images/<vg id>.jpg used by GQA-POPE.",
    ),
    # --- MME
    Entry(
        name="mme/lmms-lab",
        url=None,
        filename="MME",
        kind="hf",
        hf={
            "repo_id": "lmms-lab/MME",
            "revision": MME_HF_REVISION,
            "repo_type": "dataset",
            "allow_patterns": ["data/test-*.parquet"],
        },
        source=f"huggingface.co/datasets/lmms-lab/MME@{MME_HF_REVISION}",
        checksum_status="third-party",
        note="2374 rows (question_id, image, question, answer, category) in 4 parquet shards; "
        "the hub client verifies each LFS file's sha256. lmms-eval now points to "
        "lmms-lab-encoder/MME (same files, unverified).",
    ),
    Entry(
        name="mme/original-zip",
        url="https://huggingface.co/datasets/darkyarding/MME/resolve/main/MME_Benchmark_release_version.zip",
        filename="MME_Benchmark_release_version.zip",
        size=None,
        sha256="1c4b79b494eae354df8fc0728c64fe4b89e46b4c609d36003be15dace6d8e3d7",
        source="darkyarding/MME (commit 7056f44 'Upload MME_Benchmark_release_version.zip'); "
        "sha256 from the hub file page (Git LFS details), not checked here",
        checksum_status="third-party",
        note="Original MME release (about 200 MB): one folder per subtask.",
    ),
    Entry(
        name="mme/eval_tool",
        url="https://raw.githubusercontent.com/BradyFU/Awesome-Multimodal-Large-Language-"
        f"Models/{MME_EVAL_COMMIT}/tools/eval_tool.zip",
        filename="eval_tool.zip",
        size=107_320,
        md5="7ab11e398377ad4c35e46499164e705b",
        sha256="b8125e2a7c3418e5761c12b3cfe4f1624b3c53ba44009e75b7d3f797d3d8acee",
        source=f"BradyFU/Awesome-Multimodal-Large-Language-Models@{MME_EVAL_COMMIT} "
        "(branch Evaluation): tools/eval_tool.zip, hashed here from the git blob",
        checksum_status="verified",
        note="Official MME scorer (calculation.py).",
    ),
    # --- AMBER images and spaCy
    Entry(
        name="amber/images",
        url="https://drive.usercontent.google.com/download?id=1MaCHgtupcZUjf007anNl4_MV0o4DjXvl"
        "&export=download&confirm=t",
        filename="amber_images.zip",
        size=None,
        kind="gdrive",
        source="Google Drive file id 1MaCHgtupcZUjf007anNl4_MV0o4DjXvl (AMBER README)",
        checksum_status="none",
        note="1004 images AMBER_{id}.jpg. No checksum or size is published; Google Drive may "
        "answer with an HTML page instead of the zip (then extraction fails: download "
        "it by hand and pre-place it).",
    ),
    Entry(
        name="chair/synonyms",
        url="https://raw.githubusercontent.com/LisaAnne/Hallucination/6e4d33c4bedf6dfcd24c61bf527f40714717be47/data/synonyms.txt",
        filename="synonyms.txt",
        size=3577,
        md5="fdf03d16beb2507696d1b881c958904d",
        source="LisaAnne/Hallucination@6e4d33c4bedf6dfcd24c61bf527f40714717be47:data/synonyms.txt (md5 checked here from the git blob); byte-identical to the string embedded "
        "in OPERA's chair.py (md5 from shared/data, checked here)",
        checksum_status="verified",
        note="80 lines, one COCO category per line, node word first (CHAIR's parsing quirks kept).",
    ),
    Entry(
        name="spacy/en_core_web_lg",
        url="https://github.com/explosion/spacy-models/releases/download/"
        "en_core_web_lg-3.8.0/en_core_web_lg-3.8.0-py3-none-any.whl",
        filename="en_core_web_lg-3.8.0-py3-none-any.whl",
        size=None,
        sha256="293e9547a655b25499198ab15a525b05b9407a75f10255e405e8c3854329ab63",
        source="explosion/spacy-models release en_core_web_lg-3.8.0; sha256 from a single "
        "third-party pinned requirements file, not checked here",
        checksum_status="third-party",
        note="AMBER near-synonym test (similarity > 0.8). Rule download_spacy_model unpacks the "
        "wheel's model folder to resources/spacy/en_core_web_lg; spaCy 3.8.x comes with the "
        "project's [amber] extra.",
    ),
]

# MME parquet shards at the pinned revision (plain HTTP alternative to the snapshot)
_MME_SHARDS = [
    ("test-00000-of-00004-a25dbe3b44c4fda6.parquet", None),
    ("test-00001-of-00004-7d22c7f1aba6fca4.parquet", None),
    ("test-00002-of-00004-594798fd3f5b029c.parquet", None),
    (
        "test-00003-of-00004-53ae1794f93b1e35.parquet",
        "aec84886b2bb6dd7bffc94eb3bbca9319e0671f3ee989a08e0758bc2de6c67f6",
    ),
]
for _i, (_fn, _sha) in enumerate(_MME_SHARDS):
    _STATIC.append(
        Entry(
            name=f"mme/lmms-lab/test-{_i:05d}",
            url=f"https://huggingface.co/datasets/lmms-lab/MME/resolve/{MME_HF_REVISION}/data/{_fn}",
            filename=_fn,
            sha256=_sha,
            source=f"lmms-lab/MME@{MME_HF_REVISION}:data/{_fn}"
            + ("; sha256 from the hub file page" if _sha else ""),
            checksum_status="third-party" if _sha else "none",
            note="Shard sizes 34.9 MB / 110 MB / 695 MB / 24.7 MB (hub listing, rounded); "
            "prefer mme/lmms-lab (hf_snapshot verifies every shard).",
        )
    )

# AMBER data files at the pinned commit: (path, bytes, md5, sha256) hashed here from git blobs
_AMBER_FILES = [
    (
        "data/annotations.json",
        1_813_301,
        "e5c5a3f03fd2fc4683ab6e60144ef1c1",
        "db22a436c4836fbb295e60b4e80d519573077579fb7032f01b193c1bd022b797",
    ),
    (
        "data/relation.json",
        12_699,
        "e01a3437ae54a1f6e0502c513e113cb9",
        "c4c1491e9bbc3209abc1888c12a1bf8413bdbab8a0d8be04b990a2e7680cf23e",
    ),
    (
        "data/safe_words.txt",
        57,
        "045f715e6600220aa250f8955be27662",
        "f92cf1123f4578a2630832fac3e6ac4de36212ea55859d3bed4fd233723f4043",
    ),
    (
        "data/metrics.txt",
        899,
        "65eb74c07d180ff6400bb5214ef464a3",
        "2fbe2ee584d10e7ce0a568a4902d3d2296727d45f761bf091dd35c4e4b5bc6ac",
    ),
    (
        "data/query/query_all.json",
        1_844_750,
        "0735f646adc3eb49565f8cc0e8a1083b",
        "127680ae61f7d4a92d2f7f07a8deaec07f0689b194d2c7c0f41ead7bd2c5bcf5",
    ),
    (
        "data/query/query_generative.json",
        106_220,
        "3d90d35f04b72a44ad66967d7050e549",
        "b7e4c36596126ee36d2c3922638b7fa98743c26efda78fea2315f4425258d087",
    ),
    (
        "data/query/query_discriminative.json",
        1_738_529,
        "6736c49ff6438e1092a3a4068fdc3f94",
        "1502887ac020f4bb7ea564af4e37bddcb030d61b78490d00f9da492a2307abb8",
    ),
    (
        "data/query/query_discriminative-existence.json",
        583_367,
        "c66990cd04f4598370163703c4df0b70",
        "657cce3b3ccd02303998d7d27d1ce06bd210a7a55aa6c888b1b86d5a9dfd9849",
    ),
    (
        "data/query/query_discriminative-attribute.json",
        922_022,
        "84847fe458c593a9d5395724224694fc",
        "35c0fe71290789c5eb198e9a3f5732533bcb35f1d963b57539aab5d1b41dd827",
    ),
    (
        "data/query/query_discriminative-relation.json",
        233_144,
        "0c58161d72e88c143c62879c7d00c65e",
        "36e08860653a1562acb657c250604c3d4e26f8a5f99a376fd53c67f9242be20f",
    ),
]
for _path, _size, _md5, _sha in _AMBER_FILES:
    _fn = _path.rsplit("/", 1)[1]
    _STATIC.append(
        Entry(
            name=f"amber/{_fn.rsplit('.', 1)[0]}",
            url=f"https://raw.githubusercontent.com/{AMBER_REPO}/{AMBER_COMMIT}/{_path}",
            filename=_fn,
            size=_size,
            md5=_md5,
            sha256=_sha,
            source=f"{AMBER_REPO}@{AMBER_COMMIT}:{_path}; hashed here from the git blob",
            checksum_status="verified",
        )
    )


def _nltk_entries() -> list[Entry]:
    from .nltk_packages import NLTK_DATA_COMMIT, NLTK_DATA_REPO, PACKAGES

    return [
        Entry(
            name=f"nltk/{p.id}",
            url=p.url(),
            filename=f"{p.id}.zip",
            size=p.size,
            md5=p.md5,
            sha256=p.sha256,
            source=f"{NLTK_DATA_REPO}@{NLTK_DATA_COMMIT}:packages/{p.subdir}/{p.id}.zip",
            checksum_status=p.checksum_status,
            note=p.note,
        )
        for p in PACKAGES.values()
    ]


_TABLE: dict[str, Entry] | None = None


def _table() -> dict[str, Entry]:
    global _TABLE
    if _TABLE is None:
        entries = list(_STATIC)
        for v, files in _POPE_TABLE.items():
            for ds, split in files:
                entries.append(_pope_entry(ds, v, split))
        entries += _nltk_entries()
        table: dict[str, Entry] = {}
        for e in entries:
            if e.name in table:
                raise AssertionError(f"duplicate registry name {e.name}")
            table[e.name] = e
        _TABLE = table
    return _TABLE


def names() -> list[str]:
    """All registry names, sorted."""
    return sorted(_table())


def get(name: str) -> Entry:
    """The entry called ``name`` (see the module docstring); POPE versions accept aliases."""
    table = _table()
    if name in table:
        return table[name]
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "pope":
        try:
            return table[f"pope/{parts[1]}/{pope_version(parts[2])}/{parts[3]}"]
        except KeyError:
            pass
    near = [n for n in table if n.split("/")[0] == parts[0]][:8]
    raise KeyError(
        f"unknown registry entry {name!r}"
        + (
            f"; entries under {parts[0]}/: {near}"
            if near
            else f"; groups: {sorted({n.split('/')[0] for n in table})}"
        )
    )
