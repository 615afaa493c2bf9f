"""Bind each running job to its own GPU.

Snakemake's ``--resources gpu=N`` only *counts* GPUs; it never tells a job which device to
use (snakemake issue #281), so four local jobs would all land on ``cuda:0``. ``gpu_lease``
takes a non-blocking ``fcntl.flock`` on ``<lock_dir>/gpu<ID>.lock`` for the first free device
and sets ``CUDA_VISIBLE_DEVICES`` to it *before* torch initialises CUDA. The lock is released
when the job ends (also when it is killed: the kernel drops flocks of dead processes).

Device candidates, in order of precedence:
1. ``VCDFLOW_GPUS`` (comma-separated ids; lets tests and users pin a device list),
2. an inherited ``CUDA_VISIBLE_DEVICES`` (e.g. set by a scheduler) — inside a SLURM job
   the scheduler has already bound the job, so it is kept unchanged and nothing is locked,
3. the GPUs ``nvidia-smi -L`` lists.
With no candidate the job runs on the CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class Lease:
    device: str | None  # the CUDA_VISIBLE_DEVICES value now in force, None = CPU
    locked: bool
    source: str  # how the device was chosen


def _list_gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def candidate_devices() -> tuple[list[str], str]:
    if os.environ.get("VCDFLOW_GPUS", "").strip():
        return [d.strip() for d in os.environ["VCDFLOW_GPUS"].split(",") if d.strip()], "VCDFLOW_GPUS"
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        devs = [d.strip() for d in inherited.split(",") if d.strip() and d.strip() != "-1"]
        return devs, "CUDA_VISIBLE_DEVICES"
    return _list_gpus(), "nvidia-smi"


@contextlib.contextmanager
def gpu_lease(
    lock_dir: str | os.PathLike = ".vcdflow/gpu-locks",
    *,
    wait_seconds: float = 24 * 3600,
    poll: float = 1.0,
    log=None,
) -> Iterator[Lease]:
    """Lease one free GPU for the duration of the ``with`` block (see module docstring)."""
    say = log or (lambda msg: None)
    devices, source = candidate_devices()
    if source == "CUDA_VISIBLE_DEVICES" and os.environ.get("SLURM_JOB_ID"):
        say(
            f"gpu: SLURM job {os.environ['SLURM_JOB_ID']} already bound to "
            f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
        )
        yield Lease(os.environ["CUDA_VISIBLE_DEVICES"] or None, False, "slurm")
        return
    if not devices:
        say("gpu: no GPU found, running on the CPU")
        yield Lease(None, False, source)
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        for dev in devices:
            fh = open(lock_dir / f"gpu{dev}.lock", "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            previous = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = dev
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            say(f"gpu: leased device {dev} (from {source}); CUDA_VISIBLE_DEVICES={dev}")
            try:
                yield Lease(dev, True, source)
            finally:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {devices} in {lock_dir} after {wait_seconds}s")
        time.sleep(poll)


def resolve_device(want: str = "auto") -> str:
    """``cpu``; ``cuda`` (error when none is visible); ``auto``: CUDA when available, else CPU."""
    if want == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if want == "cuda":
        raise RuntimeError("device: cuda requested but no CUDA device is visible")
    return "cpu"
