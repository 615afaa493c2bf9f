"""Append-only checkpoint of a result file being decoded (``<output>.partial``), and the
per-output writer lock.

The first line holds the hash of the run's result-deciding config; then one record per line
(flush + fsync after every batch). Used by decode shards (:func:`vcdflow.runner.run_shard`) and
ConVis captions (:mod:`vcdflow.t2i.captions`).

A partial file written under another config is never deleted: :meth:`Checkpoint.load` renames
it to ``<output>.partial.stale-<its hash>`` (logged with how to restore it) and starts fresh.
:func:`output_lock` holds ``<output>.lock`` (``flock``, the holder's PID and host inside) for
as long as one process writes the output; a second writer fails at once naming the holder. The
kernel drops a ``flock`` when its process dies, so the lock file of a killed run never blocks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .io import atomic_path, dumps

log = logging.getLogger("vcdflow.checkpoint")


def stale_name(path: str | os.PathLike, old_hash: str | None) -> Path:
    """``<partial>.stale-<old hash>`` (``-2``, ``-3``… when that name is taken)."""
    path = Path(path)
    base = path.with_name(f"{path.name}.stale-{old_hash or 'unknown'}")
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<output>.lock`` while the body runs; :class:`vcdflow.errors.OutputLocked` (naming
    the holder's PID and host) when another live process holds it. The lock file is removed on
    release."""
    from .errors import output_locked

    output = Path(output)
    lock = output.with_name(output.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise output_locked(output, lock, holder) from None
        try:  # the holder before us may have removed the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still holding it: a waiter then sees a removed inode and retries
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "PID unknown"


class Checkpoint:
    """Append-only partial file: header line with the config hash, then one record per line."""

    def __init__(self, path: str | os.PathLike, run_hash: str):
        self.path = Path(path)
        self.run_hash = run_hash
        self.done: dict[str, dict] = {}
        self._fh = None

    def peek(self) -> tuple[str | None, set[str]]:
        """Read-only look at the partial file: (its config hash, item ids of its complete
        records); (None, empty) when there is none. Nothing is changed on disk."""
        if not self.path.exists():
            return None, set()
        lines = self.path.read_text(encoding="utf-8").split("\n")
        header = _header(lines)
        ids: set[str] = set()
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                ids.add(json.loads(line)["item_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                break
        return header.get("config_hash"), ids

    def load(self) -> dict[str, dict]:
        """Records of the partial file when it was written under this config (a torn last line
        is cut off); a partial of another config is kept as ``<partial>.stale-<hash>``."""
        if not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").split("\n")
        header = _header(lines)
        if header.get("config_hash") != self.run_hash:
            old = header.get("config_hash")
            kept = stale_name(self.path, old)
            os.replace(self.path, kept)
            log.warning(
                "kept %s as %s: it was written under config %s, the current config is %s; "
                "starting fresh. To resume it instead, rerun with the options it was written with "
                "after: mv %s %s",
                self.path,
                kept,
                old,
                self.run_hash,
                kept,
                self.path,
            )
            return {}
        good = [lines[0]]
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["item_id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # a line cut by the kill: everything after it is recomputed
            self.done[rec["item_id"]] = rec
            good.append(line)
        # Rewrite without a torn tail so appends start on a clean line.
        with atomic_path(self.path) as tmp:
            tmp.write_text("\n".join(good) + "\n", encoding="utf-8")
        return self.done

    def open(self) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        if new:
            self._fh.write(dumps({"config_hash": self.run_hash}) + "\n")
            self._sync()

    def append(self, records: Iterable[dict]) -> None:
        try:
            for rec in records:
                self._fh.write(dumps(rec) + "\n")
                self.done[rec["item_id"]] = rec
            self._sync()
        except OSError as exc:  # disk full: the error names this file (a torn tail is cut on resume)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:  # the buffered tail of a full disk: append already said so
                pass

    def finish(
        self,
        output: str | os.PathLike,
        order: Iterable[str],
        after_write: Callable[[list[dict], str], None] | None = None,
    ) -> list[dict]:
        """Write the records of ``order`` (item ids) to ``output`` atomically, then drop the
        partial file; returns the records. ``after_write(records, sha256_of_output)`` runs
        between the two (a sidecar write): a kill there still leaves the partial file."""
        self.close()
        records = [self.done[i] for i in order]
        data = "".join(dumps(rec) + "\n" for rec in records).encode("utf-8")
        with atomic_path(output) as tmp:
            tmp.write_bytes(data)
        if after_write is not None:
            after_write(records, hashlib.sha256(data).hexdigest())
        self.path.unlink(missing_ok=True)
        return records


def _header(lines: list[str]) -> dict:
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, IndexError):
        return {}
    return header if isinstance(header, dict) else {}
