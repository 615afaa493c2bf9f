"""Small I/O helpers shared by every layer: atomic writes, JSON lines, hashing.

Every output that a later step reads is written atomically (temp file in the same
folder, fsync, ``os.replace``), so a killed job never leaves a half-written file that
looks complete. The temp file is ``.<name>.<host>-<pid>-<random>.tmp``; a write that was
killed leaves it behind, and the next atomic write of the same file removes it once its
process is gone (:func:`remove_leftover_tmp`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname() or "host")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_leftover_tmp(dest: str | os.PathLike, *, any_writer: bool = False) -> list[Path]:
    """Remove the temp files that interrupted atomic writes of ``dest`` left beside it.

    By default only those of processes of this host that no longer run (a live writer's file is
    never touched). ``any_writer=True`` — for a caller that holds ``dest``'s lock, so no other
    writer exists — removes every one, including those of other hosts and of older versions
    (``.<name>.<random>.tmp``). Temp files of *other* files (``.<name>.partial.….tmp``) are left
    alone. Returns the removed paths."""
    dest = Path(dest)
    removed = []
    try:
        candidates = list(dest.parent.glob(f".{_glob_escape(dest.name)}.*.tmp"))
    except OSError:
        return removed
    for p in candidates:
        middle = p.name[len(dest.name) + 2 : -len(".tmp")]
        if "." in middle:  # another file's temp (e.g. .x.jsonl.partial.….tmp)
            continue
        parts = middle.rsplit("-", 2)
        if not any_writer:
            if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
                continue
            if int(parts[1]) == os.getpid() or _pid_alive(int(parts[1])):
                continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; move it onto ``dest`` only on success.

    Leftover temp files of earlier, killed writes of ``dest`` (by processes of this host that
    are gone) are removed first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftover_tmp(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{_HOST}-{os.getpid()}-", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give files the usual mode
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def replace_dir(tmp: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` onto ``dest``, replacing an old ``dest`` (folder outputs
    appear only complete: build in a temp folder beside ``dest``, then call this)."""
    import shutil

    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def dumps(obj: Any) -> str:
    """Canonical JSON for result records: sorted keys, no NaN, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False)


def write_json(dest: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def write_jsonl(dest: str | os.PathLike, records: Iterable[dict]) -> None:
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(dumps(rec) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSON lines; a bad line is an error naming the file and line number."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
    return out


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of a JSON-able config slice (used to tag result files)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str | os.PathLike, algo: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def stable_file_digest(path: str | os.PathLike, algo: str = "md5") -> str:
    """:func:`file_digest`, computed once per process for a file whose path, size and mtime are
    unchanged (model weights that every result of a decode job hashes into its run record)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, algo)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path, algo)
    return _DIGESTS[key]
