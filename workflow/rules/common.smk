"""Helpers shared by all rule files - config validation, the run grid, input functions.

Rules hold no logic: everything here only maps the (validated) config onto paths.
"""

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError

from vcdflow import config as runs
from vcdflow.data import verify as verify_data
from vcdflow.benchmarks import SINGLE_SPLIT, get_benchmark, kind_of

try:  # a key written into the config: refused naming its place, before the schema echoes it
    runs.check_no_secrets(config)
    runs.check_duplicate_keys(workflow.configfiles)  # a method label written twice: the file and line
except ValueError as _exc:
    raise WorkflowError(str(_exc)) from None
validate(config, schema="../schemas/config.schema.yaml")
try:  # unknown method / parameter / protocol, ill-typed value: fail now, naming the key
    runs.validate_config(config)
except ValueError as _exc:
    raise WorkflowError(str(_exc)) from None

BENCHMARKS = list(config["benchmarks"])
MODELS = list(config["models"])
METHOD_LABELS = list(config["methods"])
SEEDS = [int(s) for s in config["seeds"]]
DEMO = config["world"] == "demo"
GRID = list(runs.grid(config))  # every result: benchmark, split, model, protocol, method, mode, seed
PROTOCOLS = sorted({g["protocol"] for g in GRID})
MODES = ["greedy", "sample"]
try:  # what each pre-placed file claims (a version without checksums fails now, naming the key)
    PINNED = verify_data.pinned_files(config)
except ValueError as _exc:
    raise WorkflowError(str(_exc)) from None


def check_pinned_data():
    """Run before the first job (onstart; not in dry runs): every pre-placed benchmark file that
    claims a pinned version has its checksum (vcdflow.data.verify), so a wrong or truncated file
    stops the run before anything decodes, instead of being decoded and labelled that version."""
    try:
        ok = verify_data.check_pinned(config)
    except verify_data.PinnedFileError as exc:
        raise WorkflowError(str(exc)) from None
    if ok:
        print(
            f"vcdflow: {len(ok)} pre-placed benchmark file(s) match their pinned checksums", file=sys.stderr
        )


def check_optional_packages():
    """Run before the first job (onstart; not in dry runs): packages that a configured option
    needs, so a run does not fail at scoring after days of decoding."""
    amber = config["benchmarks"].get("amber") or {}
    deployment = {str(m).lower() for m in workflow.deployment_settings.deployment_method}
    if any("conda" in m or "apptainer" in m for m in deployment):
        return  # jobs run in their own environment (envs/vcdflow.yaml has spaCy)
    if amber.get("spacy_model") and importlib.util.find_spec("spacy") is None:
        raise WorkflowError(
            f"config benchmarks.amber.spacy_model is set ({amber['spacy_model']}) but spaCy is not "
            "installed: pip install -e '.[amber]' (or set benchmarks.amber.spacy_model: null for "
            "exact word matches only)"
        )


def bench_kind(benchmark):
    """pope, chair, mme or amber (vcdflow.benchmarks.kind_of: pope_gqa is POPE)."""
    return kind_of(benchmark)


POPE_STRATEGIES = ["random", "popular", "adversarial"]
POPE_BUILT = "resources/pope/built/{benchmark}/{benchmark}_pope_{split}.json"

# A POPE entry with `build:` gets its questions from rule build_pope (unless it names its own file).
for _name, _cfg in config["benchmarks"].items():
    if bench_kind(_name) != "pope":
        continue
    if _cfg.get("build") and _cfg.get("questions"):
        raise WorkflowError(f"config benchmarks.{_name}: give either `questions` or `build`, not both")
    if _cfg.get("build"):
        _cfg["questions"] = POPE_BUILT.replace("{benchmark}", _name)
    if not _cfg.get("questions"):
        raise WorkflowError(
            f"config benchmarks.{_name}: give `questions` (a POPE file path with "
            "{split}) or `build: {instances: ...}` to build them from COCO-format annotations"
        )
    if not _cfg.get("images"):
        raise WorkflowError(f"config benchmarks.{_name}: `images` (the image folder) is missing")


def pope_build(wildcards):
    """The `build:` settings of a POPE entry, schema defaults filled in."""
    defaults = {"n_images": 500, "n_pos": 3, "seed": 0, "stats": "sampled"}
    return {**defaults, **config["benchmarks"][wildcards.benchmark]["build"]}


def pope_build_instances(wildcards):
    return pope_build(wildcards)["instances"]


def bench_splits(benchmark):
    """The splits a benchmark is decoded and scored on (its registry entry decides)."""
    return runs.splits_of(config, benchmark)


ALL_SPLITS = sorted({s for b in BENCHMARKS for s in bench_splits(b)})


def _alternation(values):
    return "|".join(sorted((str(v) for v in values), key=len, reverse=True))


def model_dir(model):
    cfg = config["models"][model]
    return cfg.get("path", f"resources/models/{model}")


def model_config(model):
    """The result-deciding model entry (no batch size: that is an execution setting)."""
    return runs.model_entry(config, model)


def n_shards(benchmark):
    return runs.execution(config, benchmark=benchmark).n_shards


def bench_config(benchmark, split):
    """The benchmark slice of one split, {split} filled in (vcdflow.config.bench_slice)."""
    return runs.bench_slice(config, benchmark, split)


_SPECS = {}  # one build_run per result (input functions are called once per job, often more)


def _build(wildcards):
    """The vcdflow.config.RunSpec of a result (memoised)."""
    key = tuple(
        str(getattr(wildcards, k)) for k in ("benchmark", "split", "model", "method", "seed", "protocol")
    )
    if key not in _SPECS:
        spec = runs.build_run(
            config,
            benchmark=key[0],
            split=key[1],
            model=key[2],
            method=key[3],
            seed=int(key[4]),
            protocol=key[5],
        )
        # keys sorted: Snakemake compares params by their repr, so the order a config writes its
        # keys in (a YAML rewritten with sorted keys) must not re-decode anything
        _SPECS[key] = (spec, json.loads(json.dumps(spec.as_dict(), sort_keys=True)))
    return _SPECS[key]


def run_spec(wildcards):
    """The result-deciding run of a result file (vcdflow.config.build_run): the only thing that
    goes into a decode job's params, so threads, batch size or device never re-decode, and
    score-only settings (parser, the scorers' word lists) never do either."""
    spec = _build(wildcards)[1]
    if spec["method"]["mode"] != wildcards.mode:
        raise WorkflowError(
            f"{wildcards.method} under protocol {wildcards.protocol} decodes in "
            f"{spec['method']['mode']} mode, not {wildcards.mode}"
        )
    return spec


def _image_input(path):
    """The rule output an image folder comes from (demo images live in one directory output)."""
    demo_images = "resources/demo/world/images"
    if DEMO and str(path).startswith(demo_images):
        return demo_images
    return path


_BENCHES = {}  # (benchmark, split, model, label, protocol) -> its benchmark slice, the paper's data applied


def decode_inputs(wildcards):
    """Input files of a decode shard: the model, the benchmark's data (its registry entry's
    decode_inputs) and the extra inputs the method declares (ConVis: its reconstructions)."""
    if getattr(wildcards, "protocol", None) is not None:  # a paper protocol's own data (its POPE files)
        key = tuple(str(getattr(wildcards, k)) for k in ("benchmark", "split", "model", "method", "protocol"))
        if key not in _BENCHES:
            _BENCHES[key] = runs.protocol_bench(
                config, key[0], key[1], model=key[2], method=key[3], protocol=key[4]
            )
        bench = _BENCHES[key]
    else:
        bench = bench_config(wildcards.benchmark, wildcards.split)
    inputs = {"model": model_dir(wildcards.model)}
    for key, value in get_benchmark(wildcards.benchmark).decode_inputs(bench).items():
        inputs[key] = _image_input(value) if key == "images" else value
    method = getattr(wildcards, "method", None)
    if method is not None:
        engine = runs.method_entry(config, method)["method"]
        for kind in runs.method_inputs(engine):
            inputs[kind] = runs.method_input_path(kind, config, wildcards.benchmark, wildcards.model)
    return inputs


def hub_model(wildcards):
    """Hub id and revision of a registry model (downloaded by rule download_model)."""
    cfg = config["models"][wildcards.model]
    if "hub_id" not in cfg:
        raise ValueError(
            f"config models.{wildcards.model}: no hub_id, and its folder "
            f"{model_dir(wildcards.model)} is not produced by any rule"
        )
    return {"hub_id": cfg["hub_id"], "revision": cfg.get("revision", "main")}


RESULT = "results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}"
SHARD = "results/shards/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}/{shard}-of-{nshards}.jsonl"
LOG = "{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}"


def score_inputs(wildcards):
    """Ground truth a scorer needs beside the result file (the registry entry's score_inputs)."""
    bench = bench_config(wildcards.benchmark, wildcards.split)
    inputs = {"results": RESULT.format(**wildcards) + ".jsonl"}
    inputs.update(get_benchmark(wildcards.benchmark).score_inputs(bench))
    return inputs


def decoded_seed(wildcards):
    """The seed a result is decoded under: a greedy method with no random draw gives the same
    output for every seed, so it is decoded once (the first seed) and recorded for every seed."""
    return runs.decode_seed(config, run_spec(wildcards))


def merge_seed(wildcards):
    """The seed the merged records carry (the result's own, also when decoded under another)."""
    return int(wildcards.seed)


def shard_files(wildcards):
    n = n_shards(wildcards.benchmark)
    wc = dict(wildcards, seed=decoded_seed(wildcards))
    return [SHARD.format(**wc, shard=i, nshards=n) for i in range(n)]


# --------------------------------------------------------------------------- grouped decoding
# config group_decode: a decode job and a scoring job serve many results of one (model,
# protocol) instead of one job per result shard and per result: the model loads once for all of
# them. With group_labels 1 and no group_results, one job per (model, protocol, method label,
# mode) decodes every benchmark, split and seed of the label (rules decode_group/score_group; a
# protocol under which a label's mode differs between benchmarks goes in batches instead);
# otherwise the results are cut into batches (below). A sharded benchmark's shards are decoded
# one after the other in the job, each with its own checkpoint. Same files, same records.


class _Wildcards(dict):
    """A wildcards-like dict (attribute access and ** both work) for the input functions above."""

    __getattr__ = dict.__getitem__


GROUP_BENCHMARKS = BENCHMARKS if config.get("group_decode", False) else []
GROUP_PARTS = [(b, s, n) for b in GROUP_BENCHMARKS for s in bench_splits(b) for n in SEEDS]
GROUP_KEY = "{model}/{protocol}/{method}/{mode}"


def _label_parts():
    """(model, protocol, label, mode) -> the GROUP_PARTS results the grid has for it: all of them,
    or fewer where the method does not apply to a benchmark's answers (vcdflow.config.applies)."""
    parts = {}
    for g in GRID:
        if g["benchmark"] in GROUP_BENCHMARKS:
            key = (g["model"], g["protocol"], g["method"], g["mode"])
            parts.setdefault(key, set()).add((g["benchmark"], g["split"], g["seed"]))
    return {key: [p for p in GROUP_PARTS if p in have] for key, have in parts.items()}


LABEL_PARTS = _label_parts()


def _group_protocols():
    """Protocols under which every label has one mode throughout (a label whose mode differs
    between benchmarks keeps the per-shard jobs for the whole protocol)."""
    modes = {}
    for model, protocol, method, mode in LABEL_PARTS:
        modes.setdefault((model, protocol, method), set()).add(mode)
    partial = {key[1] for key, have in modes.items() if len(have) > 1}
    return sorted({key[1] for key in modes} - partial)


GROUP_PROTOCOLS = _group_protocols() if GROUP_PARTS else []
# labels with every GROUP_PARTS result: the decode_group/score_group rules' outputs (wildcards)
# are the same list for every label; the others (a method left out of some benchmarks) keep the
# per-shard rules there, or go in label batches (group_labels > 1), whose paths are per label
FULL_LABELS = sorted(
    {key[2] for key in LABEL_PARTS} - {key[2] for key, have in LABEL_PARTS.items() if have != GROUP_PARTS}
)


def label_alternation(labels):
    return "|".join(re.escape(str(v)) for v in sorted(labels, key=len, reverse=True))


def group_outputs(suffix):
    """The result files of one group (wildcards model, protocol, method, mode) + ``suffix``."""
    keep = {k: f"{{{k}}}" for k in ("model", "protocol", "method", "mode")}
    return [f"{RESULT.format(benchmark=b, split=s, seed=n, **keep)}{suffix}" for b, s, n in GROUP_PARTS]


def _group_wildcards(wildcards, benchmark, split, seed):
    return _Wildcards(
        benchmark=benchmark,
        split=split,
        seed=seed,
        model=wildcards.model,
        protocol=wildcards.protocol,
        method=wildcards.method,
        mode=wildcards.mode,
    )


def label_parts(wildcards):
    """The GROUP_PARTS results of one label (wildcards model, protocol, method, mode)."""
    return LABEL_PARTS.get((wildcards.model, wildcards.protocol, wildcards.method, wildcards.mode), [])


def group_decode_inputs(wildcards):
    """The model and every benchmark split's decode inputs (keys suffixed with benchmark/split)."""
    inputs = {"model": model_dir(wildcards.model)}
    for b, s in dict.fromkeys((b, s) for b, s, _ in label_parts(wildcards)):
        for key, value in decode_inputs(_group_wildcards(wildcards, b, s, SEEDS[0])).items():
            if key != "model":
                inputs[f"{key}_{b}_{s}"] = value
    return inputs


def group_runs(wildcards):
    """What a group's decode job decodes: per distinct (benchmark, split, decoded seed) its run
    spec, its shard file and the result files (with their seeds) merged from it."""
    jobs = {}
    for b, s, n in label_parts(wildcards):
        wc = _group_wildcards(wildcards, b, s, n)
        seed = decoded_seed(wc)
        if (b, s, seed) not in jobs:
            decoded = _Wildcards(wc, seed=seed)
            jobs[(b, s, seed)] = {"run": run_spec(decoded), "shards": shard_files(decoded), "results": []}
        jobs[(b, s, seed)]["results"].append([f"{RESULT.format(**wc)}.jsonl", n])
    return list(jobs.values())


def group_score_inputs(wildcards):
    inputs = {}
    for b, s, n in label_parts(wildcards):
        for key, value in score_inputs(_group_wildcards(wildcards, b, s, n)).items():
            inputs[f"{key}_{b}_{s}_{n}"] = value
    return inputs


def group_score_parts(wildcards):
    """Per result of the group: its scorer slice, result file and the two files it scores into."""
    parts = []
    for b, s, n in label_parts(wildcards):
        wc = _group_wildcards(wildcards, b, s, n)
        path = RESULT.format(**wc)
        parts.append(
            {
                "bench": score_bench(wc),
                "results": f"{path}.jsonl",
                "scored": f"{path}.scored.jsonl",
                "metrics": f"{path}.metrics.csv",
                "seed": n,
                "model": wildcards.model,
                "method": wildcards.method,
            }
        )
    return parts


def group_name(wildcards):
    return GROUP_KEY.format(**wildcards)


# Batches (config group_labels > 1 or group_results): one decode job and one scoring job per
# batch of results of a (model, protocol), the model loaded once for the whole batch. The labels
# of a (model, protocol) are taken in config order, spread evenly over the fewest batches of at
# most group_labels labels; labels whose method takes extra decode inputs (ConVis: its
# reconstructions) are batched apart, so they do not hold the others back. With group_results,
# a batch is then cut, in grid order, into decode jobs of at most that many decodes (a decode: one
# label on one benchmark split under one seed, all its shards; a greedy method without a random
# draw is decoded once for every seed) — the knob that sets a job's GPU time; up to SCORE_CUTS of
# these decode jobs are one scoring job (scoring is CPU work of minutes). One rule per job
# (decode_batch_<name>, score_batch_<name>), its output paths literal: Snakemake prefers a rule
# without wildcards over the per-result rules (merge_shards, score) making the same files.
GROUP_LABELS = int(config.get("group_labels", 1))
GROUP_RESULTS = config.get("group_results")
# a scoring job scores the decodes of at most this many decode jobs of its label batch: Snakemake
# finds a file's producer by scanning that rule's outputs one by one, so a rule of thousands of
# outputs makes planning quadratic (a (model, protocol)'s whole batch: ~1,500 results)
SCORE_CUTS = 4


def _label_batches():
    """(decode batches, scoring batches): name -> its decodes (group_runs entries, each with its
    label, in order). group_results cuts a label batch into decode jobs; every SCORE_CUTS of them
    are one scoring job, named after its first (without group_results, the two are the same)."""
    labels = {}
    for g in GRID:
        if g["benchmark"] in GROUP_BENCHMARKS:
            kinds = tuple(runs.method_inputs(runs.method_entry(config, g["method"])["method"]))
            label = _Wildcards(model=g["model"], protocol=g["protocol"], method=g["method"], mode=g["mode"])
            labels.setdefault((g["model"], g["protocol"], kinds), {})[(g["method"], g["mode"])] = label
    decode, score = {}, {}
    for (model, protocol, _), group in labels.items():
        group = list(group.values())
        n = -(-len(group) // GROUP_LABELS)  # the fewest batches of at most GROUP_LABELS labels, sizes even
        for i in range(n):
            batch = [
                dict(job, label=label)
                for label in group[len(group) * i // n : len(group) * (i + 1) // n]
                for job in group_runs(label)
            ]
            size = int(GROUP_RESULTS or len(batch))
            names = [
                "".join(c if c.isalnum() else "_" for c in f"{model}_{protocol}_{len(decode) + k}")
                for k in range(-(-len(batch) // size))
            ]
            decode.update({name: batch[k * size : (k + 1) * size] for k, name in enumerate(names)})
            score.update(
                {
                    names[k]: batch[k * size : (k + SCORE_CUTS) * size]
                    for k in range(0, len(names), SCORE_CUTS)
                }
            )
    return decode, score


LABEL_BATCHES, SCORE_BATCHES = (
    _label_batches() if GROUP_BENCHMARKS and (GROUP_LABELS > 1 or GROUP_RESULTS) else ({}, {})
)


def batch_resources(kind, **defaults):
    """``defaults`` updated with the resources the profile sets for ``kind`` (decode_batch or
    score_batch: every decode_batch_<name> / score_batch_<name> rule, which --set-resources,
    addressing rules by name, could not reach one by one)."""
    given = workflow.resource_settings.overwrite_resources.get(kind, {})
    return {**defaults, **{name: getattr(value, "raw", value) for name, value in given.items()}}


def batch_threads(kind, default):
    """The threads the profile sets for ``kind`` (--set-threads; see batch_resources), else ``default``."""
    threads = workflow.resource_settings.overwrite_threads.get(kind)
    return default if threads is None else int(getattr(threads, "raw", threads))


def batch_outputs(jobs, suffix):
    """The result files of a batch's decodes + ``suffix`` (literal paths)."""
    return [f"{path[: -len('.jsonl')]}{suffix}" for job in jobs for path, _ in job["results"]]


def _merged(dicts):
    """One input dict from the labels' input dicts (a key repeated with another value numbered)."""
    out = {}
    for i, d in enumerate(dicts):
        for key, value in d.items():
            if out.setdefault(key, value) != value:
                out[f"{key}_{i}"] = value
    return out


def _batch_parts(jobs):
    """(label, benchmark, split, seed) of every result of a batch."""
    return [
        (job["label"], job["run"]["benchmark"]["name"], job["run"]["benchmark"]["split"], seed)
        for job in jobs
        for _, seed in job["results"]
    ]


def batch_decode_inputs(jobs):
    """The model and the decode inputs of every benchmark split the batch decodes."""
    parts = dict.fromkeys(
        (job["label"]["method"], b, s)
        for job in jobs
        for b, s in [(job["run"]["benchmark"]["name"], job["run"]["benchmark"]["split"])]
    )
    labels = {job["label"]["method"]: job["label"] for job in jobs}
    inputs = [{"model": model_dir(jobs[0]["label"]["model"])}]
    for method, b, s in parts:
        wc = _group_wildcards(labels[method], b, s, SEEDS[0])
        inputs.append(
            {key if key == "model" else f"{key}_{b}_{s}": value for key, value in decode_inputs(wc).items()}
        )
    return _merged(inputs)


def batch_score_inputs(jobs):
    return _merged(
        {f"{key}_{b}_{s}_{n}": value for key, value in score_inputs(_group_wildcards(label, b, s, n)).items()}
        for label, b, s, n in _batch_parts(jobs)
    )


def batch_runs(jobs):
    """What the batch's decode job decodes (runner.decode_group's jobs)."""
    return [{k: v for k, v in job.items() if k != "label"} for job in jobs]


def batch_score_parts(jobs):
    parts = []
    for label, b, s, n in _batch_parts(jobs):
        wc = _group_wildcards(label, b, s, n)
        path = RESULT.format(**wc)
        parts.append(
            {
                "bench": score_bench(wc),
                "results": f"{path}.jsonl",
                "scored": f"{path}.scored.jsonl",
                "metrics": f"{path}.metrics.csv",
                "seed": n,
                "model": label.model,
                "method": label.method,
            }
        )
    return parts


def grid():
    """Every result of the config grid (vcdflow.config.grid)."""
    return iter(GRID)


def all_results():
    return [RESULT.format(**g) + ".jsonl" for g in GRID]


def all_scored():
    return [RESULT.format(**g) + ".scored.jsonl" for g in GRID]


def all_metric_parts():
    return [RESULT.format(**g) + ".metrics.csv" for g in GRID]


def all_sidecars():
    return [RESULT.format(**g) + ".meta.json" for g in GRID]


def report_runs():
    """Run name (label, or label@protocol) -> engine method, mode, params, protocol and label."""
    from vcdflow.report.analysis import run_key

    out = {}
    for g in GRID:
        key = run_key(g["method"], g["protocol"])
        if key in out:
            continue
        spec = run_spec(SimpleNamespace(**g))
        out[key] = {
            "method": spec["method"]["method"],
            "mode": spec["method"]["mode"],
            "params": spec["method"]["params"],
            "protocol": g["protocol"],
            "label": g["method"],
            "search": spec["method"].get("search"),
        }
    return out


def final_outputs():
    return ["results/metrics.csv", "reports/index.html"]


DEMO_POPE_SPLITS = ["random", "popular", "adversarial"]


def gpus_per_job():
    """GPUs a heavy job asks for: 0 with device: cpu, else 1 (bound to a device at run time)."""
    return 0 if config["device"] == "cpu" else 1


def score_bench(wildcards):
    """The benchmark slice a scorer gets: the run's benchmark slice and its score-only settings
    (RunSpec.scoring: the protocol-resolved parser, the judge, the scorers' word lists), with the
    protocol and mode that label its metric rows."""
    run_spec(wildcards)  # the mode check
    return {**_build(wildcards)[0].score_slice(), "protocol": wildcards.protocol, "mode": wildcards.mode}


def paper_results():
    """The papers' numbers: resources/paper_results.csv of the working directory if present,
    else the copy shipped with the workflow."""
    local = Path("resources/paper_results.csv")
    if local.exists():
        return str(local)
    return str(Path(workflow.basedir) / "resources" / "paper_results.csv")


def demo_model_shipped():
    """The shipped demo-model folder (the working directory's copy, else the workflow's), or
    None when demo.train.shipped is false or none exists (vcdflow.models.demo_shipped)."""
    if not config["demo"]["train"].get("shipped", True):
        return None
    for base in (Path("."), Path(workflow.basedir)):
        if (base / "resources/demo_model/training_inputs.json").is_file():
            return str(base / "resources/demo_model")
    return None


# --------------------------------------------------------------------------- ConVis

CONVIS = config.get("convis", {})
CONVIS_T2I = dict(CONVIS.get("t2i", {}))
if CONVIS_T2I.get("kind", "demo") == "demo":
    # The demo T2I weights ship with the workflow: use the working directory's copy if there is
    # one, else the shipped folder (so a run in another directory never retrains them).
    _t2i = CONVIS_T2I.get("path", "resources/demo_t2i")
    if not Path(_t2i).exists() and (Path(workflow.basedir) / _t2i).exists():
        CONVIS_T2I["path"] = str(Path(workflow.basedir) / _t2i)
CONVIS_MANIFEST = "results/convis/manifests/{benchmark}/{model}.json"
CONVIS_CAPTIONS = "results/convis/captions/{benchmark}/{model}/{shard}-of-{nshards}.jsonl"


def convis_labels():
    """Method labels whose engine method needs ConVis reconstructions."""
    return [
        label
        for label in METHOD_LABELS
        if "convis_reconstructions" in runs.method_inputs(runs.method_entry(config, label)["method"])
    ]


def convis_manifest(benchmark, model):
    return CONVIS_MANIFEST.format(benchmark=benchmark, model=model)


def convis_benches(wildcards):
    """The decode slices of every split of the benchmark (the images ConVis captions; the
    score-only keys left out, vcdflow.config.decode_slice, so a new parser re-captions nothing)."""
    return [runs.decode_slice(config, wildcards.benchmark, s)[0] for s in bench_splits(wildcards.benchmark)]


def convis_caption_inputs(wildcards):
    """The model and every split's benchmark data (keys suffixed with the split)."""
    inputs = {}
    for s in bench_splits(wildcards.benchmark):
        wc = SimpleNamespace(benchmark=wildcards.benchmark, split=s, model=wildcards.model)
        for key, value in decode_inputs(wc).items():
            inputs["model" if key == "model" else f"{key}_{s}"] = value
    return inputs


def convis_caption_shards(wildcards):
    n = int(CONVIS.get("caption", {}).get("n_shards", 1))
    return [
        CONVIS_CAPTIONS.format(benchmark=wildcards.benchmark, model=wildcards.model, shard=i, nshards=n)
        for i in range(n)
    ]


def convis_model(wildcards):
    return model_config(wildcards.model)


def convis_model_name(wildcards):
    return wildcards.model


def convis_caption_settings():
    """Caption settings that decide the captions (the batch size is read at job time)."""
    settings = {k: v for k, v in CONVIS.get("caption", {}).items() if k != "batch_size"}
    settings["n_captions"] = int(CONVIS.get("n_captions", 4))
    return settings


def convis_report_manifests():
    """ConVis manifests the report shows reconstructions from (one per benchmark x model)."""
    if not convis_labels():
        return []
    return [convis_manifest(b, m) for b in BENCHMARKS for m in MODELS]


# --------------------------------------------------------------------------- VTI (rules in vti.smk)
from vcdflow import steering_fit as vti_fit

VTI_FIT_SET = vti_fit.fit_set_of(config)
vti_fit.fit_set_identity(VTI_FIT_SET)  # a misspelt vti.fit_set fails here, naming the value
VTI_FIT_FILE = {
    "official": "resources/vti/hallucination_vti_demos.jsonl",
    "demo": "resources/vti/demo_fit_set.jsonl",
}[VTI_FIT_SET]
VTI_IMAGES = {"official": "resources/vti/train2014", "demo": "resources/demo/world/images/train"}[VTI_FIT_SET]


def vti_directions(model):
    """results/vti/{model}/{fit key}.pt (vcdflow.steering_fit.directions_path)."""
    return vti_fit.directions_path(config, model)


def _vti_images_input(wildcards):
    return "resources/demo/world/images" if VTI_FIT_SET == "demo" else VTI_IMAGES


# --------------------------------------------------------------------------- failures


def check_judge_keys():
    """onstart: every judge a benchmark will ask has its API key variable set (before decoding)."""
    from vcdflow.benchmarks.judged import check_judge_keys as _check

    try:
        _check(config)
    except ValueError as exc:
        raise WorkflowError(str(exc)) from None


def set_aside_stale_tables():
    """onerror: when a result or a metric part is missing after a failed job (a failed judge, a
    failed decode), results/metrics.csv and the report are older than it: renamed to
    <name>.stale (kept, never shown as current), so no table outlives a failed score."""
    missing = [p for p in [*all_results(), *all_metric_parts()] if not Path(p).exists()]
    if not missing:
        return
    for table in final_outputs():
        t = Path(table)
        if t.exists():
            t.replace(t.with_name(t.name + ".stale"))
            print(
                f"vcdflow: {table} is older than the failed or missing {missing[0]} "
                f"({len(missing)} missing): set aside as {t.name}.stale; rerun when fixed"
            )
