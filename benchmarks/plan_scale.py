"""Plan time and job count of a config under the SLURM profile (default: config/paper.yaml).

Each round runs ``snakemake -n --quiet rules --workflow-profile profiles/slurm --configfile
<config>`` in a fresh empty directory (nothing decoded: the whole grid is planned) and records
the wall time, the CPU time of the Snakemake process (user + system: robust to other load on a
shared machine) and the job counts of its job table. Jobs are split into those the SLURM profile
submits with sbatch and those run on the login node (the Snakefile's ``localrules:``, read from
the Snakefile); batch rules (decode_batch_<name>, score_batch_<name>) are summed per kind.

A warm-up round first (it fills Python's byte-code and vcdflow's method-record caches, as a
user's second plan would find them), then ``--repeats`` rounds; with ``--compare`` each round
also plans the comparison config (e.g. ``--compare-config group_decode=False``), the two
interleaved so drifting machine load hits both alike. Median and spread (min, max) per config.

    python benchmarks/plan_scale.py --out benchmarks/results/plan_scale_paper.json
    python benchmarks/plan_scale.py --repeats 1 --compare-config group_decode=False   # the 62,000-job grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_speed import load_average  # noqa: E402


def local_rules() -> set[str]:
    """The rule names of the Snakefile's ``localrules:`` block (run on the login node)."""
    text = (ROOT / "Snakefile").read_text()
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", text, re.M)
    return {name.strip().rstrip(",") for name in block.group(1).splitlines()} if block else set()


def plan(configfile: str, extra: list[str]) -> dict:
    """One dry run in a fresh directory: wall and CPU seconds, the job table."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "-n",
        "--quiet",
        "rules",
        "--workflow-profile",
        str(ROOT / "profiles" / "slurm"),
        "--configfile",
        configfile,
    ]
    if extra:
        cmd += ["--config", *extra]
    with tempfile.TemporaryDirectory(prefix="plan_scale_") as work:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
    out = proc.stdout
    if proc.returncode != 0:
        raise SystemExit(f"plan_scale: snakemake failed ({proc.returncode}):\n{out[-3000:]}")
    table = out[out.index("Job stats:") :].split("\n\n")[0]
    counts = Counter()
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] += int(parts[1])
    return {"wall_s": wall, "counts": counts}


def cpu_of(fn):
    """Run ``fn`` and add the CPU seconds its child processes used (user + system)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def summarise(rounds: list[dict]) -> dict:
    local = local_rules()
    counts = rounds[-1]["counts"]
    kinds = Counter()
    for rule, n in counts.items():
        kinds[re.sub(r"_batch_\w+$", "_batch_*", rule)] += n
    stat = {}
    for key in ("wall_s", "cpu_s"):
        values = [r[key] for r in rounds]
        stat[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "values": values,
        }
    return {
        **stat,
        "jobs": sum(counts.values()),
        "submitted": sum(n for r, n in counts.items() if r not in local),
        "local": sum(n for r, n in counts.items() if r in local),
        "by_rule": dict(sorted(kinds.items())),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default=str(ROOT / "config" / "paper.yaml"))
    ap.add_argument("--config", nargs="*", default=[], help="--config overrides of the measured plan")
    ap.add_argument(
        "--compare-config",
        nargs="*",
        default=None,
        help="also plan these --config overrides each round (e.g. group_decode=False)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    args.configfile = str(Path(args.configfile).resolve())  # the plans run in temp directories

    configs = {"plan": args.config}
    if args.compare_config is not None:
        configs["compare"] = args.compare_config
    load_before = load_average()
    for _ in range(args.warmup):
        plan(args.configfile, args.config)
    rounds = {name: [] for name in configs}
    for rep in range(args.repeats):  # interleaved, order alternating
        for name in list(configs) if rep % 2 == 0 else list(configs)[::-1]:
            rounds[name].append(cpu_of(lambda: plan(args.configfile, configs[name])))
            r = rounds[name][-1]
            print(
                f"round {rep} {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                f"{sum(r['counts'].values())} jobs",
                flush=True,
            )
    result = {
        "configfile": args.configfile,
        "profile": "profiles/slurm",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": load_average(),
        **{name: dict(summarise(rounds[name]), config=configs[name]) for name in configs},
    }
    for name in configs:
        s = result[name]
        print(
            f"{name} {' '.join(configs[name]) or '(as configured)'}: {s['jobs']} jobs ({s['submitted']} submitted "
            f"to SLURM, {s['local']} local); plan {s['wall_s']['median']:.1f} s wall "
            f"[{s['wall_s']['min']:.1f}, {s['wall_s']['max']:.1f}], {s['cpu_s']['median']:.1f} s CPU "
            f"[{s['cpu_s']['min']:.1f}, {s['cpu_s']['max']:.1f}]"
        )
        print("  " + ", ".join(f"{k} {v}" for k, v in s["by_rule"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
