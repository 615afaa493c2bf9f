"""The workflow on a real single-node SLURM cluster (marker ``slurm``).

``tests/slurm/setup.sh`` starts munged, slurmctld and slurmd on this machine with four fake
GPUs (character devices that slurmd hands out through ``CUDA_VISIBLE_DEVICES`` like real
ones); ``tests/slurm/teardown.sh`` stops them when the session ends, also after a failure.
The workflow then runs through the SLURM executor with the profile users get
(``--workflow-profile profiles/slurm``), overriding only what is specific to this cluster:
the partition (``debug``) and the status command (``squeue``: there is no accounting
database, so ``sacct`` cannot answer). The config is the micro demo config
(``tests/configs/micro-slurm.yaml``: micro.yaml without its paper-protocol runs, or
``$VCDFLOW_SLURM_TEST_CONFIG``) with ``device=auto``, so every
decode (and ConVis) job asks SLURM for one GPU.

The first run is the whole micro workflow with ``--retries 0``; while it runs, one decode job
is cancelled with ``scancel`` once it has checkpointed K of N items. The run then ends failed
(everything else done), and the same command is run again, as a user would.

Checked:
- a smoke workflow: GPU jobs are sbatch jobs and concurrent ones get different fake GPUs;
- every non-local rule ran as an sbatch job (the "submitted with SLURM jobid" lines), every GPU
  job asked for ``--gpus=1`` with the profile's CPUs, memory and time (the ``sbatch call``
  lines of ``--verbose``), and no local rule was submitted;
- GPU jobs that ran at the same time saw different ``CUDA_VISIBLE_DEVICES`` values, each the
  GPU index SLURM itself reports for the job (``scontrol show job -d``, polled while it ran),
  and the workflow's device binding kept it (log: "gpu: SLURM job N already bound to ...");
- the cancelled job: the workflow reports it CANCELLED, its ``.partial`` checkpoint keeps the K
  items, and the rerun decodes only the rest ("resuming ...: K of N items already decoded");
- the results (every ``results/**/*.jsonl``, ignoring ``timing``) and ``results/metrics.csv``
  equal those of a local run with the same config.

Needs root (packages, /etc/slurm, mknod) and either installed slurm-wlm + munge or apt-get.
Outside CI a missing requirement skips with the reason; with ``CI=true`` it fails instead.
``VCDFLOW_SLURM_KEEP=1`` leaves the cluster running after the session (faster reruns).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "tests" / "slurm" / "setup.sh"
TEARDOWN = REPO / "tests" / "slurm" / "teardown.sh"
PROFILE = REPO / "profiles" / "slurm"
CI = os.environ.get("CI", "").lower() == "true"
# Rules the Snakefile runs on the submit host (`localrules:`); everything else is an sbatch job.
LOCAL_RULES = {"all", "merge_shards", "metrics_table", "report"}
# The heavy rules, which must go through sbatch (and with them every other non-local rule).
HEAVY_RULES = {"train_demo_model", "decode"}
# Rules that ask for a GPU unless `device: cpu` (the test runs with device=auto).
GPU_RULES = {"decode", "convis_captions", "convis_reconstruct", "train_demo_t2i"}

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", re.M)
SBATCH_CALL = re.compile(r"^sbatch call: (sbatch .*)$", re.M)
BOUND = re.compile(r"gpu: SLURM job (\d+) already bound to CUDA_VISIBLE_DEVICES=(\S*)")
FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)", re.M)
RESUMING = re.compile(r"resuming (\S+): (\d+) of (\d+) items already decoded")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)


def _unavailable(reason: str):
    """Skip outside CI, fail under CI (the cluster test must run there)."""
    if CI:
        pytest.fail(f"SLURM cluster test cannot run under CI: {reason}")
    pytest.skip(reason)


def micro_config() -> Path:
    path = Path(os.environ.get("VCDFLOW_SLURM_TEST_CONFIG", REPO / "tests" / "configs" / "micro-slurm.yaml"))
    if not path.exists():
        pytest.fail(f"micro config {path} does not exist")
    return path


def clean_env() -> dict:
    """Environment without scheduler or GPU bindings of the calling shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_"))}
    for key in ("CUDA_VISIBLE_DEVICES", "VCDFLOW_GPUS"):
        env.pop(key, None)
    return env


def profile_default_resources() -> list[str]:
    """The profile's default-resources with the local partition added (the only override)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    res = dict(profile.get("default-resources") or {})
    res["slurm_partition"] = "debug"
    return [f"{k}={v}" for k, v in res.items()]


def slurm_args() -> list[str]:
    return [
        "--workflow-profile",
        str(PROFILE),
        "--default-resources",
        *profile_default_resources(),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
    ]


def snakemake_cmd(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(micro_config()),
        "--config",
        "device=auto",
        "--nocolor",
        *extra,
    ]


def run_logged(cmd: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=clean_env(), timeout=timeout)
    return proc


def new_workdir(path: Path) -> Path:
    """A fresh, empty working directory (the workflow finds its shipped files itself)."""
    path.mkdir(parents=True)
    return path


def read_records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            rec.pop("timing", None)
            out.append(rec)
    return out


def result_files(workdir: Path) -> dict[str, list[dict]]:
    return {
        str(p.relative_to(workdir)): read_records(p) for p in sorted((workdir / "results").rglob("*.jsonl"))
    }


def job_stats(log_text: str) -> dict[str, int]:
    """Rule -> job count of the (first) "Job stats" table of a Snakemake log: the jobs it planned."""
    if "Job stats:" not in log_text:
        return {}
    block = log_text.split("Job stats:", 1)[1]
    stats = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            stats[parts[0]] = int(parts[1])
    return stats


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


class GresRecorder(threading.Thread):
    """Polls ``scontrol show job -d`` and records the GPU index SLURM gave each running job."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period = period
        self.idx: dict[str, str] = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                out = subprocess.run(
                    ["scontrol", "show", "job", "-d", "-o"], capture_output=True, text=True, timeout=10
                ).stdout
            except (OSError, subprocess.SubprocessError):
                out = ""
            for line in out.splitlines():
                jid = re.search(r"\bJobId=(\d+)", line)
                gres = re.search(r"\bGRES=gpu(?::[^:(\s]+)?:\d+\(IDX:([\d,-]+)\)", line)
                if jid and gres:
                    self.idx[jid.group(1)] = gres.group(1)
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join(timeout=15)


def _count_records(partial: Path) -> int:
    """Complete records in a checkpoint file (its first line is the config-hash header)."""
    n = 0
    for line in partial.read_text(encoding="utf-8").splitlines()[1:]:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        n += 1
    return n


class Canceller(threading.Thread):
    """Cancels one running POPE decode job with ``scancel`` after it checkpointed K >= 1 items.

    It finds the job's decode process (a process of a SLURM job, running ``…decode.py``, with a
    log under ``logs/decode/pope/`` open), then advances it in 30 ms steps (SIGSTOP, SIGCONT,
    SIGSTOP …) until ``<shard>.partial`` holds at least one complete record, so the cancel falls
    at a known point, K items in. ``scancel`` then ends the job (SLURM sends SIGCONT, SIGTERM
    and, after KillWait, SIGKILL).
    """

    def __init__(self, workdir: Path, timeout: float = 600):
        super().__init__(daemon=True)
        self.workdir, self.timeout = workdir, timeout
        self.slurm_id = self.pid = self.k = self.shard = self.error = None
        self._halt = threading.Event()

    def run(self):
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _find(self):
        logs = str(self.workdir / "logs" / "decode" / "pope") + os.sep
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                # the interpreter running the script, not the shell that started it ("...; python x.py")
                if not any(c.endswith(b"decode.py") and b" " not in c for c in cmd):
                    continue
                env = dict(e.split(b"=", 1) for e in (p / "environ").read_bytes().split(b"\0") if b"=" in e)
                if b"SLURM_JOB_ID" not in env:
                    continue
                for fd in (p / "fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith(logs) and target.endswith(".log"):
                        return int(p.name), env[b"SLURM_JOB_ID"].decode(), Path(target)
            except OSError:
                continue
        return None

    def _signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            raise AssertionError(
                f"decode process of SLURM job {self.slurm_id} ended before a mid-run checkpoint"
            )

    def _run(self):
        deadline = time.monotonic() + self.timeout
        found = None
        while found is None:
            if self._halt.is_set():
                return
            assert time.monotonic() < deadline, "no POPE decode job was seen running"
            found = self._find()
            time.sleep(0.05)
        self.pid, self.slurm_id, log = found
        self._signal(signal.SIGSTOP)
        rel = log.relative_to(self.workdir / "logs" / "decode")
        self.shard = self.workdir / "results" / "shards" / rel.with_suffix(".jsonl")
        partial = Path(str(self.shard) + ".partial")
        while not (partial.exists() and (k := _count_records(partial)) >= 1):
            assert time.monotonic() < deadline, f"no checkpoint in {partial}"
            self._signal(signal.SIGCONT)
            time.sleep(0.03)
            self._signal(signal.SIGSTOP)
        self.k = k
        subprocess.run(["scancel", self.slurm_id], check=True, timeout=30)

    def stop(self):
        self._halt.set()
        self.join(timeout=60)
        if self.pid is not None:  # never leave a stopped process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        if self.slurm_id is not None:
            # SLURM kills the job's processes (SIGTERM, SIGKILL after KillWait=5 s); anything of
            # the job still alive after that is killed here, so no run leaves processes behind.
            deadline = time.monotonic() + 15
            while (left := job_processes(self.slurm_id)) and time.monotonic() < deadline:
                time.sleep(0.5)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def job_processes(slurm_id: str) -> list[int]:
    """PIDs of the processes running in SLURM job ``slurm_id`` (by their environment)."""
    needle = f"SLURM_JOB_ID={slurm_id}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if needle in (p / "environ").read_bytes().split(b"\0"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node cluster (tests/slurm/setup.sh); torn down at session end.

    setup.sh and teardown.sh run as root: directly when the test runs as root, else through
    passwordless ``sudo -n`` (CI runners); the workflow itself runs as the calling user."""
    if os.name != "posix":
        _unavailable("needs a Linux machine")
    if os.geteuid() == 0:
        as_root = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        as_root = ["sudo", "-n"]
    else:
        _unavailable(
            "needs root or passwordless sudo: setup.sh installs slurm-wlm/munge, "
            "writes /etc/slurm and mknods fake GPUs"
        )
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        _unavailable("snakemake-executor-plugin-slurm is not installed (pip extra `workflow`)")
    have_slurm = all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not have_slurm and not shutil.which("apt-get"):
        _unavailable("slurm-wlm/munge are not installed and apt-get is unavailable")
    keep = os.environ.get("VCDFLOW_SLURM_KEEP") == "1"

    def teardown():
        subprocess.run([*as_root, "bash", str(TEARDOWN)], capture_output=True, timeout=120)

    try:
        proc = subprocess.run([*as_root, "bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        teardown()
        _unavailable("tests/slurm/setup.sh did not finish within 600 s")
    if proc.returncode != 0:
        teardown()
        why = {
            2: "not root",
            3: "apt-get could not install slurm-wlm/munge (no package mirror?)",
            4: "/etc/slurm/slurm.conf belongs to another SLURM set-up",
            5: "a SLURM daemon did not start",
        }.get(proc.returncode, f"exit code {proc.returncode}")
        msg = f"tests/slurm/setup.sh failed: {why}\n{proc.stderr[-3000:]}"
        if proc.returncode == 5:
            pytest.fail(msg)  # packages are there but the cluster is broken: a real failure
        _unavailable(msg)
    try:
        yield
    finally:
        if not keep:
            teardown()


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """The micro workflow through the SLURM executor, one decode job cancelled, then rerun.

    The local reference run (same config, from scratch, in its own directory) runs alongside,
    in the background, filling the time the SLURM run spends waiting on the scheduler."""
    local = new_workdir(tmp_path_factory.mktemp("local") / "work")
    local_log = local.parent / "snakemake.log"
    # Same thread counts as the SLURM profile's set-threads (float rounding depends on them; on
    # the micro model's near-tied logits that changes ConVis captions), so "same config" holds.
    local_cmd = snakemake_cmd(
        local,
        "--workflow-profile",
        str(REPO / "profiles" / "default"),
        "--cores",
        "4",
        "--set-threads",
        "decode=4",
        "convis_captions=4",
        "convis_reconstruct=4",
    )
    with open(local_log, "w") as fh:
        local_proc = subprocess.Popen(local_cmd, stdout=fh, stderr=subprocess.STDOUT, env=clean_env())

    workdir = new_workdir(tmp_path_factory.mktemp("slurm") / "work")
    log, rerun_log = workdir.parent / "snakemake.log", workdir.parent / "snakemake-rerun.log"
    cmd = snakemake_cmd(workdir, *slurm_args(), "--verbose")
    recorder, canceller = GresRecorder(), Canceller(workdir)
    recorder.start()
    canceller.start()
    t0 = time.monotonic()
    try:
        first = run_logged(cmd + ["--retries", "0"], log, timeout=900)
        canceller.stop()
        assert canceller.error is None, f"cancelling a decode job failed: {canceller.error}\n{tail(log)}"
        assert canceller.k is not None, f"no decode job was cancelled:\n{tail(log)}"
        assert first.returncode != 0, f"the run with a cancelled job succeeded:\n{tail(log)}"
        partial = Path(str(canceller.shard) + ".partial")
        after_cancel = {
            "shard_exists": canceller.shard.exists(),
            "partial_records": _count_records(partial) if partial.exists() else None,
        }
        seconds_first = time.monotonic() - t0
        rerun = run_logged(cmd, rerun_log, timeout=900)
        assert rerun.returncode == 0, f"the rerun failed:\n{tail(rerun_log)}"
        seconds = time.monotonic() - t0
        recorder.stop()
        texts = {"first": log.read_text(), "rerun": rerun_log.read_text()}
        submitted = {}  # SLURM job id -> rule, both runs
        for text in texts.values():
            for _, slurm_id, slurm_log in SUBMITTED.findall(text):
                m = re.search(r"/rule_([^/]+)/", slurm_log)
                assert m, f"cannot read the rule from SLURM log path {slurm_log}"
                submitted[slurm_id] = m.group(1)
        yield {
            "workdir": workdir,
            "log": log,
            "rerun_log": rerun_log,
            "texts": texts,
            "submitted": submitted,
            "gres_idx": dict(recorder.idx),
            "seconds": seconds,
            "seconds_first": seconds_first,
            "cancel": {
                "slurm_id": canceller.slurm_id,
                "k": canceller.k,
                "shard": canceller.shard,
                **after_cancel,
            },
            "local": {"workdir": local, "log": local_log, "proc": local_proc},
        }
    finally:
        canceller.stop()
        recorder.stop()
        if local_proc.poll() is None:
            local_proc.terminate()
            local_proc.wait(timeout=60)


@pytest.fixture(scope="module")
def local_run(slurm_run):
    """The local reference run started by ``slurm_run``, waited for."""
    local = slurm_run["local"]
    rc = local["proc"].wait(timeout=900)
    assert rc == 0, f"local run failed; log tail:\n{tail(local['log'])}"
    return {
        "workdir": local["workdir"],
        "results": result_files(local["workdir"]),
        "metrics": (local["workdir"] / "results" / "metrics.csv").read_text(),
    }


# --------------------------------------------------------------------------- tests


def test_smoke_gpu_jobs_are_sbatch_jobs_with_distinct_fake_gpus(slurm_cluster, tmp_path):
    """Two GPU jobs that wait for each other must run at the same time on different GPUs."""
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: expand('out/{i}.txt', i=range(2))\n\n"
        "rule gpu:\n"
        "    output: 'out/{i}.txt'\n"
        "    resources: gpu=1, cpus_per_gpu=1, mem_mb=500, runtime=5\n"
        "    shell:\n"
        "        'mkdir -p out; touch out/started{wildcards.i}; '\n"
        "        'for n in $(seq 100); do [ $(ls out/started* | wc -l) -ge 2 ] && break; sleep 0.2; done; '\n"
        "        'echo \"$SLURM_JOB_ID $CUDA_VISIBLE_DEVICES $(ls out/started* | wc -l)\" > {output}'\n"
    )
    log = tmp_path / "log.txt"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--executor",
        "slurm",
        "-j",
        "4",
        "--workflow-profile",
        "none",
        "--default-resources",
        "slurm_partition=debug",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--nocolor",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=clean_env(), timeout=300
    )
    assert proc.returncode == 0, tail(log)
    rows = [(tmp_path / f"out/{i}.txt").read_text().split() for i in range(2)]
    slurm_ids = {sid for _, sid, _ in SUBMITTED.findall(log.read_text())}
    assert {r[0] for r in rows} == slurm_ids and len(slurm_ids) == 2  # each ran in its own sbatch job
    assert all(r[2] == "2" for r in rows), "the two GPU jobs did not overlap"
    assert {r[1] for r in rows} <= {"0", "1", "2", "3"} and rows[0][1] != rows[1][1], rows


def test_every_cluster_rule_ran_as_an_sbatch_job(slurm_run):
    submitted = list(slurm_run["submitted"].values())
    submitted_rules = set(submitted)
    # Jobs that ran: those finished in either run, plus the cancelled decode job.
    ran = [rule for text in slurm_run["texts"].values() for rule in FINISHED.findall(text)] + ["decode"]
    ran_rules = set(ran)
    assert HEAVY_RULES <= ran_rules, f"the run had no {HEAVY_RULES - ran_rules} job"
    assert submitted_rules == ran_rules - LOCAL_RULES, (
        f"not submitted: {ran_rules - LOCAL_RULES - submitted_rules}"
    )
    assert not submitted_rules & LOCAL_RULES, f"local rules went to SLURM: {submitted_rules & LOCAL_RULES}"
    for rule in submitted_rules:
        assert submitted.count(rule) == ran.count(rule), (
            f"{rule}: {submitted.count(rule)} sbatch jobs for {ran.count(rule)} jobs"
        )
    # Every GPU job asked for exactly one GPU through --gpus (never --gres), with the CPUs per
    # GPU, memory and time the profile sets for its rule.
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]
    calls = [c for text in slurm_run["texts"].values() for c in SBATCH_CALL.findall(text)]
    assert "decode" in submitted_rules
    for rule in submitted_rules & GPU_RULES:
        rule_calls = [c for c in calls if f"--comment rule_{rule}_" in c]
        assert len(rule_calls) == ran.count(rule), rule
        want = profile[rule]
        for call in rule_calls:
            assert re.search(r" --gpus=1(\s|$)", call), call
            assert "--gres" not in call and "-p debug" in call, call
            assert f"--cpus-per-gpu={want['cpus_per_gpu']}" in call, call
            assert f"--mem {want['mem_mb']}" in call and f"-t {want['runtime']}" in call, call
    # Every GPU job's log names the SLURM job it ran in: the ids the executor submitted (the
    # cancelled job's log was overwritten by its rerun).
    gpu_ids = {sid for sid, rule in slurm_run["submitted"].items() if rule in GPU_RULES}
    assert {job["slurm_id"] for job in _gpu_jobs(slurm_run)} == gpu_ids - {slurm_run["cancel"]["slurm_id"]}


def _gpu_jobs(slurm_run) -> list[dict]:
    """Per log with a SLURM binding line: job id, CUDA_VISIBLE_DEVICES, [start, end] of the job."""
    jobs = []
    for p in sorted((slurm_run["workdir"] / "logs").rglob("*.log")):
        text = p.read_text(errors="replace")
        bound = BOUND.search(text)
        if not bound:
            assert "decode" not in p.parts, f"{p}: decode log without a SLURM binding line"
            continue
        stamp = LOG_TIME.search(text).group(1)
        start = time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(stamp[-3:]) / 1000
        jobs.append(
            {
                "log": p,
                "slurm_id": bound.group(1),
                "cvd": bound.group(2),
                "start": start,
                "end": p.stat().st_mtime,
            }
        )
    return jobs


def test_concurrent_gpu_jobs_saw_different_devices(slurm_run):
    jobs = _gpu_jobs(slurm_run)
    assert any("decode" in job["log"].parts for job in jobs)
    for job in jobs:
        # The device the job used is the one SLURM allocated to it (recorded while it ran).
        assert job["slurm_id"] in slurm_run["gres_idx"], (
            f"job {job['slurm_id']} never seen running with a GPU"
        )
        assert job["cvd"] == slurm_run["gres_idx"][job["slurm_id"]], job
        assert job["cvd"] in {"0", "1", "2", "3"}
    overlapping = [
        (a, b)
        for i, a in enumerate(jobs)
        for b in jobs[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping, "no two GPU jobs ran at the same time; the test proves nothing"
    for a, b in overlapping:
        assert a["cvd"] != b["cvd"], f"{a['log']} and {b['log']} ran together on GPU {a['cvd']}"
    assert len({j["cvd"] for j in jobs}) >= 2
    # No local lease was taken: inside SLURM the scheduler's binding is kept as is.
    assert not (slurm_run["workdir"] / ".vcdflow" / "gpu-locks").exists()


def test_cancelled_job_resumes_on_rerun(slurm_run):
    """scancel after K of N items: the run reports it, the checkpoint keeps K, the rerun resumes."""
    c = slurm_run["cancel"]
    first, rerun = slurm_run["texts"]["first"], slurm_run["texts"]["rerun"]
    assert re.search(rf"SLURM-job '{c['slurm_id']}' failed, SLURM status is: 'CANCELLED", first), tail(
        slurm_run["log"]
    )
    assert slurm_run["submitted"][c["slurm_id"]] == "decode"
    assert not c["shard_exists"], "the cancelled shard has an output"
    assert c["partial_records"] == c["k"] >= 1, "the checkpoint lost items when the job was cancelled"
    # The rerun had one decode job, the cancelled shard, and it started from item K.
    assert job_stats(rerun).get("decode") == 1, job_stats(rerun)
    workdir = slurm_run["workdir"]
    rel = c["shard"].relative_to(workdir)
    decode_log = workdir / "logs" / "decode" / rel.relative_to("results/shards").with_suffix(".log")
    resumed = RESUMING.search(decode_log.read_text())
    assert resumed, f"{decode_log} has no resume line:\n{decode_log.read_text()[-2000:]}"
    n_items = len(read_records(c["shard"]))
    assert resumed.group(1).endswith(str(rel))
    assert (int(resumed.group(2)), int(resumed.group(3))) == (c["k"], n_items)
    assert c["k"] < n_items, "the job was cancelled after its last item"
    assert not Path(str(c["shard"]) + ".partial").exists()


def test_slurm_outputs_equal_local_run(slurm_run, local_run):
    """After the rerun, every result equals the local run's (timing aside)."""
    got = result_files(slurm_run["workdir"])
    want = local_run["results"]
    assert want and sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs between the SLURM and the local run"
    metrics = (slurm_run["workdir"] / "results" / "metrics.csv").read_text()
    assert metrics == local_run["metrics"] and len(metrics.splitlines()) > 1
