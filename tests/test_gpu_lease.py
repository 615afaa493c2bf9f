"""Local GPU binding: concurrent jobs get different devices; SLURM bindings are kept."""

import fcntl
import json
import os
import subprocess
import sys
import textwrap

from vcdflow.gpu import candidate_devices, gpu_lease

HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from vcdflow.gpu import gpu_lease
    me, other, lock_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    with gpu_lease(lock_dir, poll=0.05) as lease:
        Path(me).write_text(json.dumps({"device": lease.device, "env": os.environ["CUDA_VISIBLE_DEVICES"]}))
        deadline = time.time() + 60
        while not Path(other).exists():   # hold the lease until the other job holds one too
            assert time.time() < deadline, "other job never got a device"
            time.sleep(0.05)
    """
)


def test_two_concurrent_jobs_get_different_devices(tmp_path):
    env = dict(os.environ, VCDFLOW_GPUS="0,1")
    env.pop("SLURM_JOB_ID", None)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    locks = tmp_path / "locks"
    procs = [
        subprocess.Popen([sys.executable, "-c", HOLDER, str(a), str(b), str(locks)], env=env),
        subprocess.Popen([sys.executable, "-c", HOLDER, str(b), str(a), str(locks)], env=env),
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = [json.loads(a.read_text()), json.loads(b.read_text())]
    assert {g["device"] for g in got} == {"0", "1"}
    assert all(g["device"] == g["env"] for g in got)


def test_third_job_waits_for_a_free_device(tmp_path, monkeypatch):
    monkeypatch.setenv("VCDFLOW_GPUS", "3")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with gpu_lease(tmp_path) as first:
        assert first.device == "3"
        try:
            with gpu_lease(tmp_path, wait_seconds=0.3, poll=0.05):
                raise AssertionError("second lease on a single busy device must not succeed")
        except TimeoutError as exc:
            assert "no free GPU among ['3']" in str(exc)
    with gpu_lease(tmp_path, wait_seconds=0.3) as again:  # released: free again
        assert again.device == "3"


def test_inherited_visible_devices_are_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("VCDFLOW_GPUS", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert candidate_devices() == (["5", "7"], "CUDA_VISIBLE_DEVICES")
    with gpu_lease(tmp_path) as lease:
        assert lease.device == "5" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"  # restored
    with open(tmp_path / "gpu5.lock", "a+") as held:  # another job holds device 5
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with gpu_lease(tmp_path, wait_seconds=5) as second:
            assert second.device == "7"


def test_slurm_binding_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("VCDFLOW_GPUS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with gpu_lease(tmp_path) as lease:
        assert (lease.device, lease.locked, lease.source) == ("2", False, "slurm")
    assert not list(tmp_path.iterdir())  # nothing locked


def test_no_gpu_means_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("VCDFLOW_GPUS", "")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with gpu_lease(tmp_path) as lease:
        assert lease.device is None
