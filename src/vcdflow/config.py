"""The run contract: what decides a result, apart from how it runs.

A result file is decided by a :class:`RunSpec` — benchmark (and split), model and revision,
method and params, decoding mode, protocol (resolved: prompt, system text, warpers, params
overrides, ``max_new_tokens``, image preprocessing), seed and the digests of a method's extra
inputs. Only :meth:`RunSpec.as_dict` goes into a rule's ``params`` and the checkpoint hash
(:func:`vcdflow.runner.result_hash`). What decides only the scores — the answer parser
(:func:`run_parser`, checked against the benchmark's scorer when the config is parsed), the
scorers' word lists and models, a judge — is ``RunSpec.scoring``, and what decides only the
grid (the list of splits) is in neither: changing them re-scores and never re-decodes. How it runs — device, threads, batch size, shards,
lock folder — is an :class:`Execution`, read at job time (``threads=2 batch_size=8 device=cpu``
re-decodes nothing).

The workflow's ``common.smk`` and the CLI build runs with the same functions:

* :func:`validate_config` (parse time: unknown method / parameter / protocol, ill-typed value);
* :func:`grid` (every result of a config: benchmark, split, model, protocol, method label,
  mode, seed);
* :func:`build_run` ``(config, benchmark=, split=, model=, method=, seed=, protocol=) -> RunSpec``;
* :func:`execution` ``(config, model=, threads=) -> Execution``;
* :func:`job_run` ``(spec_dict, execution) -> dict``: the flat dict ``run_shard`` decodes
  (the spec plus ``device``, ``threads``, ``gpu_lock_dir`` and ``model.batch_size``).

Protocol choice (config ``protocol:`` at top level, or per method): ``unified`` (default),
``paper`` (each method's own paper protocol, :data:`vcdflow.protocols.PAPER_OF`), a protocol name,
or a list of these. Precedence: under ``unified`` what the config writes (benchmark ``prompt``,
``parser``, ``max_new_tokens``; method ``temperature``, ``top_p``, ``top_k``, ``params``) wins over
the unified protocol; under a paper protocol the paper's value wins and the config only fills
what the protocol leaves open. **Baselines under** ``paper``: a method with no paper of its own
(``greedy``, ``sample``, ``apc``, …) is decoded under *every* paper protocol the grid uses (the
protocols of the other methods run with ``paper``), so each paper comparison has a baseline
decoded under the same prompt, parser, system text and warpers.

**Beam search** (:func:`vcdflow.decoding.generate`): a method entry's ``num_beams``,
``length_penalty``, ``early_stopping``, ``length_norm`` (:data:`SEARCH_KEYS`), and a protocol's
``search`` (VTI's 5 beams, DoLa's 3 in HALC's CHAIR harness, a harness's transformers length
normalisation; :class:`vcdflow.protocols.Resolved` ``search``), with the same precedence. A run
with ``num_beams`` > 1 records all four as ``method.search`` (so its hash differs from the greedy
run's) and :func:`vcdflow.runner.decode_batch` passes them to ``generate``; a one-beam run records
none (its hash is what it was before beams existed). Beam search is a greedy mode: ``num_beams``
> 1 implies ``do_sample: false``, and with ``do_sample: true`` it fails validation. A method that
runs its own search (OPERA, HALC, contrastive search, text_cd's ``li``) refuses ``num_beams``
through its own ``search`` hook, asked at validation time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

from .benchmarks import get_benchmark, kind_of

UNIFIED = "unified"
PAPER = "paper"
#: config keys of a method entry that are sampling settings (None = not written)
_WARPERS = ("temperature", "top_p", "top_k")
_WARPER_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": None}
#: config keys of a method entry that set its beam search (:func:`vcdflow.decoding.generate`)
SEARCH_KEYS = ("num_beams", "length_penalty", "early_stopping", "length_norm")
SEARCH_DEFAULTS = {"num_beams": 1, "length_penalty": 1.0, "early_stopping": False, "length_norm": "generated"}
#: default max_new_tokens per benchmark kind where neither config nor protocol says
_MAX_NEW_TOKENS = {"pope": 8, "chair": 64, "mme": 16, "amber": 64}


#: extra-input kind -> path template of the file a decode job needs ({benchmark}, {model})
def _vti_directions(config: Mapping[str, Any], benchmark: str, model: str) -> str:
    from .steering_fit import directions_path  # torch-free at import

    return directions_path(config, model, benchmark)


def _halc_aux(config: Mapping[str, Any], benchmark: str, model: str) -> list[str]:
    """HALC's auxiliary model folders (detector, scorer, tagger: HALC's defaults GroundingDINO,
    BLIP, spaCy en_core_web_sm), from rule download_halc_aux (workflow/rules/halc.smk)."""
    return ["resources/halc/grounding_dino_tiny", "resources/halc/blip_large", "resources/halc/spacy_sm"]


#: extra input kind (declared by a method's ``extra_inputs``) -> the file or folder the workflow
#: provides: a template over ``{benchmark}``/``{model}`` or a callable (config, benchmark, model)
METHOD_INPUTS: dict[str, Any] = {
    "convis_reconstructions": "results/convis/manifests/{benchmark}/{model}.json",  # rules in convis.smk
    "amateur_model": "resources/amateurs/{model}",  # text_cd's amateur (workflow/rules/amateur.smk)
    "vti_directions": _vti_directions,  # VTI's fitted directions (workflow/rules/vti.smk)
    "halc_aux": _halc_aux,  # HALC's detector/scorer/tagger folders (workflow/rules/halc.smk)
}


def method_input_path(kind: str, config: Mapping[str, Any], benchmark: str, model: str) -> str:
    """The path the workflow provides for extra input ``kind`` of a (benchmark, model) run."""
    spec = METHOD_INPUTS[kind]
    return spec(config, benchmark, model) if callable(spec) else spec.format(benchmark=benchmark, model=model)


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one result file (goes into params and the hash), and beside it
    what decides only its scores (``scoring``: the answer parser, the scorer's word lists and
    models; never in the hash, so changing it re-scores without re-decoding)."""

    benchmark: dict
    model: dict
    method: dict
    protocol: dict
    seed: int
    inputs: dict = field(default_factory=dict)  # method inputs: kind -> path
    scoring: dict = field(default_factory=dict)  # score-only settings (not in as_dict)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("scoring")
        if not out["inputs"]:
            out.pop("inputs")
        return out

    def score_slice(self) -> dict:
        """The benchmark slice a scorer gets: the decode run's benchmark and the score-only keys."""
        return {**self.benchmark, **self.scoring}


@dataclass(frozen=True)
class Execution:
    """How a run executes; never changes its records."""

    device: str = "auto"
    threads: int = 1
    batch_size: int = 16
    n_shards: int = 1
    gpu_lock_dir: str = ".vcdflow/gpu-locks"
    #: the decode step (``vcdflow.decoding.generate(compile=...)``): "off" | "static" | "on"
    compile: str = "off"

    def as_dict(self) -> dict:
        return asdict(self)


def job_run(spec: Mapping, execution: "Execution | Mapping") -> dict:
    """The flat run dict the runner decodes: the spec plus the execution settings
    (``device``, ``threads``, ``gpu_lock_dir`` at top level, ``model.batch_size``, ``execution``).
    :func:`vcdflow.runner.result_hash` drops them again."""
    ex = execution.as_dict() if isinstance(execution, Execution) else dict(execution)
    run = dict(spec)
    run["model"] = {**dict(spec["model"]), "batch_size": int(ex["batch_size"])}
    run.update(device=ex["device"], threads=int(ex["threads"]), gpu_lock_dir=ex["gpu_lock_dir"], execution=ex)
    return run


# --------------------------------------------------------------------------- config slices


def bench_slice(config: Mapping, benchmark: str, split: str) -> dict:
    """The benchmark entry of one split: ``name``, ``kind``, ``split`` and the entry's keys with
    ``{split}`` filled in (``n_shards`` and ``build`` left out: they do not decide records)."""
    cfg = dict(config["benchmarks"][benchmark])
    out = {"name": benchmark, "kind": kind_of(benchmark), "split": split}
    for key, value in cfg.items():
        if key in ("n_shards", "build"):
            continue
        out[key] = (
            value.format(split=split, version=cfg.get("version", "head"))
            if isinstance(value, str) and key != "prompt"
            else value
        )
    return out


def protocol_data(config: Mapping) -> bool:
    """Whether a paper protocol's declared benchmark data (its CHAIR images, its POPE question
    files: :attr:`vcdflow.protocols.Resolved.data`) replaces the config's: config
    ``protocol_data``, by default on in the real world and off in the demo world (whose images
    are no COCO images)."""
    flag = config.get("protocol_data")
    return config.get("world") == "real" if flag is None else bool(flag)


def protocol_bench(
    config: Mapping, benchmark: str, split: str, *, model: str, method: str, protocol: str
) -> dict:
    """:func:`bench_slice` with a paper protocol's declared data applied, as :func:`build_run`
    applies it (a decode job's input files: the protocol's POPE file); cheaper than build_run."""
    bench = bench_slice(config, benchmark, split)
    if protocol == UNIFIED or not protocol_data(config):
        return bench
    mode = run_mode(config, method, protocol, benchmark, model)
    res = resolve_protocol(
        protocol,
        method=method_entry(config, method)["method"],
        family=model_family(config, model),
        benchmark=benchmark,
        mode=mode,
    )
    _apply_data(config, bench, res.data)
    return bench


def _apply_data(config: Mapping, bench: dict, data: Mapping[str, Any]) -> dict:
    """Put a paper protocol's declared data into the benchmark slice ``bench`` (in place) and
    return what applied: ``chair_subset`` on a CHAIR entry, ``pope_version`` (one name, or per
    split) on a COCO POPE entry whose ``questions`` path holds ``{version}``."""
    applied: dict[str, Any] = {}
    if bench["kind"] == "chair" and "chair_subset" in data:
        from .data.chair_subsets import bench_keys

        for key in ("image_id_list", "subset_rule"):
            bench.pop(key, None)
        bench.update(bench_keys(data["chair_subset"]))
        applied["chair_subset"] = data["chair_subset"]
    version = data.get("pope_version")
    if isinstance(version, Mapping):
        version = version.get(bench["split"])
    if bench["kind"] == "pope" and version and bench.get("dataset", "coco") == "coco":
        raw = str(config["benchmarks"][bench["name"]].get("questions", ""))
        if "{version}" not in raw:
            raise ConfigError(
                f"config benchmarks.{bench['name']}.questions: a paper protocol declares POPE "
                f"version {version}; write {{version}} in the path (or set protocol_data: false)"
            )
        bench["version"] = version
        bench["questions"] = raw.format(split=bench["split"], version=version)
        applied["pope_version"] = version
    return applied


def decode_slice(config: Mapping, benchmark: str, split: str) -> tuple[dict, dict]:
    """:func:`bench_slice` split in two: what may decide the decoded records, and the keys that
    decide only the scores (the answer ``parser``, the benchmark's ``extra["score_keys"]``: a
    judge, CHAIR's and AMBER's word lists and models). The keys that decide only the grid
    (``extra["grid_keys"]``: the list of splits) are in neither."""
    bench = bench_slice(config, benchmark, split)
    spec = get_benchmark(bench["kind"])
    scoring = {k: bench.pop(k) for k in ("parser", *spec.extra.get("score_keys", ())) if k in bench}
    for key in spec.extra.get("grid_keys", ()):
        bench.pop(key, None)
    return bench, scoring


def _beams_written(entry: Mapping) -> bool:
    n = entry.get("num_beams")
    return isinstance(n, int) and not isinstance(n, bool) and n > 1


def method_entry(config: Mapping, label: str) -> dict:
    """Normalised method entry as written: engine method, explicit mode (or None), warpers and
    search keys (:data:`SEARCH_KEYS`; None where not written), params, prompt suffixes.
    ``num_beams`` > 1 without ``do_sample`` means greedy mode (beam search is a greedy mode)."""
    entry = dict(config["methods"][label])
    method = entry.get("method", label)
    do_sample = entry.get("do_sample")
    if do_sample is None and method == "sample":
        do_sample = True
    if do_sample is None and (method == "greedy" or _beams_written(entry)):
        do_sample = False
    return {
        "label": label,
        "method": method,
        "do_sample": do_sample,
        **{k: entry.get(k) for k in _WARPERS},
        **{k: entry.get(k) for k in SEARCH_KEYS},
        "params": dict(entry.get("params") or {}),
        "prompt_suffix": dict(entry.get("prompt_suffix") or {}),
    }


def model_entry(config: Mapping, model: str) -> dict:
    """The result-deciding part of a model entry (its batch size is an execution setting)."""
    cfg = dict(config["models"][model])
    return {
        "name": model,
        "path": cfg.get("path", f"resources/models/{model}"),
        "family": cfg.get("family", "auto"),
        "dtype": cfg.get("dtype", config.get("dtype", "float32")),
        "prompt_suffix": dict(cfg.get("prompt_suffix") or {}),
        "revision": cfg.get("revision", "main"),
    }


def model_family(config: Mapping, model: str) -> str:
    """The model's family; ``auto`` is read from the model folder's ``config.json``
    (:func:`vcdflow.protocols.family_of_model`), which must then exist already."""
    entry = model_entry(config, model)
    if entry["family"] != "auto":
        return entry["family"]
    from .models.families import FAMILIES
    from .protocols import family_of_model

    try:
        return family_of_model(entry["path"])
    except ValueError as exc:
        raise ConfigError(
            f"config models.{model}.family: auto needs the model folder ({exc}); set family: "
            f"one of {', '.join(FAMILIES)}"
        ) from None


def execution(
    config: Mapping, *, model: str | None = None, benchmark: str | None = None, threads: int | None = None
) -> Execution:
    """The execution settings of a job (``threads``: the job's actual thread count)."""
    mcfg = dict(config.get("models", {}).get(model) or {}) if model else {}
    bcfg = dict(config.get("benchmarks", {}).get(benchmark) or {}) if benchmark else {}
    return Execution(
        device=str(config.get("device", "auto")),
        threads=int(threads if threads is not None else config.get("threads", 1)),
        batch_size=int(mcfg.get("batch_size", config.get("batch_size", 16))),
        n_shards=int(bcfg.get("n_shards", config.get("n_shards", 1))),
        gpu_lock_dir=str(config.get("gpu_lock_dir", ".vcdflow/gpu-locks")),
        compile=str(config.get("compile", "off")),
    )


# --------------------------------------------------------------------------- protocols


def protocol_names() -> list[str]:
    from .protocols import PROTOCOLS

    return sorted(PROTOCOLS)


def paper_of(method: str) -> str | None:
    from .protocols import PAPER_OF

    return PAPER_OF.get(method)


#: engine methods that are the plain baselines of their decoding mode
BASELINE_METHODS = ("greedy", "sample")


def is_baseline(method: str) -> bool:
    """A plain baseline (greedy, sample), or a method without a paper of its own."""
    return method in BASELINE_METHODS or paper_of(method) is None


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def protocol_choices(config: Mapping, label: str) -> list[str]:
    """The protocol choices of a method label as written (method's own, else the top level)."""
    entry = config["methods"][label]
    return _as_list(entry.get("protocol")) or _as_list(config.get("protocol")) or [UNIFIED]


def _resolve_choice(method: str, choice: str) -> str:
    if choice == UNIFIED:
        return UNIFIED
    from . import protocols as mod

    if choice == PAPER:
        return mod.protocol_for(method, PAPER)
    mod.get_protocol(choice)  # ValueError naming it
    return choice


def run_protocols(config: Mapping, label: str) -> list[str]:
    """The protocols a method label is decoded under (resolved names, unified first); see
    :func:`label_protocols`."""
    return [p for l, p in label_protocols(config) if l == label]


_LABEL_PROTOCOLS: dict[str, list] = {}


def label_protocols(config: Mapping) -> list[tuple[str, str]]:
    """Every (method label, resolved protocol) of the grid, in config order.

    * ``unified`` / a protocol name: that protocol; ``paper``: the method's own paper protocol;
    * a baseline (greedy, sample) with ``paper``: every paper protocol the other methods of the
      grid run under with ``paper`` — and only in a mode one of them uses (VCD's methods sample:
      its greedy baseline is not decoded);
    * under a paper protocol two labels that decode the same (``vcd`` and ``vcd_sample`` both
      take VCD's sampling mode) are one run: the first label is kept.
    """
    import json

    key = json.dumps(
        [config.get("protocol"), config["methods"], config["benchmarks"], config["models"]],
        sort_keys=True,
        default=str,
    )
    if key in _LABEL_PROTOCOLS:
        return _LABEL_PROTOCOLS[key]
    bench0 = next(iter(config["benchmarks"]))
    model0 = next(iter(config["models"]))
    expanded: list[tuple[str, str, bool]] = []  # (label, protocol, from a baseline's paper choice)
    papers_used = sorted(
        {
            paper_of(method_entry(config, l)["method"])
            for l in config["methods"]
            if PAPER in protocol_choices(config, l) and not is_baseline(method_entry(config, l)["method"])
        }
        - {None}
    )
    for label in config["methods"]:
        method = method_entry(config, label)["method"]
        for choice in protocol_choices(config, label):
            if choice == PAPER and is_baseline(method):
                if papers_used:
                    expanded.extend((label, p, True) for p in papers_used)
                else:
                    expanded.append(
                        (label, _resolve_choice(method, choice) if paper_of(method) else UNIFIED, False)
                    )
            else:
                expanded.append((label, _resolve_choice(method, choice), False))
    modes = {
        (p, run_mode(config, l, p, bench0, model0))
        for l, p, from_base in expanded
        if not from_base and not is_baseline(method_entry(config, l)["method"])
    }
    out, seen = [], {}
    for label, protocol, from_base in expanded:
        if from_base and (protocol, run_mode(config, label, protocol, bench0, model0)) not in modes:
            continue
        if (label, protocol) in {(l, p) for l, p in out}:
            continue
        if protocol != UNIFIED:
            sig = json.dumps(
                [
                    {
                        k: v
                        for k, v in build_run(
                            config,
                            benchmark=b,
                            split=splits_of(config, b)[0],
                            model=m,
                            method=label,
                            seed=0,
                            protocol=protocol,
                        ).method.items()
                        if k != "label"
                    }
                    for b in config["benchmarks"]
                    for m in config["models"]
                ],
                sort_keys=True,
                default=str,
            )
            if (protocol, sig) in seen:
                continue
            seen[(protocol, sig)] = label
        out.append((label, protocol))
    out.sort(key=lambda lp: list(config["methods"]).index(lp[0]))  # config order; protocols in order found
    _LABEL_PROTOCOLS[key] = out
    return out


_RESOLVED: dict[tuple, Any] = {}  # protocols are static data: one resolve per distinct question


def resolve_protocol(name: str, *, method: str, family: str, benchmark: str, mode: str | None):
    """``PROTOCOLS[name].resolve(...)`` for a benchmark key (its kind is passed), memoised."""
    key = (name, method, family, kind_of(benchmark), mode)
    if key not in _RESOLVED:
        from .protocols import get_protocol

        _RESOLVED[key] = get_protocol(name).resolve(method=method, family=family, benchmark=key[3], mode=mode)
    return _RESOLVED[key]


# --------------------------------------------------------------------------- runs


def _pick(protocol: str, written, fixed, default):
    """Config value vs protocol value: the config wins under unified, the protocol under a paper."""
    first, second = (written, fixed) if protocol == UNIFIED else (fixed, written)
    if first is not None:
        return first
    return second if second is not None else default


def build_run(
    config: Mapping,
    *,
    benchmark: str,
    split: str,
    model: str,
    method: str,
    seed: int,
    protocol: str = UNIFIED,
) -> RunSpec:
    """The :class:`RunSpec` of one result: ``method`` is the config's method label, ``protocol``
    a resolved protocol name (one of :func:`run_protocols` of the label)."""
    bench, scoring = decode_slice(config, benchmark, split)
    kind = bench["kind"]
    spec = get_benchmark(kind)
    written_parser = scoring.pop("parser", None)
    mcfg = model_entry(config, model)
    entry = method_entry(config, method)
    engine = entry["method"]
    mode = run_mode(config, method, protocol, benchmark, model)
    res = resolve_protocol(
        protocol, method=engine, family=model_family(config, model), benchmark=benchmark, mode=mode
    )
    do_sample = mode == "sample"
    warpers = {k: _pick(protocol, entry[k], getattr(res, k), _WARPER_DEFAULTS[k]) for k in _WARPERS}
    fixed_params = dict(res.params or {})
    params = (
        {**fixed_params, **entry["params"]} if protocol == UNIFIED else {**entry["params"], **fixed_params}
    )
    # benchmark settings: prompt and max_new_tokens decide the records; the parser only the scores
    bench["prompt"] = _pick(protocol, bench.get("prompt"), res.prompt, spec.default_prompt)
    if spec.parsers:
        scoring["parser"], scoring["parser_source"] = run_parser(
            protocol, benchmark, spec, written_parser, res
        )
    bench["max_new_tokens"] = int(
        _pick(protocol, bench.get("max_new_tokens"), res.max_new_tokens, _MAX_NEW_TOKENS.get(kind, 64))
    )
    cap = bench.pop("max_new_tokens_cap", None)
    if cap is not None:  # a deliberate deviation (quick runs, tiny models): recorded in the hash
        bench["max_new_tokens"] = min(bench["max_new_tokens"], int(cap))
        bench["max_new_tokens_cap"] = int(cap)
    run_method = {
        "label": method,
        "method": engine,
        "mode": "sample" if do_sample else "greedy",
        "do_sample": bool(do_sample),
        **warpers,
        "params": params,
        "prompt_suffix": entry["prompt_suffix"],
    }
    # beam search: the config's keys vs the protocol's (res.search: none in sampling mode);
    # recorded only with num_beams > 1, so a one-beam run's record (and hash) stays as it was
    fixed_search = dict(getattr(res, "search", None) or {})
    search = {k: _pick(protocol, entry[k], fixed_search.get(k), SEARCH_DEFAULTS[k]) for k in SEARCH_KEYS}
    beams = _beams_written(search)
    if beams:
        run_method["search"] = search
    inputs = {}
    if "convis_reconstructions" in method_inputs(engine):  # the convis section's alpha and APC
        _convis(config, benchmark, run_method)
    for kind_ in method_inputs(engine):
        inputs[kind_] = method_input_path(kind_, config, benchmark, model)
    proto = dict(res.as_dict())
    proto.setdefault("protocol", protocol)
    # the paper's CHAIR images / POPE files (recorded only where they applied)
    applied = _apply_data(config, bench, res.data) if protocol != UNIFIED and protocol_data(config) else {}
    proto.pop("data", None)
    if applied:
        proto["data"] = applied
    proto["sources"] = {
        k: v
        for k, v in proto.get("sources", {}).items()
        if k not in ("chair_subset", "pope_version") or k in applied
    }
    if not beams and "search" in proto:  # the harness's beam semantics, unused by a one-beam run
        proto.pop("search")
        proto["sources"] = {k: v for k, v in proto.get("sources", {}).items() if k != "search"}
    proto.pop("parser", None)  # the answer parser decides scores only: RunSpec.scoring
    proto["sources"] = {k: v for k, v in proto.get("sources", {}).items() if k != "parser"}
    return RunSpec(
        benchmark=bench,
        model=mcfg,
        method=run_method,
        protocol=proto,
        seed=int(seed),
        inputs=inputs,
        scoring=scoring,
    )


def run_parser(protocol: str, benchmark: str, spec, written: str | None, res) -> tuple[str, str]:
    """The answer parser a result is scored with, and where it comes from.

    Under ``unified`` the config's ``parser`` wins over the protocol's; under a paper protocol the
    protocol's wins. A protocol parser the benchmark's scorer does not have (the POPE rules
    ``vcd`` and ``opera`` of a paper protocol on MME or AMBER) is not used: the config's, else the
    scorer's default (``spec.parsers[0]``) takes its place, and the source says so. A parser the
    scorer does not have is a :class:`ConfigError` naming protocol, benchmark and key — raised by
    :func:`validate_config` before any job runs, never at scoring after hours of decoding."""
    valid = tuple(spec.parsers)
    where = f"config benchmarks.{benchmark}.parser"
    if written is not None and written not in valid:
        raise ConfigError(
            f"{where}: {written!r} is not a {spec.kind} parser (protocol {protocol}); "
            f"valid: {', '.join(valid)}"
        )
    own = res.parser if res.parser in valid else None
    parser = _pick(protocol, written, own, valid[0])
    if written is not None and parser == written and (protocol == UNIFIED or own is None):
        source = where
    elif own is not None and parser == own:
        source = res.sources.get("parser", protocol)
    else:
        source = f"the {spec.kind} scorer's default"
    if own is None and res.parser is not None:
        source += f" ({protocol}'s parser {res.parser!r} is not a {spec.kind} parser: {', '.join(valid)})"
    return parser, source


def _convis(config: Mapping, benchmark: str, run_method: dict) -> None:
    """ConVis' alpha per benchmark and APC from the convis section (unless params set them)."""
    convis = dict(config.get("convis") or {})
    params = run_method["params"]
    alphas = convis.get("alpha") or {}
    alpha = alphas.get(benchmark, alphas.get(kind_of(benchmark)))
    if "alpha" not in params and alpha is not None:
        params["alpha"] = float(alpha)
    if "beta" not in params:
        params["beta"] = float(convis.get("apc_lambda", 0.1)) if convis.get("apc", False) else None


# --------------------------------------------------------------------------- method metadata
# The workflow parses the Snakefile once per invocation (and once per job on a cluster); the
# method classes import torch (~2.7 s). What the grid needs of them — random_draw, extra_inputs,
# families, mode, defaults — is read once per version of the package's code and kept in a small
# JSON file (``$VCDFLOW_CACHE``, else ``$XDG_CACHE_HOME/vcdflow``, else ``~/.cache/vcdflow``),
# keyed by a digest of every .py file of the package; :func:`validate_config` likewise records
# a config it passed under that digest. A cache that cannot be written is simply not used.

_META: dict[str, dict] = {}


def cache_dir():
    import os
    from pathlib import Path

    if os.environ.get("VCDFLOW_CACHE"):
        return Path(os.environ["VCDFLOW_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vcdflow"


_CODE_DIGEST: list[str] = []


def code_digest() -> str:
    """SHA-256 over the path and bytes of every .py file of the installed vcdflow package."""
    if not _CODE_DIGEST:
        import hashlib
        from pathlib import Path

        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        _CODE_DIGEST.append(h.hexdigest())
    return _CODE_DIGEST[0]


def _read_cache(name: str):
    import json

    try:
        return json.loads((cache_dir() / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_cache(name: str, value) -> None:
    import json
    import os

    try:
        path = cache_dir() / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, sort_keys=True, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def method_meta() -> dict[str, dict]:
    """Engine method name -> ``random_draw``, ``extra_inputs``, ``families``, ``mode`` and
    ``defaults`` of :data:`vcdflow.decoding.METHODS`, without importing torch when this code
    version's record is cached (see above)."""
    if not _META:
        name = f"methods-{code_digest()[:16]}.json"
        meta = _read_cache(name)
        if not isinstance(meta, dict):
            from .decoding import METHODS

            meta = {
                n: {
                    "random_draw": bool(getattr(m, "random_draw", True)),
                    "extra_inputs": list(getattr(m, "extra_inputs", ())),
                    "families": None if m.applies_to() is None else list(m.applies_to()),
                    "answer_kinds": None
                    if getattr(m, "answer_kinds", None) is None
                    else list(m.answer_kinds),
                    "mode": getattr(m, "mode", None),
                    "defaults": dict(m.defaults),
                }
                for n, m in METHODS.items()
            }
            _write_cache(name, meta)
        _META.update(meta)
    return _META


def method_inputs(method: str) -> tuple[str, ...]:
    """Extra input kinds a method needs (its ``extra_inputs``, see :data:`METHOD_INPUTS`)."""
    return tuple((method_meta().get(method) or {}).get("extra_inputs", ()))


def seed_free(method: str, mode: str) -> bool:
    """True when a greedy-mode ``method`` gives the same output for every seed: it is decoded once
    (under the grid's first seed) and that result is recorded for every seed."""
    if mode != "greedy":
        return False
    # a method declares whether it draws from ctx.rng (Method.random_draw)
    return not (method_meta().get(method) or {}).get("random_draw", True)


def decode_seed(config: Mapping, spec_or_method, mode: str | None = None, seed: int | None = None) -> int:
    """The seed a result is decoded under: the grid's first seed for a :func:`seed_free` run,
    else its own."""
    if isinstance(spec_or_method, Mapping):
        method, mode, seed = (
            spec_or_method["method"]["method"],
            spec_or_method["method"]["mode"],
            spec_or_method["seed"],
        )
    else:
        method = spec_or_method
    return int(config["seeds"][0]) if seed_free(method, mode) else int(seed)


def run_mode(config: Mapping, label: str, protocol: str, benchmark: str, model: str) -> str:
    """greedy or sample: the label's own ``do_sample``; where it sets none, greedy under
    ``unified`` and the paper's own mode under a paper protocol."""
    entry = method_entry(config, label)
    if entry["do_sample"] is not None:
        return "sample" if entry["do_sample"] else "greedy"
    if protocol == UNIFIED:
        return "greedy"
    res = resolve_protocol(
        protocol, method=entry["method"], family=model_family(config, model), benchmark=benchmark, mode=None
    )
    return "sample" if res.do_sample else "greedy"


def splits_of(config: Mapping, benchmark: str) -> list[str]:
    return get_benchmark(benchmark).splits(config["benchmarks"][benchmark])


def applies(
    config: Mapping, label: str, model: str, benchmark: str | None = None, split: str | None = None
) -> bool:
    """False when the label's method declares ``families`` and the model's configured family
    (not ``auto``) is not one of them (CARVE on InstructBLIP), or — given a benchmark and split —
    when it declares ``answer_kinds`` and the split's items ask for another kind (PBA, a yes/no
    control, on CHAIR's captions): such results are left out of the grid instead of being decoded
    as items that all fail or that measure nothing."""
    meta = method_meta().get(method_entry(config, label)["method"]) or {}
    families = meta.get("families")
    family = (config["models"].get(model) or {}).get("family", "auto")
    if not (families is None or family in (None, "auto") or family in families):
        return False
    kinds = meta.get("answer_kinds")
    if kinds is None or benchmark is None:
        return True
    return get_benchmark(benchmark).answer_kind(split) in kinds


def grid(config: Mapping) -> Iterator[dict]:
    """Every result of the config: dicts with benchmark, split, model, protocol, method (the
    label), mode and seed — in config order; results the method does not apply to
    (:func:`applies`: its model family, its benchmark's answer kind) are left out."""
    seeds = [int(s) for s in config["seeds"]]
    for benchmark in config["benchmarks"]:
        for split in splits_of(config, benchmark):
            for model in config["models"]:
                for label in config["methods"]:
                    if not applies(config, label, model, benchmark, split):
                        continue
                    for protocol in run_protocols(config, label):
                        mode = run_mode(config, label, protocol, benchmark, model)
                        for seed in seeds:
                            yield dict(
                                benchmark=benchmark,
                                split=split,
                                model=model,
                                protocol=protocol,
                                method=label,
                                mode=mode,
                                seed=seed,
                            )


# --------------------------------------------------------------------------- validation


def validate_config(config: Mapping) -> None:
    """Parse-time checks the schema cannot do; :class:`ConfigError` naming the key:
    unknown engine method, unknown or ill-typed parameter, unknown protocol, unknown benchmark.

    A config that passed is recorded under the code digest (see :func:`method_meta`): checking
    it again with the same code returns at once, without importing torch."""
    import hashlib
    import json

    key = hashlib.sha256(
        json.dumps([code_digest(), config], sort_keys=True, default=str).encode()
    ).hexdigest()
    record = f"validated/{key[:32]}"
    if _read_cache(record) == key:
        return
    _validate_config(config)
    _write_cache(record, key)


def _validate_config(config: Mapping) -> None:
    from .decoding import METHODS

    for name in config["benchmarks"]:
        try:
            kind_of(name)
        except ValueError as exc:
            raise ConfigError(f"config benchmarks.{name}: {exc}") from None
    names = protocol_names()
    for key in ("protocol",):
        for choice in _as_list(config.get(key)):
            if choice not in (UNIFIED, PAPER, *names):
                raise ConfigError(
                    f"config protocol: unknown protocol {choice!r}; valid: "
                    f"{', '.join([UNIFIED, PAPER] + [n for n in names if n != UNIFIED])}"
                )
    for label, raw in config["methods"].items():
        entry = method_entry(config, label)
        if entry["method"] not in METHODS:
            raise ConfigError(
                f"config methods.{label}.method: unknown method {entry['method']!r}; "
                f"valid: {', '.join(sorted(METHODS))}"
            )
        try:
            METHODS[entry["method"]].resolve(entry["params"])
        except ValueError as exc:
            raise ConfigError(f"config methods.{label}.params: {exc}") from None
        _check_search_entry(label, entry)
    for label, raw in config["methods"].items():
        for choice in _as_list((raw or {}).get("protocol")):
            if choice not in (UNIFIED, PAPER, *names):
                raise ConfigError(
                    f"config methods.{label}.protocol: unknown protocol {choice!r}; valid: "
                    f"{', '.join([UNIFIED, PAPER] + [n for n in names if n != UNIFIED])}"
                )
    for label in config["methods"]:
        entry = method_entry(config, label)
        for protocol in run_protocols(config, label):
            for benchmark in config["benchmarks"]:
                for model in config["models"]:
                    spec = build_run(
                        config,
                        benchmark=benchmark,
                        split=splits_of(config, benchmark)[0],
                        model=model,
                        method=label,
                        seed=0,
                        protocol=protocol,
                    )
                    try:
                        METHODS[entry["method"]].resolve(spec.method["params"])
                    except ValueError as exc:
                        raise ConfigError(
                            f"config methods.{label} under protocol {protocol} ({benchmark}, {model}): {exc}"
                        ) from None
                    _check_run_search(label, entry, spec, protocol)


def _check_search_entry(label: str, entry: Mapping) -> None:
    """The search keys as written: each value as :func:`vcdflow.decoding.beams.check_beam_args`
    accepts it (the key named), and no beams on a sampling label."""
    from .decoding.beams import check_beam_args

    for key in SEARCH_KEYS:
        if entry[key] is None:
            continue
        try:
            check_beam_args(**{**SEARCH_DEFAULTS, key: entry[key]})
        except ValueError as exc:
            raise ConfigError(f"config methods.{label}.{key}: {exc}") from None
    if _beams_written(entry):
        own_mode = (method_meta().get(entry["method"]) or {}).get("mode")
        if entry["do_sample"] or own_mode == "sample":
            why = "do_sample: true" if entry["do_sample"] else f"method {entry['method']!r} always samples"
            raise ConfigError(
                f"config methods.{label}.num_beams: {entry['num_beams']} beams is beam search, a greedy "
                f"mode, but {why}; drop num_beams or decode greedily"
            )


def _check_run_search(label: str, entry: Mapping, spec: "RunSpec", protocol: str) -> None:
    """A built run's search: the other search keys need beams, and a method that runs its own search
    (OPERA, HALC, contrastive search, text_cd's ``li``) refuses ``num_beams`` — asked through its
    own ``search`` hook with the run's settings (its ``ValueError`` is the message)."""
    from .decoding import METHODS

    search = spec.method.get("search")
    where = f"config methods.{label}" + ("" if protocol == UNIFIED else f" (protocol {protocol})")
    if search is None:
        extra = [k for k in SEARCH_KEYS[1:] if entry[k] is not None]
        if extra:
            raise ConfigError(
                f"{where}.{extra[0]}: only used by beam search, and this run has one beam; "
                f"set num_beams > 1 or drop {extra[0]}"
            )
        return
    m = METHODS[entry["method"]]
    if hasattr(m, "search"):
        try:
            m.search(None, m.resolve(spec.method["params"]), None, {**search, "mode": spec.method["mode"]})
        except ValueError as exc:
            raise ConfigError(f"{where}.num_beams: {exc}") from None
        except Exception:  # noqa: BLE001 - the probe has no scorer or hooks; only a refusal counts
            pass


# --------------------------------------------------------------------------- entry points


def snakemake_run(smk) -> dict:
    """The run dict of a workflow decode job: its ``params.run`` (the :class:`RunSpec`) joined
    with the execution settings read from ``smk.config`` at job time and the job's threads."""
    spec = dict(smk.params.run)
    ex = execution(
        smk.config, model=spec["model"]["name"], benchmark=spec["benchmark"]["name"], threads=smk.threads
    )
    return job_run(spec, ex)


def pope_file_run(
    *,
    questions: str,
    images: str,
    model: str,
    method: str = "greedy",
    label: str | None = None,
    split: str,
    params: Mapping | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    prompt: str | None = None,
    max_new_tokens: int | None = None,
    n_questions: int | None = None,
    dtype: str = "float32",
    family: str = "auto",
    protocol: str = UNIFIED,
    batch_size: int = 16,
    device: str = "auto",
    threads: int = 1,
    gpu_lock_dir: str = ".vcdflow/gpu-locks",
    num_beams: int | None = None,
    length_penalty: float | None = None,
    early_stopping: bool | str | None = None,
    length_norm: str | None = None,
) -> dict:
    """The run dict of the CLI's ``vcdflow decode`` (a POPE-format question file), built by the
    same :func:`build_run` as the workflow from a one-cell config; :class:`ConfigError` names a bad
    method, parameter or protocol. ``protocol``: ``unified``, ``paper`` or a protocol name;
    ``num_beams`` … ``length_norm``: the method entry's search keys (:data:`SEARCH_KEYS`)."""
    from pathlib import Path

    label = label or method
    bench = {"splits": [split], "questions": questions, "images": images}
    for key, value in (("prompt", prompt), ("max_new_tokens", max_new_tokens), ("n_questions", n_questions)):
        if value is not None:
            bench[key] = value
    entry = {"method": method, "params": dict(params or {}), "protocol": protocol}
    for key, value in (
        ("do_sample", do_sample),
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("num_beams", num_beams),
        ("length_penalty", length_penalty),
        ("early_stopping", early_stopping),
        ("length_norm", length_norm),
    ):
        if value is not None:
            entry[key] = value
    name = Path(model).name
    config = {
        "benchmarks": {"pope": bench},
        "models": {name: {"path": model, "family": family, "dtype": dtype, "revision": "local"}},
        "methods": {label: entry},
        "seeds": [seed],
        "device": device,
        "threads": threads,
        "batch_size": batch_size,
        "gpu_lock_dir": gpu_lock_dir,
    }
    validate_config(config)
    protocols = run_protocols(config, label)
    if len(protocols) != 1:
        raise ConfigError(f"protocol {protocol!r} gives {len(protocols)} protocols for {label}; name one")
    spec = build_run(
        config, benchmark="pope", split=split, model=name, method=label, seed=seed, protocol=protocols[0]
    ).as_dict()
    spec["inputs"] = _user_inputs(method, spec.get("inputs") or {}, spec["method"]["params"])
    if not spec["inputs"]:
        spec.pop("inputs")
    return job_run(spec, execution(config, model=name, benchmark="pope"))


def _user_inputs(method: str, inputs: Mapping[str, Any], params: dict) -> dict:
    """A method's extra inputs as the user of ``vcdflow decode`` gives them (its parameters that
    name them, :data:`vcdflow.runner.INPUT_PARAMS`), not the workflow's paths; an input no
    parameter names (ConVis' reconstructions) needs the workflow. ``params`` loses the names
    (the runner sets them back from the inputs, hashing the files)."""
    from .runner import INPUT_PARAMS

    out = {}
    for kind in inputs:
        names = INPUT_PARAMS.get(kind)
        if not names:
            raise ConfigError(
                f"method {method!r} needs {kind.replace('_', ' ')}, which only the workflow makes: "
                f"run it with snakemake"
            )
        missing = [n for n in names if not params.get(n)]
        if missing:
            example = ", ".join(f'"{n}": "PATH"' for n in names)
            raise ConfigError(
                f"--params: method {method!r} needs parameter(s) {', '.join(map(repr, missing))} "
                f"(local paths), e.g. --params '{{{example}}}'"
            )
        paths = [str(params.pop(n)) for n in names]
        out[kind] = paths[0] if len(paths) == 1 else paths
    return out


def protocol_differences(names) -> dict[str, list[dict]]:
    """Paper protocol name -> how it differs from ``unified`` (:func:`vcdflow.protocols.diff`
    rows: family, benchmark, field, a, b, source_a, source_b); ``unified`` itself is left out.
    A protocol that fixes its method's beams adds ``search`` rows (``unified`` has none)."""
    from .protocols import PAPER_OF, BENCHMARKS, diff, get_protocol

    out: dict[str, list[dict]] = {}
    for name in names:
        if name == UNIFIED:
            continue
        out[name] = [dict(r) for r in diff(name, UNIFIED)]
        proto = get_protocol(name)
        method = next((m for m, p in PAPER_OF.items() if p == name), "greedy")
        for fam in proto.families_run:
            for bench in BENCHMARKS:
                res = proto.resolve(method, fam, bench)
                search = dict(res.search or {})
                if int(search.get("num_beams", 1)) > 1:
                    out[name].append(
                        {
                            "family": fam,
                            "benchmark": bench,
                            "field": "search",
                            "a": search,
                            "b": {"num_beams": 1},
                            "source_a": res.sources.get("search", ""),
                            "source_b": "unified: one beam (no beam search unless a label sets num_beams)",
                        }
                    )
    return out


#: config keys that hold a secret (checked anywhere in a config; their values are never shown)
SECRET_KEYS = ("api_key", "apikey", "key", "token", "secret", "password", "authorization")


def check_no_secrets(config: Any, where: str = "config") -> None:
    """No key of ``config`` (at any depth) names a secret (:data:`SECRET_KEYS`): run before the
    schema validation, whose message would print the offending mapping — value included.
    :class:`ConfigError` names the key's path, never its value."""
    if isinstance(config, Mapping):
        for k, v in config.items():
            path = f"{where}.{k}" if where else str(k)
            if str(k).lower() in SECRET_KEYS:
                raise ConfigError(
                    f"{path}: a secret does not go into a config (its value is not shown here); "
                    f"put it in the environment and name the variable (a judge: api_key_env)"
                )
            check_no_secrets(v, path)
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            check_no_secrets(v, f"{where}[{i}]")


def _strict_loader():
    """A YAML SafeLoader that refuses a key written twice in one mapping (plain YAML keeps the
    last one silently: a second ``methods: {vcd: ...}`` entry would replace the first)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{loader.name}: line {key_node.start_mark.line + 1}: key {key!r} is written twice "
                    f"in one mapping (also line {seen[key] + 1}); YAML would silently keep the last "
                    f"one — rename or remove one of them"
                )
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def load_yaml_strict(path) -> Any:
    """A YAML file as :func:`yaml.safe_load` reads it, except that a duplicate key is a
    :class:`ConfigError` naming the file, the line and the key."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass


def check_duplicate_keys(paths) -> None:
    """Each config file of ``paths`` (those that exist) has no key written twice in a mapping."""
    from pathlib import Path

    for p in paths:
        if Path(p).is_file():
            load_yaml_strict(p)
