"""The locked environment: read ``requirements.lock`` and compare it with what is installed.

``requirements.lock`` (repository root) pins every package that ``make setup`` installs for
the demo and the tests, each with its sha256 hashes (written by ``uv pip compile
--generate-hashes``; ``make lock`` regenerates it, see ``docs/environment.md``). This module
reads it with the standard library alone, so the Makefile can run it with the virtual
environment's interpreter before anything else is installed::

    .venv/bin/python src/vcdflow/envlock.py check requirements.lock

exits 0 when every locked package is installed at its locked version, else prints one line
naming each difference and exits 1. Packages installed beyond the lock (an optional extra
such as ``spacy``) are allowed. :data:`RESULT_PACKAGES` are the libraries whose versions can
change a decoded answer; every result's provenance sidecar records them
(:func:`result_versions`).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping

#: The lock at the root of this checkout.
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"

#: Libraries whose versions can change a decoded answer (model code, tokenisation, image
#: preprocessing, weight loading, the text-to-image pipeline, numerics); recorded per result.
RESULT_PACKAGES = (
    "vcdflow",
    "torch",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "safetensors",
    "accelerate",
    "diffusers",
    "numpy",
    "pillow",
)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalise(name: str) -> str:
    """The comparable form of a distribution name (PEP 503: case and ``-_.`` runs folded)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pin(line: str) -> tuple[str, str] | None:
    """(normalised name, version) of a ``name==version`` requirement line, None for any other line."""
    m = _PIN.match(line.strip())
    return (normalise(m.group(1)), m.group(2)) if m else None


def read_lock(path: str | Path = LOCK) -> dict[str, str]:
    """Normalised name → pinned version of every ``name==version`` line of a requirements lock
    (hash and comment lines skipped). A missing file or one without pins raises ``ValueError``
    naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the environment lock ({e.strerror or e})") from None
    pins = dict(p for p in map(read_pin, text.splitlines()) if p)
    if not pins:
        raise ValueError(f"{path}: no 'name==version' pins in this environment lock")
    return pins


def installed_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def differences(lock: Mapping[str, str], installed: Mapping[str, str | None] | None = None) -> list[str]:
    """One line per locked package whose installed version differs from the lock (or that is
    missing), sorted by name; empty when the environment matches."""
    installed = installed_versions(lock) if installed is None else installed
    out = []
    for name, want in sorted(lock.items()):
        have = installed.get(name)
        if have is None:
            out.append(f"{name}: locked {want}, not installed")
        elif have.lower() != want.lower():
            out.append(f"{name}: locked {want}, installed {have}")
    return out


def result_versions(packages: Iterable[str] = RESULT_PACKAGES) -> dict[str, str | None]:
    """Python and :data:`RESULT_PACKAGES` versions of this process, as a result's sidecar keeps them."""
    return {"python": platform.python_version(), **installed_versions(packages)}


@functools.lru_cache(maxsize=None)
def lock_state(path: str | Path = LOCK) -> dict | None:
    """``{"lock_sha256", "matches", "differences"}`` of this process's packages against the lock
    (the first 10 difference lines); None when there is no lock file (an installed wheel).
    Computed once per process."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        diff = differences(read_lock(path))
    except ValueError:
        return None
    return {
        "lock_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "matches": not diff,
        "differences": diff[:10],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check" or len(argv) > 2:
        print("usage: envlock.py check [requirements.lock]", file=sys.stderr)
        return 2
    path = Path(argv[1]) if len(argv) == 2 else LOCK
    try:
        lock = read_lock(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    diff = differences(lock)
    if diff:
        print(f"{sys.prefix}: {len(diff)} of {len(lock)} packages differ from {path}:", file=sys.stderr)
        for line in diff:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{sys.prefix}: all {len(lock)} packages match {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
