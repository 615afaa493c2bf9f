"""Append-only checkpoint of a result file being decoded (``<output>.partial``).

The first line holds the hash of the run's result-deciding config; then one record per line
(flush + fsync after every batch). Used by decode shards (:func:`vcdflow.runner.run_shard`) and
ConVis captions (:mod:`vcdflow.t2i.captions`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from .io import atomic_path, dumps

log = logging.getLogger("vcdflow.checkpoint")

class Checkpoint:
    """Append-only partial file: header line with the config hash, then one record per line."""

    def __init__(self, path: str | os.PathLike, run_hash: str):
        self.path = Path(path)
        self.run_hash = run_hash
        self.done: dict[str, dict] = {}
        self._fh = None

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").split("\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            header = {}
        if header.get("config_hash") != self.run_hash:
            log.warning(
                "discarding %s: written under config %s, current config is %s",
                self.path, header.get("config_hash"), self.run_hash,
            )
            self.path.unlink()
            return {}
        good = [lines[0]]
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
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
        for rec in records:
            self._fh.write(dumps(rec) + "\n")
            self.done[rec["item_id"]] = rec
        self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None

    def finish(self, output: str | os.PathLike, order: Iterable[str]) -> list[dict]:
        """Write the records of ``order`` (item ids) to ``output`` atomically, then drop the
        partial file; returns the records."""
        self.close()
        records = [self.done[i] for i in order]
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(dumps(rec) + "\n")
        self.path.unlink(missing_ok=True)
        return records
