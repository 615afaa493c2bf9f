"""Helpers shared by all rule files - config validation, the run grid, input functions.

Rules hold no logic: everything here only maps the (validated) config onto paths.
"""

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError


validate(config, schema="../schemas/config.schema.yaml")

BENCHMARKS = list(config["benchmarks"])
MODELS = list(config["models"])
METHOD_LABELS = list(config["methods"])
SEEDS = [int(s) for s in config["seeds"]]
SINGLE_SPLIT = "all"  # split name of benchmarks without splits (CHAIR, MME)
DEMO = config["world"] == "demo"


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
    """pope, chair, mme or amber. Further POPE datasets are keys pope_<name> (pope_aokvqa, pope_gqa)."""
    return "pope" if benchmark.startswith("pope_") else benchmark


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
        raise WorkflowError(f"config benchmarks.{_name}: give `questions` (a POPE file path with "
                            "{split}) or `build: {instances: ...}` to build them from COCO-format annotations")
    if not _cfg.get("images"):
        raise WorkflowError(f"config benchmarks.{_name}: `images` (the image folder) is missing")


def pope_build(wildcards):
    """The `build:` settings of a POPE entry, schema defaults filled in."""
    defaults = {"n_images": 500, "n_pos": 3, "seed": 0, "stats": "sampled"}
    return {**defaults, **config["benchmarks"][wildcards.benchmark]["build"]}


def pope_build_instances(wildcards):
    return pope_build(wildcards)["instances"]


def bench_splits(benchmark):
    """The splits a benchmark is decoded and scored on."""
    cfg = config["benchmarks"][benchmark]
    if bench_kind(benchmark) == "pope":
        return list(cfg["splits"])
    if benchmark == "amber":
        return list(cfg["tasks"])
    return [SINGLE_SPLIT]


ALL_SPLITS = sorted({s for b in BENCHMARKS for s in bench_splits(b)})


def _alternation(values):
    return "|".join(sorted((str(v) for v in values), key=len, reverse=True))


def method_config(label):
    """Normalised method entry: engine method, mode, sampling settings, params."""
    entry = dict(config["methods"][label])
    method = entry.get("method", label)
    do_sample = entry.get("do_sample", method == "sample")
    return {
        "label": label,
        "method": method,
        "mode": "sample" if do_sample else "greedy",
        "do_sample": bool(do_sample),
        "temperature": float(entry.get("temperature", 1.0)),
        "top_p": float(entry.get("top_p", 1.0)),
        "top_k": entry.get("top_k"),
        "params": dict(entry.get("params", {})),
        "prompt_suffix": dict(entry.get("prompt_suffix", {})),
    }


def model_dir(model):
    cfg = config["models"][model]
    return cfg.get("path", f"resources/models/{model}")


def model_config(model):
    cfg = dict(config["models"][model])
    return {
        "name": model,
        "path": model_dir(model),
        "family": cfg.get("family", "auto"),
        "dtype": cfg.get("dtype", config["dtype"]),
        "batch_size": int(cfg.get("batch_size", config["batch_size"])),
        "prompt_suffix": dict(cfg.get("prompt_suffix", {})),
        "revision": cfg.get("revision", "main"),
    }


def n_shards(benchmark):
    return int(config["benchmarks"][benchmark].get("n_shards", config["n_shards"]))


def bench_config(benchmark, split):
    """The benchmark slice a decode job needs, with {split} filled in."""
    cfg = dict(config["benchmarks"][benchmark])
    out = {"name": benchmark, "split": split}
    if bench_kind(benchmark) != benchmark:
        out["kind"] = bench_kind(benchmark)  # scorer and item loader of pope_<dataset> keys
    for key, value in cfg.items():
        out[key] = value.format(split=split) if isinstance(value, str) and key != "prompt" else value
    return out


def run_config(wildcards):
    """Everything that determines one result file; its hash tags the file."""
    run = {
        "benchmark": bench_config(wildcards.benchmark, wildcards.split),
        "model": model_config(wildcards.model),
        "method": method_config(wildcards.method),
        "seed": int(wildcards.seed),
        "device": config["device"],
        "threads": int(config["threads"]),
        "gpu_lock_dir": config["gpu_lock_dir"],
    }
    return convis_run(wildcards, run)  # ConVis: alpha per benchmark, APC, manifest path


def _image_input(path):
    """The rule output an image folder comes from (demo images live in one directory output)."""
    demo_images = "resources/demo/world/images"
    if DEMO and str(path).startswith(demo_images):
        return demo_images
    return path


def decode_inputs(wildcards):
    """Input files of a decode shard: the model and the benchmark's data."""
    bench = bench_config(wildcards.benchmark, wildcards.split)
    inputs = {"model": model_dir(wildcards.model)}
    if bench_kind(wildcards.benchmark) == "pope":
        inputs["questions"] = bench["questions"]
        inputs["images"] = _image_input(bench["images"])
    elif wildcards.benchmark == "chair":
        inputs["instances"] = bench["instances"]
        inputs["captions"] = bench["captions"]
        inputs["images"] = _image_input(bench["images"])
        if bench.get("image_ids"):
            inputs["image_ids"] = bench["image_ids"]
    elif wildcards.benchmark == "mme":
        inputs["root"] = bench["root"]
    elif wildcards.benchmark == "amber":
        inputs.update(amber_files(bench, wildcards.split))
    inputs.update(convis_decode_inputs(wildcards))  # ConVis: the reconstruction manifest
    return inputs


def amber_files(bench, split=None):
    root = bench["root"]
    files = {
        "annotations": f"{root}/data/annotations.json",
        "relation": f"{root}/data/relation.json",
        "safe_words": f"{root}/data/safe_words.txt",
    }
    if split:
        files["query"] = f"{root}/data/query/query_{split}.json"
        files["images"] = f"{root}/image"
    return files


def hub_model(wildcards):
    """Hub id and revision of a registry model (downloaded by rule download_model)."""
    cfg = config["models"][wildcards.model]
    if "hub_id" not in cfg:
        raise ValueError(
            f"config models.{wildcards.model}: no hub_id, and its folder "
            f"{model_dir(wildcards.model)} is not produced by any rule"
        )
    return {"hub_id": cfg["hub_id"], "revision": cfg.get("revision", "main")}


def score_inputs(wildcards):
    """Ground truth a scorer needs beside the result file."""
    bench = bench_config(wildcards.benchmark, wildcards.split)
    inputs = {
        "results": "results/{benchmark}/{split}/{model}/{method}/seed{seed}.jsonl".format(
            **wildcards
        )
    }
    if wildcards.benchmark == "chair":
        inputs["instances"] = bench["instances"]
        inputs["captions"] = bench["captions"]
        inputs["synonyms"] = bench["synonyms"]
        inputs["nltk_data"] = bench["nltk_data"]
    elif wildcards.benchmark == "amber":
        inputs.update(amber_files(bench))
        inputs["nltk_data"] = bench["nltk_data"]
        if bench.get("spacy_model"):
            inputs["spacy_model"] = bench["spacy_model"]
    return inputs


def shard_files(wildcards):
    n = n_shards(wildcards.benchmark)
    return [
        "results/shards/{benchmark}/{split}/{model}/{method}/seed{seed}/".format(**wildcards)
        + f"{i}-of-{n}.jsonl"
        for i in range(n)
    ]


def grid():
    """Every (benchmark, split, model, method, seed) of the config grid."""
    for benchmark in BENCHMARKS:
        for split in bench_splits(benchmark):
            for model in MODELS:
                for method in METHOD_LABELS:
                    for seed in SEEDS:
                        yield dict(
                            benchmark=benchmark, split=split, model=model, method=method, seed=seed
                        )


RESULT = "results/{benchmark}/{split}/{model}/{method}/seed{seed}"


def all_results():
    return [RESULT.format(**g) + ".jsonl" for g in grid()]


def all_scored():
    return [RESULT.format(**g) + ".scored.jsonl" for g in grid()]


def all_metric_parts():
    return [RESULT.format(**g) + ".metrics.csv" for g in grid()]


def report_runs():
    """Method label -> engine method, mode and params, for the report's baselines."""
    return {label: method_config(label) for label in METHOD_LABELS}


def final_outputs():
    return ["results/metrics.csv", "reports/index.html"]


DEMO_POPE_SPLITS = ["random", "popular", "adversarial"]


def gpus_per_job():
    """GPUs a heavy job asks for: 0 with device: cpu, else 1 (bound to a device at run time)."""
    return 0 if config["device"] == "cpu" else 1


def score_bench(wildcards):
    return bench_config(wildcards.benchmark, wildcards.split)


def paper_results():
    """The papers' numbers: resources/paper_results.csv of the working directory if present,
    else the copy shipped with the workflow."""
    local = Path("resources/paper_results.csv")
    if local.exists():
        return str(local)
    return str(Path(workflow.basedir) / "resources" / "paper_results.csv")


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
    """Method labels whose engine method is convis."""
    return [label for label in METHOD_LABELS if method_config(label)["method"] == "convis"]


def convis_manifest(benchmark, model):
    return CONVIS_MANIFEST.format(benchmark=benchmark, model=model)


def convis_decode_inputs(wildcards):
    """Extra decode inputs: the reconstruction manifest when the method is convis."""
    method = getattr(wildcards, "method", None)
    if method is None or method_config(method)["method"] != "convis":
        return {}
    return {"convis_manifest": convis_manifest(wildcards.benchmark, wildcards.model)}


def convis_run(wildcards, run):
    """run_config for a convis method: alpha per benchmark and APC from the convis section (unless
    the method's own params set them) and the manifest path the runner attaches from."""
    if run["method"]["method"] != "convis":
        return run
    params = dict(run["method"].get("params", {}))
    alphas = CONVIS.get("alpha", {})
    alpha = alphas.get(wildcards.benchmark, alphas.get(bench_kind(wildcards.benchmark)))
    if "alpha" not in params and alpha is not None:
        params["alpha"] = float(alpha)
    if "beta" not in params:
        params["beta"] = float(CONVIS.get("apc_lambda", 0.1)) if CONVIS.get("apc", False) else None
    run = dict(run, method=dict(run["method"], params=params))
    run["convis_manifest"] = convis_manifest(wildcards.benchmark, wildcards.model)
    return run


def convis_benches(wildcards):
    """bench_config slices of every split of the benchmark (the images ConVis captions)."""
    return [bench_config(wildcards.benchmark, s) for s in bench_splits(wildcards.benchmark)]


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
    settings = dict(CONVIS.get("caption", {}))
    settings["n_captions"] = int(CONVIS.get("n_captions", 4))
    return settings


def convis_report_manifests():
    """ConVis manifests the report shows reconstructions from (one per benchmark x model)."""
    if not convis_labels():
        return []
    return [convis_manifest(b, m) for b in BENCHMARKS for m in MODELS]
