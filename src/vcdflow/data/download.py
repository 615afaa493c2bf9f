"""Streamed, resumable, checksummed downloads; offline checks; atomic zip extraction; HF snapshots.

Contract of :func:`download` (what the workflow's download rules rely on)

* Bytes go to ``<dest>.part`` beside ``dest``; ``dest`` itself only ever appears through
  ``os.replace(part, dest)`` **after** the size and every given checksum (md5/sha1/sha256) have
  been verified.  A killed job therefore never leaves a ``dest`` that looks complete.
* An interrupted transfer keeps its ``.part``.  The next attempt (a retry inside the same call,
  or a later call) sends ``Range: bytes=<len(part)>-``:

  - ``206 Partial Content`` whose ``Content-Range`` starts at ``len(part)``: bytes are appended;
  - ``200 OK`` (a server that ignores ``Range``): the ``.part`` is truncated and the whole file
    is written again from byte 0;
  - ``416 Range Not Satisfiable``: when ``Content-Range: bytes */N`` says ``N == len(part)`` the
    ``.part`` is already complete and goes straight to verification, otherwise the ``.part`` is
    discarded and the download restarts from 0.

* A checksum or size mismatch of a *finished* transfer raises :class:`ChecksumMismatch` /
  :class:`SizeMismatch` naming the file, the URL, the expected and the actual value.  The bad
  bytes are moved to ``<dest>.bad`` (kept for inspection: the expected checksum may be the wrong
  one) and are **never** used as complete: ``dest`` is not created and the ``.bad`` file is never
  resumed from.  A server that announces a total size different from ``size`` fails before any
  byte is written.
* ``Accept-Encoding: identity`` is always sent, so the bytes counted, resumed and hashed are the
  bytes of the file (``requests`` would otherwise transparently gunzip e.g. raw.githubusercontent
  JSON, breaking ``Range`` offsets and checksums).
* Network errors (connection reset, timeout, truncated body, HTTP 5xx/408/429) are retried
  ``retries`` times with exponential back-off ``backoff * 2**k`` seconds, resuming each time.
  Other HTTP errors (404, 403, ...) fail at once, naming the URL and the status.
* ``offline=True`` never opens a connection: the pre-placed ``dest`` is verified, and a missing
  ``dest`` raises :class:`FileNotFoundError` naming it (and the URL it would come from).
* An existing ``dest`` that verifies is returned without touching the network (idempotent
  rules).  One that fails verification is re-downloaded (online) and replaced only once the new
  bytes verify; offline it is an error (the user's file is left untouched).

Two processes must not download the same ``dest`` at the same time (Snakemake never schedules
one output twice; nothing here locks).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import requests
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # read size when hashing / extracting
NET_CHUNK = 1 << 16  # network read size: bytes of a chunk cut mid-way are lost (re-fetched)
HASH_ALGOS = ("md5", "sha1", "sha256")
_HEX_LEN = {32: "md5", 40: "sha1", 64: "sha256"}
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
USER_AGENT = "vcdflow-downloader (+requests)"


# --------------------------------------------------------------------------- errors
class DownloadError(RuntimeError):
    """A download could not be completed (network, HTTP status, retries exhausted)."""


class VerificationError(DownloadError):
    """Downloaded or pre-placed bytes do not match what was expected."""


class ChecksumMismatch(VerificationError):
    def __init__(self, path: Path, algo: str, expected: str, actual: str, detail: str = ""):
        self.path, self.algo, self.expected, self.actual = Path(path), algo, expected, actual
        msg = (
            f"{algo} checksum mismatch for {self.path.name} ({self.path}): "
            f"expected {algo} {expected}, actual {algo} {actual}"
        )
        super().__init__(msg + (f"; {detail}" if detail else ""))


class SizeMismatch(VerificationError):
    def __init__(self, path: Path, expected: int, actual: int, detail: str = ""):
        self.path, self.expected, self.actual = Path(path), expected, actual
        msg = (
            f"size mismatch for {self.path.name} ({self.path}): "
            f"expected {expected} bytes, actual {actual} bytes"
        )
        super().__init__(msg + (f"; {detail}" if detail else ""))


class OfflineCheckError(FileNotFoundError):
    """Offline mode found missing and/or corrupt files; lists every one of them."""

    def __init__(self, missing: Sequence[Path], mismatched: Sequence[str]):
        self.missing = [Path(p) for p in missing]
        self.mismatched = list(mismatched)
        lines = [
            f"offline mode: {len(self.missing)} required file(s) missing"
            + (f", {len(self.mismatched)} failing verification" if self.mismatched else "")
        ]
        lines += [f"  missing: {p}" for p in self.missing]
        lines += [f"  bad: {m}" for m in self.mismatched]
        lines.append("Place the files there (or run without offline mode to download them).")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- hashing
def parse_checksum(spec: str) -> tuple[str, str]:
    """``"md5:ab12…"`` / ``"sha256:…"`` / bare hex (algorithm from its length: 32 md5,
    40 sha1, 64 sha256) -> ``(algo, lower-case hex)``."""
    spec = spec.strip()
    if ":" in spec:
        algo, _, hexd = spec.partition(":")
        algo = algo.strip().lower()
    else:
        hexd = spec
        algo = _HEX_LEN.get(len(spec), "")
    hexd = hexd.strip().lower()
    if (
        algo not in HASH_ALGOS
        or not re.fullmatch(r"[0-9a-f]+", hexd)
        or len(hexd) != {"md5": 32, "sha1": 40, "sha256": 64}[algo]
    ):
        raise ValueError(
            f"not a checksum spec: {spec!r} (use md5:<32 hex>, sha1:<40 hex> or sha256:<64 hex>)"
        )
    return algo, hexd


def hash_file(path: str | os.PathLike, algos: Iterable[str], progress: bool = False) -> dict[str, str]:
    """Hex digests of ``path`` for every algorithm in ``algos``, in one pass over the file."""
    path = Path(path)
    hashers = {a: hashlib.new(a) for a in algos}
    if not hashers:
        return {}
    total = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"verify {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashers.values():
                h.update(block)
            bar.update(len(block))
    return {a: h.hexdigest() for a, h in hashers.items()}


def _expected(md5, sha1, sha256) -> dict[str, str]:
    out = {}
    for algo, val in (("md5", md5), ("sha1", sha1), ("sha256", sha256)):
        if val:
            out[algo] = parse_checksum(f"{algo}:{val}")[1]
    return out


def verify_file(
    path: str | os.PathLike,
    *,
    md5: str | None = None,
    sha1: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = False,
    detail: str = "",
    label: str | os.PathLike | None = None,
) -> None:
    """Raise :class:`SizeMismatch` / :class:`ChecksumMismatch` unless ``path`` matches.

    Size is checked first (cheap); then all given checksums in one pass.  ``label``: the path
    named in the error (default ``path``; the downloader names ``dest``, not its ``.part``)."""
    path = Path(path)
    shown = Path(label) if label is not None else path
    actual_size = path.stat().st_size
    if size is not None and actual_size != int(size):
        raise SizeMismatch(shown, int(size), actual_size, detail)
    exp = _expected(md5, sha1, sha256)
    got = hash_file(path, exp, progress=progress)
    for algo, want in exp.items():
        if got[algo] != want:
            raise ChecksumMismatch(shown, algo, want, got[algo], detail)


# --------------------------------------------------------------------------- download
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _bad_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".bad")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_416 = re.compile(r"bytes\s+\*/(\d+)")


class _Restart(Exception):
    """Internal: discard the .part and start again from byte 0 (not counted as a retry)."""


class _Transient(Exception):
    """Internal: a retryable failure; the .part is kept and resumed."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    sha1: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60,
    progress: bool = True,
    offline: bool = False,
    session: requests.Session | None = None,
    backoff: float = 1.0,
    chunk_size: int = NET_CHUNK,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomically placed); return ``dest``.

    ``md5``/``sha1``/``sha256``: expected hex digests (any subset; all given ones must match).
    ``size``: expected byte count.  ``retries``: extra attempts after the first (network errors
    only).  ``timeout``: seconds for connect and for each read.  ``progress``: tqdm bar with rate
    and ETA.  ``offline``: verify a pre-placed ``dest`` only.  ``session``: a ``requests.Session``
    to reuse (default: a fresh one).  See the module docstring for the exact semantics.
    """
    dest = Path(dest)
    size = None if size is None else int(size)
    checks = dict(md5=md5, sha1=sha1, sha256=sha256, size=size)

    if dest.exists():
        try:
            verify_file(dest, progress=progress, **checks)
            return dest
        except VerificationError as exc:
            if offline:
                raise  # offline: the user's file is left untouched
            log.warning("%s exists but fails verification (%s); downloading it again", dest, exc)
    elif offline:
        raise FileNotFoundError(
            f"offline mode: required file {dest} is missing (it would be downloaded from {url}); "
            "place it there or run without offline mode"
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    own_session = session is None
    sess = session or requests.Session()
    attempts = max(0, int(retries)) + 1
    last_error: BaseException | None = None
    try:
        attempt = 0
        restarts = 0
        while attempt < attempts:
            try:
                _fetch_into(
                    sess,
                    url,
                    part,
                    size=size,
                    timeout=timeout,
                    progress=progress,
                    chunk_size=chunk_size,
                    dest=dest,
                )
                break
            except SizeMismatch:
                part.unlink(missing_ok=True)  # the server's file is not the expected one
                raise
            except _Restart as exc:
                restarts += 1
                log.info("%s: %s; restarting from byte 0", url, exc)
                part.unlink(missing_ok=True)
                if restarts > attempts:
                    raise DownloadError(f"{url}: server keeps rejecting resumption ({exc})") from None
                continue
            except _Transient as exc:
                last_error = exc
                attempt += 1
                if attempt >= attempts:
                    kept = part.stat().st_size if part.exists() else 0
                    raise DownloadError(
                        f"downloading {url} to {dest} failed after {attempts} attempt(s): "
                        f"{exc}; {kept} bytes kept in {part} (run again to resume)"
                    ) from (exc.__cause__ or exc)
                wait = backoff * (2 ** (attempt - 1))
                log.warning(
                    "%s: %s; retry %d/%d in %.1fs (resuming)", url, last_error, attempt, attempts - 1, wait
                )
                if wait > 0:
                    time.sleep(wait)
    finally:
        if own_session:
            sess.close()

    # Verify the finished .part; on mismatch park the bytes in .bad (never resumed, never used).
    try:
        verify_file(part, progress=progress, detail=f"downloaded from {url}", label=dest, **checks)
    except VerificationError as exc:
        bad = _bad_path(dest)
        os.replace(part, bad)
        exc.args = (f"{exc.args[0]}; the bytes were moved to {bad} and nothing was placed at {dest}",)
        raise
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest


def _fetch_into(
    sess: requests.Session,
    url: str,
    part: Path,
    *,
    size: int | None,
    timeout: float,
    progress: bool,
    chunk_size: int,
    dest: Path,
) -> None:
    """One attempt: bring ``part`` to the complete file.  Raises _Restart/_Transient/DownloadError."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        raise _Restart(f"{part} is larger ({have} B) than the expected {size} B")
    if size is not None and have == size:
        return  # complete already; verification follows
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = sess.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(str(exc)) from exc
    with contextlib.closing(resp):
        status = resp.status_code
        if status == 416 and have:
            m = _CONTENT_RANGE_416.match(resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == have:
                return  # the .part already holds the whole file
            raise _Restart(f"HTTP 416 for Range bytes={have}-")
        if status in _RETRY_STATUS:
            raise _Transient(f"HTTP {status} {resp.reason}") from None
        if status >= 400:
            raise DownloadError(f"{url}: HTTP {status} {resp.reason}")
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise _Restart(f"unusable Content-Range {resp.headers.get('Content-Range')!r}")
            total = None if m.group(3) == "*" else int(m.group(3))
            mode, start = "ab", have
        elif status == 200:
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl is not None and cl.isdigit() else None
            mode, start = "wb", 0  # server ignored Range (or none was sent): rewrite from 0
            if have:
                log.info("%s: server ignored Range; rewriting %s from byte 0", url, part)
        else:
            raise DownloadError(f"{url}: unexpected HTTP {status} {resp.reason}")
        if size is not None and total is not None and total != size:
            raise SizeMismatch(
                dest,
                size,
                total,
                f"the server at {url} announces {total} bytes; nothing was placed at {dest}",
            )
        written = start
        try:
            with (
                open(part, mode) as fh,
                tqdm(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    dynamic_ncols=True,
                    miniters=1,
                ) as bar,
            ):
                for block in resp.iter_content(chunk_size=chunk_size):
                    if block:
                        fh.write(block)
                        written += len(block)
                        bar.update(len(block))
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise _Transient(f"connection lost after {written} bytes: {exc}") from exc
        expected_total = total if total is not None else size
        if expected_total is not None and written < expected_total:
            raise _Transient(f"transfer ended after {written} of {expected_total} bytes")


# --------------------------------------------------------------------------- offline check
def check_offline(files: Iterable[tuple[str | os.PathLike, str | None]], *, progress: bool = False) -> None:
    """Verify pre-placed files without any network access.

    ``files``: ``(path, checksum)`` pairs; ``checksum`` is ``None`` (existence only),
    ``"md5:<hex>"``, ``"sha1:<hex>"``, ``"sha256:<hex>"`` or bare hex (algorithm by length).
    Raises one :class:`OfflineCheckError` that names **every** missing file and every file whose
    checksum differs (expected and actual), or returns ``None`` when all are present and valid.
    """
    missing: list[Path] = []
    bad: list[str] = []
    for path, checksum in files:
        path = Path(path)
        if not path.is_file():
            missing.append(path)
            continue
        if checksum:
            algo, want = parse_checksum(checksum)
            got = hash_file(path, [algo], progress=progress)[algo]
            if got != want:
                bad.append(f"{path}: expected {algo} {want}, actual {algo} {got}")
    if missing or bad:
        raise OfflineCheckError(missing, bad)


# --------------------------------------------------------------------------- zip extraction
def _safe_member(archive: Path, name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name:
        raise ValueError(f"{archive}: refusing unsafe member path {name!r}")
    return p


def _merge_into(src: Path, dst: Path, placed: list[Path]) -> None:
    """Move ``src`` (file or dir) onto ``dst``: a missing ``dst`` takes the whole entry in one
    rename (atomic for a directory); an existing directory is merged file by file."""
    if not dst.exists() and not dst.is_symlink():
        os.replace(src, dst)
        placed.extend([dst] if dst.is_file() else sorted(p for p in dst.rglob("*") if p.is_file()))
        return
    if src.is_dir() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _merge_into(child, dst / child.name, placed)
        return
    if src.is_dir() or dst.is_dir():
        raise IsADirectoryError(f"cannot place {src.name}: {dst} exists with a different type")
    os.replace(src, dst)
    placed.append(dst)


def extract(
    archive: str | os.PathLike,
    dest_dir: str | os.PathLike,
    members: Sequence[str] | None = None,
    *,
    progress: bool = True,
) -> list[Path]:
    """Extract a zip into ``dest_dir`` atomically; return the extracted file paths (sorted).

    ``members``: exact member names (``"annotations/instances_val2014.json"``) or folder
    prefixes ending in ``/`` (``"val2014/"``); ``None`` = everything.  A requested member that is
    not in the archive is an error naming the archive and the member (nothing is extracted).
    Members are first written (CRC-checked by :mod:`zipfile`) to a temporary folder inside
    ``dest_dir`` and then renamed into place: a top-level entry that does not exist yet appears
    in one rename, an existing folder is merged file by file, so no partially written file is
    ever visible.  Absolute or ``..`` member paths are refused.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise FileNotFoundError(f"zip archive not found: {archive}") from None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive}: not a valid zip file ({exc})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        names = {i.filename for i in infos}
        if members is None:
            chosen = infos
        else:
            chosen, seen = [], set()
            for m in members:
                if m.endswith("/"):
                    hit = [i for i in infos if i.filename.startswith(m)]
                else:
                    hit = [i for i in infos if i.filename == m]
                if not hit:
                    close = sorted(n for n in names if PurePosixPath(n).name == PurePosixPath(m).name)
                    raise KeyError(
                        f"{archive}: member {m!r} not in the archive"
                        + (f" (did you mean {close[:3]}?)" if close else "")
                    )
                for i in hit:
                    if i.filename not in seen:
                        seen.add(i.filename)
                        chosen.append(i)
        for i in chosen:
            _safe_member(archive, i.filename)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
        try:
            total = sum(i.file_size for i in chosen)
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"extract {archive.name}",
                disable=not progress,
            ) as bar:
                for i in chosen:
                    target = tmp.joinpath(*PurePosixPath(i.filename).parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(i) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    bar.update(i.file_size)
            placed: list[Path] = []
            for child in sorted(tmp.iterdir()):
                _merge_into(child, dest_dir / child.name, placed)
            _fsync_dir(dest_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(placed)


# --------------------------------------------------------------------------- Hugging Face
def hf_snapshot(
    repo_id: str,
    local_dir: str | os.PathLike,
    *,
    revision: str,
    repo_type: str = "model",
    allow_patterns: Sequence[str] | str | None = None,
    token_env: str = "HF_TOKEN",
    offline: bool = False,
    revisions_lock: str | os.PathLike | None = None,
    update_revisions: bool = False,
) -> Path:
    """Download a pinned Hugging Face repo snapshot into ``local_dir``; return ``local_dir``.

    Wraps :func:`huggingface_hub.snapshot_download` (which verifies LFS files against their
    sha256).  ``revision`` is required and should be a 40-hex commit for reproducibility; a
    branch or tag is resolved to its commit and checked against ``revisions_lock``
    (:func:`vcdflow.data.hub_revisions.pin`: a recorded commit that the hub no longer gives
    fails naming both, unless ``update_revisions``), the snapshot is downloaded at that commit
    and the commit recorded.  The
    token is read from the environment variable ``token_env`` (default ``HF_TOKEN``) and passed
    straight to the hub client; it is never logged, stored or returned.  ``offline=True`` does
    not touch the network: ``local_dir`` must exist and hold at least one file for every
    ``allow_patterns`` entry, otherwise an error names the folder and the unmatched patterns.
    """
    from . import hub_revisions

    local_dir = Path(local_dir)
    if not revision:
        raise ValueError(f"hf_snapshot({repo_id!r}): a revision (commit hash) is required")
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns or [])
    if offline:
        files = (
            [
                p.relative_to(local_dir).as_posix()
                for p in local_dir.rglob("*")
                if p.is_file() and ".cache" not in p.relative_to(local_dir).parts
            ]
            if local_dir.is_dir()
            else []
        )
        unmatched = [pat for pat in (patterns or ["*"]) if not any(fnmatch.fnmatch(f, pat) for f in files)]
        if unmatched:
            raise FileNotFoundError(
                f"offline mode: {repo_type} snapshot {repo_id}@{revision} is missing from "
                f"{local_dir} (no file matches {unmatched}); place it there or run without "
                "offline mode"
            )
        return local_dir
    from huggingface_hub import snapshot_download

    token = os.environ.get(token_env) or None

    def failed(what: str, exc: Exception) -> DownloadError:
        msg = str(exc)
        if token:
            msg = msg.replace(token, "***")
        return DownloadError(
            f"Hugging Face {what} of {repo_type} {repo_id}@{revision} into "
            f"{local_dir} failed: {type(exc).__name__}: {msg}"
        )

    try:
        commit, key = hub_revisions.pin(
            repo_id, revision, repo_type=repo_type, lock=revisions_lock, update=update_revisions, token=token
        )
    except hub_revisions.RevisionChanged:
        raise
    except Exception as exc:
        raise failed("revision lookup", exc) from None
    kwargs = dict(
        repo_id=repo_id,
        revision=commit,
        repo_type=repo_type,
        local_dir=str(local_dir),
        allow_patterns=patterns or None,
        token=token,
    )
    try:
        snapshot_download(**kwargs)
    except Exception as exc:
        raise failed("download", exc) from None
    # the commit downloaded (a branch unresolved when pinning is off: then the name)
    hub_revisions.write_source(local_dir, repo_id, revision, commit, repo_type)
    if key:
        hub_revisions.record(revisions_lock, key, commit)
    return local_dir
    from huggingface_hub import snapshot_download

    token = os.environ.get(token_env) or None
    kwargs = dict(
        repo_id=repo_id,
        revision=revision,
        repo_type=repo_type,
        local_dir=str(local_dir),
        allow_patterns=patterns or None,
        token=token,
    )
    try:
        snapshot_download(**kwargs)
    except Exception as exc:
        msg = str(exc)
        if token:
            msg = msg.replace(token, "***")
        raise DownloadError(
            f"Hugging Face download of {repo_type} {repo_id}@{revision} into "
            f"{local_dir} failed: {type(exc).__name__}: {msg}"
        ) from None
    return local_dir
