"""The locked environment: the venv running the suite holds exactly ``requirements.lock``'s
versions, the lock covers pyproject.toml's ranges with hashes, and ``make setup`` reinstalls
when the lock changes but leaves a venv that already matches alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from vcdflow import envlock

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def test_venv_holds_the_locked_versions():
    lock = envlock.read_lock(LOCK)
    # the three whose versions the results depend on most, named so a failure is plain
    for name in ("torch", "transformers", "snakemake"):
        assert metadata.version(name) == lock[name], (
            f"{name}: installed {metadata.version(name)}, locked {lock[name]}"
        )
    assert envlock.differences(lock) == [], "run `make setup` (the venv drifted from requirements.lock)"


def test_lock_covers_pyproject_with_hashes():
    lock = envlock.read_lock(LOCK)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # the extras `make lock` compiles (the Makefile's `--extra` flags): the tests' and the linters'
    reqs = [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["lint"]]
    for req in reqs:
        name = envlock.normalise(req.name)
        assert name in lock, f"{req} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(Version(lock[name]), prereleases=True), (
            f"requirements.lock pins {name}=={lock[name]}, outside pyproject's {req}: run `make lock`"
        )
    # every pin carries a sha256 (pip --require-hashes refuses the file otherwise)
    hashes: dict[str, int] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        pin = envlock.read_pin(line)
        if pin:
            current = pin[0]
            hashes[current] = 0
        elif current and line.strip().startswith("--hash=sha256:"):
            hashes[current] += 1
    assert set(hashes) == set(lock) and min(hashes.values()) >= 1, [n for n, k in hashes.items() if not k]
    # the CPU torch build: a plain version would resolve to PyPI's multi-GB CUDA build
    assert lock["torch"].endswith("+cpu")


def test_check_names_each_difference(tmp_path):
    lock = tmp_path / "requirements.lock"
    torch_v = metadata.version("torch")
    lock.write_text(
        f"torch=={torch_v} \\\n    --hash=sha256:{'0' * 64}\n"
        "Transformers==0.0.1 \\\n    --hash=sha256:" + "1" * 64 + "\n"
        "no-such-package-vcdflow==1.0\n"
    )
    assert envlock.read_lock(lock) == {
        "torch": torch_v,
        "transformers": "0.0.1",
        "no-such-package-vcdflow": "1.0",
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "src/vcdflow/envlock.py"), "check", str(lock)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert f"transformers: locked 0.0.1, installed {metadata.version('transformers')}" in out.stderr
    assert "no-such-package-vcdflow: locked 1.0, not installed" in out.stderr
    assert (
        "2 of 3 packages differ" in out.stderr and "  torch:" not in out.stderr
    )  # the matching pin is not listed
    lock.write_text(f"torch=={torch_v}\n")
    ok = subprocess.run(
        [sys.executable, str(ROOT / "src/vcdflow/envlock.py"), "check", str(lock)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "empty.lock").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.lock: no 'name==version' pins"):
        envlock.read_lock(tmp_path / "empty.lock")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_reinstalls_only_when_the_lock_differs(tmp_path):
    """The Makefile's setup recipe, with pip replaced by a logger: a venv matching the lock is
    stamped without a pip install; a changed lock is installed with --require-hashes; an
    up-to-date stamp runs nothing."""
    for rel in ("Makefile", "src/vcdflow/envlock.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"pytest=={metadata.version('pytest')} \\\n    --hash=sha256:{'0' * 64}\n")
    log = tmp_path / "pip.log"
    fake = tmp_path / "fakepy"
    fake.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
          echo "$@" >> {log}
          [ "$3" = "show" ] && cat {tmp_path / "show"}
          exit 0
        fi
        exec {sys.executable} "$@"
        """)
    )
    fake.chmod(0o755)
    (tmp_path / ".venv").mkdir()
    (tmp_path / "show").write_text(f"Name: vcdflow\nEditable project location: {tmp_path}\n")
    args = ["make", "-s", "setup", f"PY={fake}", f"STAMP={tmp_path / 'stamp'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}

    def make():
        log.write_text("")
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env), log.read_text()

    run, pips = make()  # no stamp yet, the venv matches: no install
    assert run.returncode == 0, run.stderr
    assert "already holds the versions" in run.stdout and "install" not in pips
    assert (tmp_path / "stamp").exists()
    run, pips = make()  # stamp newer than the lock: nothing runs
    assert run.returncode == 0 and pips == "" and run.stdout == ""
    lock.write_text("pytest==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    os.utime(tmp_path / "stamp", (1, 1))  # the lock is now newer than the stamp
    run, pips = make()  # the lock changed: pip installs it (the fake pip does not, so the check fails)
    assert "install -q --require-hashes --no-deps -r requirements.lock" in pips
    assert run.returncode != 0 and "pytest: locked 0.0.1" in run.stderr
    # the project itself: installed editable when absent; a venv shared with another checkout is left pointing there
    lock.write_text(f"pytest=={metadata.version('pytest')}\n")
    for show, installs in (("", True), ("Editable project location: /elsewhere\n", False)):
        (tmp_path / "show").write_text(show)
        os.utime(tmp_path / "stamp", (1, 1))
        run, pips = make()
        assert run.returncode == 0, run.stderr
        assert ("install -q --no-deps -e ." in pips) == installs and "--require-hashes" not in pips
        assert ("editable install of /elsewhere" in run.stdout) == (not installs)
