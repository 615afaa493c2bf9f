"""The workflow's config contract: schema errors name the key, lint is clean, DAGs build."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def smk(*args, cwd=ROOT, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(tmp_path, mutate):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lint_is_clean():
    out = smk("--lint")
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr, (
        out.stdout + out.stderr
    )


def test_unknown_key_fails_before_any_job_naming_the_key(tmp_path):
    path = write_config(tmp_path, lambda c: c["demo"].update(n_trian=5))
    out = smk("-n", "--configfile", str(path), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Additional properties are not allowed ('n_trian' was unexpected)" in text
    assert "instance['demo']" in text
    assert "Job stats" not in text


def test_wrong_type_fails_naming_the_key(tmp_path):
    path = write_config(tmp_path, lambda c: c["demo"]["train"].update(steps="many"))
    out = smk("-n", "--configfile", str(path), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "'many' is not of type 'integer'" in text
    assert "instance['demo']['train']['steps']" in text


def test_unknown_method_key_fails(tmp_path):
    path = write_config(tmp_path, lambda c: c["methods"]["vcd"].update(alpha=1.0))
    out = smk("-n", "--configfile", str(path), cwd=tmp_path)
    assert out.returncode != 0
    assert "('alpha' was unexpected)" in out.stdout + out.stderr


def test_demo_dag_expands_the_grid(tmp_path):
    """make demo: one decode job and one scoring job per batch of up to group_labels method labels
    (group_decode), each for every benchmark, split and seed of its labels; with group_labels 1,
    one per label; with group_decode off, one job per result and shard."""
    out = smk("-n", "--quiet", "rules", "--configfile", str(ROOT / "config" / "config.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert cfg["group_decode"] is True and set(cfg["benchmarks"]) == {"pope", "chair", "mme", "amber"}
    counts = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) == 2)
    batches = {rule for rule in counts if rule.startswith("decode_batch_")}
    assert {counts[rule] for rule in batches} == {"1"} and 4 <= len(batches) <= 8, counts
    assert len(cfg["methods"]) / cfg["group_labels"] <= len(batches)
    assert {rule.replace("decode_", "score_", 1) for rule in batches} == {
        r for r in counts if r.startswith("score_batch_")
    }
    assert not {"decode", "merge_shards", "score", "decode_group", "score_group"} & set(counts), counts
    # one decode and one scoring job per label
    per_label = smk(
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--config",
        "group_labels=1",
        cwd=tmp_path,
    )
    assert per_label.returncode == 0, per_label.stdout + per_label.stderr
    counts = dict(line.split()[:2] for line in per_label.stdout.splitlines() if len(line.split()) == 2)
    # labels whose method is meant for yes/no items only (PBA's answer_kinds) have no CHAIR or
    # AMBER-generative result: they keep per-result jobs on their POPE splits, MME and AMBER's
    # discriminative task (the wildcard rule's outputs are the same list for every label)
    from vcdflow.decoding.methods import METHODS

    partial = [label for label, e in cfg["methods"].items() if METHODS[e["method"]].answer_kinds]
    assert partial == ["pba", "pba_sample"]
    assert int(counts["decode_group"]) == int(counts["score_group"]) == len(cfg["methods"]) - len(partial)
    n_yes_no = len(cfg["benchmarks"]["pope"]["splits"]) + 1 + 1
    assert int(counts["score"]) == int(counts["merge_shards"]) == len(partial) * n_yes_no * len(cfg["seeds"])
    # per-result jobs: POPE's 3 splits, CHAIR, MME and AMBER's 2 tasks per label and seed
    off = smk(
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--config",
        "group_decode=False",
        cwd=tmp_path,
    )
    assert off.returncode == 0, off.stdout + off.stderr
    counts = dict(line.split()[:2] for line in off.stdout.splitlines() if len(line.split()) == 2)
    n_results = (
        (len(cfg["benchmarks"]["pope"]["splits"]) + 1 + 1 + 2) * len(cfg["methods"]) - 2 * len(partial)
    ) * len(cfg["seeds"])
    assert int(counts["score"]) == int(counts["merge_shards"]) == n_results
    assert "decode_group" not in counts and int(counts["decode"]) <= n_results


def test_paper_config_builds_the_whole_dag_offline(tmp_path):
    """The paper grid in cluster-sized jobs (docs/cluster.md): every result is made by a batch
    decode job of at most group_results decodes of one (model, protocol) and scored by its label
    batch's scoring job — no per-result decode, merge or scoring job."""
    # one seed and one model of each of the first three families keep the dry run short: the DAG
    # has the same rules with three seeds and with more models (every model's runs under both
    # protocols: test_families.py::test_paper_config_plans_every_model)
    cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    per_family = {}
    for name, entry in cfg["models"].items():
        if entry["family"] in ("llava", "instructblip", "qwen2_5_vl"):
            per_family.setdefault(entry["family"], name)
    cfg["models"] = {name: cfg["models"][name] for name in per_family.values()}
    one_seed = tmp_path / "paper_one_seed.yaml"
    one_seed.write_text(yaml.safe_dump(dict(cfg, seeds=cfg["seeds"][:1])))
    out = smk(
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        str(one_seed),
        "--config",
        "offline=True",
        cwd=tmp_path,
        timeout=600,
    )  # ~30 s of CPU; the shared test machine can be many times slower
    assert out.returncode == 0, out.stdout + out.stderr
    assert cfg["protocol"] == ["unified", "paper"]
    assert cfg["group_decode"] is True and cfg["group_results"] == 16
    table = out.stdout[out.stdout.index("Job stats:") :].split("\n\n")[0]
    counts = {}
    for line in table.splitlines()[3:]:
        rule, n = line.split()
        counts[rule] = int(n)
    decode = {r: n for r, n in counts.items() if r.startswith("decode_batch_")}
    score = {r: n for r, n in counts.items() if r.startswith("score_batch_")}
    assert set(decode.values()) == {1} == set(score.values())
    # group_results cuts the decoding of the bigger label batches (unified's 38 labels) into several
    # decode jobs, up to four of which are one scoring job, named after its first decode job
    assert {r.replace("score_", "decode_", 1) for r in score} < set(decode) and len(score) < len(decode)
    assert not {"decode", "merge_shards", "score", "decode_group", "score_group"} & set(counts)
    n_splits = sum(len(b.get("splits") or b.get("tasks") or [1]) for b in cfg["benchmarks"].values())
    # every label under unified and at least one paper protocol, cut into jobs of <= 16 decodes
    n_decodes = 2 * len(cfg["methods"]) * n_splits * len(cfg["models"]) * 0.9
    assert n_decodes / 16 < len(decode) < n_decodes / 4, len(decode)
    assert counts["total"] < 1000
    for rule in (
        "download_pope",
        "download_coco_val2014",
        "download_gqa_images",
        "download_nltk_data",
        "download_model",
        "download_mme",
        "prepare_mme",
        "download_amber_file",
        "report",
        "convis_t2i_download",
        "convis_captions",
        "convis_reconstruct",
    ):
        assert rule in counts, rule
    assert "train_demo_model" not in out.stdout  # --configfile replaces the demo config


def test_slurm_profile_dry_run_batch_job_requests_one_gpu(tmp_path):
    """The paper config through profiles/slurm: a result's batch decode job asks for one GPU and
    the resources the profile gives every decode_batch_<name> rule (set-resources decode_batch;
    the slurm executor turns `gpu: 1` into `--gpus=1`; tests/test_slurm.py submits for real)."""
    target = "results/pope/random/llava-1.5-7b/unified/vcd/greedy/seed42.jsonl"
    out = smk(
        "-n",
        "--workflow-profile",
        str(ROOT / "profiles" / "slurm"),
        "--configfile",
        str(ROOT / "config/paper.yaml"),
        "--config",
        "offline=True",
        "--",
        target,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    job = out.stdout[out.stdout.index("rule decode_batch_llava_1_5_7b_unified_") :]
    assert target in job.split("\n    output: ")[1].split("\n")[0]
    resources = next(line for line in job.splitlines() if line.strip().startswith("resources:"))
    values = resources.replace(" ", "").split(":", 1)[1].split(",")
    assert {"gpu=1", "cpus_per_gpu=4", "mem_mb=32000", "runtime=960"} <= set(values), resources


@pytest.mark.skipif(__import__("importlib").util.find_spec("spacy") is not None, reason="spaCy is installed")
def test_missing_spacy_fails_before_any_job(tmp_path):
    """paper.yaml turns on AMBER's spaCy similarity: without spaCy the run stops before its first
    job, naming the key, instead of failing at scoring after the decoding."""
    out = smk(
        "--cores",
        "1",
        "--workflow-profile",
        "none",
        "--configfile",
        str(ROOT / "config/paper.yaml"),
        "--config",
        "offline=True",
        "--",
        "resources/chair/synonyms.txt",
        cwd=tmp_path,
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert (
        "config benchmarks.amber.spacy_model is set (resources/spacy/en_core_web_lg) but spaCy is not installed"
        in text
    )
    assert not (tmp_path / "resources").exists() and not (tmp_path / "logs").exists()


def test_pope_entry_needs_questions_or_build(tmp_path):
    def mutate(c):
        c["benchmarks"]["pope_x"] = {"images": "resources/demo/world/images/val"}

    out = smk("-n", "--configfile", str(write_config(tmp_path, mutate)), cwd=tmp_path)
    assert out.returncode != 0
    assert (
        "config benchmarks.pope_x: give `questions` (a POPE file path with {split}) or "
        "`build: {instances: ...}`"
    ) in out.stdout + out.stderr
    out = smk(
        "-n",
        "--configfile",
        str(write_config(tmp_path, lambda c: c["benchmarks"].update({"pope_x": {"build": {"n_images": 5}}}))),
        cwd=tmp_path,
    )
    assert out.returncode != 0 and "'instances' is a required property" in out.stdout + out.stderr
    out = smk(
        "-n",
        "--configfile",
        str(
            write_config(
                tmp_path, lambda c: c["benchmarks"].update({"pope_x": {"build": {"instances": "a.json"}}})
            )
        ),
        cwd=tmp_path,
    )
    assert (
        out.returncode != 0
        and "config benchmarks.pope_x: `images` (the image folder) is missing" in out.stdout + out.stderr
    )


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (
            lambda c: c["methods"]["vcd"].update(method="vdc"),
            "config methods.vcd.method: unknown method 'vdc'",
        ),
        (
            lambda c: c["methods"]["vcd"]["params"].update(alhpa=1),
            "config methods.vcd.params: unknown parameter 'alhpa' for method 'vcd'",
        ),
        (
            lambda c: c["methods"]["vcd"].update(protocol="papr"),
            "config methods.vcd.protocol: unknown protocol 'papr'",
        ),
        (
            lambda c: c["methods"]["vcd"]["params"].update(alpha="abc"),
            "config methods.vcd.params: parameter 'alpha' of method 'vcd' must be number, got 'abc' (str)",
        ),
    ],
    ids=["method", "parameter", "protocol", "alpha-type"],
)
def test_bad_method_parameter_or_protocol_fails_in_the_dry_run(tmp_path, mutate, needle):
    """Fails at parse time, naming the key: no DAG, no job (before: a 131-job dry run passed)."""
    out = smk("-n", "--configfile", str(write_config(tmp_path, mutate)), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert needle in text, text[-2000:]
    assert "Job stats" not in text


def test_demo_paper_and_demo_full_configs_build_their_dags(tmp_path):
    """make demo-paper / make demo-full: every method of demo-full decodes on all four benchmarks
    (demo MME and AMBER built by their rules); demo-paper runs paper protocols only."""
    full = smk(
        "-n", "--quiet", "rules", "--configfile", str(ROOT / "config" / "demo-full.yaml"), cwd=tmp_path
    )
    assert full.returncode == 0, full.stdout + full.stderr
    jobs = dict(line.split()[:2] for line in full.stdout.splitlines() if len(line.split()) == 2)
    assert jobs.get("build_demo_mme") == "1" and jobs.get("build_demo_amber") == "1", full.stdout
    from vcdflow.decoding import METHODS

    # make demo and make demo-full: every method but contrast/cid (no contrast input in the demo)
    # and halc (no detector/BLIP weights in the demo world)
    from vcdflow.overlay import read_config, resolve

    for name in ("config.yaml", "demo-full.yaml"):  # demo-full: an overlay of config.yaml
        cfg = resolve(read_config(ROOT / "config" / name), ROOT / "config" / name, ROOT)
        assert {m["method"] for m in cfg["methods"].values()} == set(METHODS) - {"contrast", "cid", "halc"}, (
            name
        )
    paper = smk(
        "-n", "--quiet", "rules", "--configfile", str(ROOT / "config" / "demo-paper.yaml"), cwd=tmp_path
    )
    assert paper.returncode == 0, paper.stdout + paper.stderr
    assert yaml.safe_load((ROOT / "config" / "demo-paper.yaml").read_text())["protocol"] == "paper"


def test_overlay_errors_stop_the_dry_run_naming_the_file_and_key(tmp_path):
    """An overlay naming an entry its base lacks fails at parse time in one line naming the file
    and the key; an overlay value the schema refuses is named after the merge (vcdflow.overlay)."""
    bad = tmp_path / "mine.yaml"
    bad.write_text("base: config\nmethods: [greedy, vcdd]\n")
    out = smk("-n", "--configfile", str(bad), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Job stats" not in text
    assert f"config {bad}: methods: 'vcdd' is not an entry of {ROOT / 'config' / 'config.yaml'}" in text, (
        text[-2000:]
    )
    bad.write_text("base: config\ndemo: {pope_images: many}\n")
    out = smk("-n", "--configfile", str(bad), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "'many' is not of type 'integer'" in text and "instance['demo']" in text


def test_parse_does_not_import_torch_once_the_method_record_is_cached(tmp_path):
    """The Snakefile's parse (once per invocation, once per job on a cluster) reads the methods'
    metadata and the config check from vcdflow's cache (keyed by the code digest): the second
    parse runs with `import torch` failing."""
    env = dict(os.environ, VCDFLOW_CACHE=str(tmp_path / "cache"))
    blocked = tmp_path / "blocked" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('torch imported at parse time')\n")
    args = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        str(ROOT / "tests" / "configs" / "micro.yaml"),
    ]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert list((tmp_path / "cache").glob("methods-*.json")) and list(
        (tmp_path / "cache" / "validated").iterdir()
    )
    env["PYTHONPATH"] = os.pathsep.join([str(blocked.parent), env.get("PYTHONPATH", "")])
    second = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    jobs = lambda out: [line.split() for line in out.stdout.splitlines() if len(line.split()) == 2]  # noqa: E731
    # micro.yaml's 6 labels (4 under unified, 2 under VCD's protocol) in decode jobs of at most 2
    # labels (ConVis' apart): 4 jobs
    assert jobs(second) == jobs(first)
    batches = {job[0]: job[1] for job in jobs(first) if job[0].startswith("decode_batch_")}
    assert batches == {
        f"decode_batch_demo_{b}": "1" for b in ("unified_0", "unified_1", "vcd_2", "unified_3")
    }
    # a config that was never checked still is (and then imports torch: fails here, naming it)
    bad = tmp_path / "other.yaml"
    bad.write_text(
        yaml.safe_dump(dict(yaml.safe_load((ROOT / "tests/configs/micro.yaml").read_text()), seeds=[3]))
    )
    third = subprocess.run(
        args[:-1] + [str(bad)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert third.returncode != 0 and "torch imported at parse time" in third.stdout + third.stderr
