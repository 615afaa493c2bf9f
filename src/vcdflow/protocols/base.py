"""The protocol machinery: :class:`S` (a value with its source), :class:`Protocol` (layered
settings) and :class:`Resolved` (one concrete setting for a method × family × benchmark × mode).

A protocol is a stack of layers; later layers win:

    common → benchmark[kind] → family[name] → family_benchmark[(name, kind)]

Each layer maps a field (``system``, ``chat_template``, ``prompt``, ``parser``, ``do_sample``,
``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``image_preprocess``, ``seeds``) to an
:class:`S` (value + citation), and ``params`` to ``{method: S({...})}`` (method-parameter overrides
on top of the method's defaults). ``modes`` maps a method to its official decoding mode.
``search`` (like ``params``: ``{method: S({...})}`` in any layer; method ``"*"``: every method, e.g. the
harness's transformers length normalisation; the method's own entry wins) fixes a method's beam search
where the paper's runs use one (keys ``num_beams``, ``length_penalty``, ``early_stopping``,
``length_norm``: :func:`vcdflow.decoding.generate`'s beam-search arguments); beam search is a greedy
mode, so it applies only when the resolved mode is greedy. :attr:`Resolved.search` holds it (empty:
one beam) and :meth:`Resolved.as_dict` carries it only when set; :func:`vcdflow.config.build_run`
records it (the run's ``method.search``) only for a run with ``num_beams`` > 1, so no one-beam run's
record changes.

A family the paper did not run (``families_run``) takes its family-specific fields (system text,
chat template, image preprocessing) from the ``unified`` protocol, and a benchmark it did not run
(``benchmarks_run``, or a ``not_run`` (family, benchmark) pair) takes the prompt and
``max_new_tokens`` from ``unified``; ``sources["family"]`` / ``sources["benchmark"]`` say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

FIELDS = (
    "system",
    "chat_template",
    "prompt",
    "parser",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "params",
    "max_new_tokens",
    "image_preprocess",
    "seeds",
)
from ..models.families import FAMILIES as _FAMILY_RECORDS  # noqa: E402 (no torch there)

#: the model families (one record each in :mod:`vcdflow.models.families`)
FAMILIES = tuple(_FAMILY_RECORDS)
BENCHMARKS = ("pope", "chair", "mme", "amber")
MODES = ("greedy", "sample")
IMAGE_PREPROCESS = ("processor", "pad_square_mean", "qwen_max_pixels_448")
#: optional fields, declared only where a paper ran that benchmark's data: ``chair_subset`` (its CHAIR
#: images: a :mod:`vcdflow.data.chair_subsets` declaration) and ``pope_version`` (its POPE question
#: files: a :func:`vcdflow.data.registry.pope_version` name, or ``{split: name}``). Resolved into
#: :attr:`Resolved.data`; :func:`vcdflow.config.build_run` applies them to the benchmark entry.
DATA_FIELDS = ("chair_subset", "pope_version")
#: fields that depend on the model family (taken from ``unified`` for a family the paper skipped)
FAMILY_FIELDS = ("system", "chat_template", "image_preprocess")
#: fields that depend on the benchmark (taken from ``unified`` for a benchmark the paper skipped)
BENCHMARK_FIELDS = ("prompt", "max_new_tokens")


@dataclass(frozen=True)
class S:
    """A protocol value and where it comes from (``repo/path:line``; ``UNVERIFIED: …`` when the
    source could not be read; ``choice: …`` for the unified protocol's own decisions)."""

    value: Any
    source: str


def _freeze(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Resolved:
    """One concrete setting. ``prompt`` holds ``{question}``; ``params`` are method-parameter
    overrides; ``chat_template`` names a template in ``vcdflow/protocols/templates/`` or is
    ``"model"`` (the model's own); ``image_preprocess`` is ``"processor"`` or
    ``"pad_square_mean"``; ``sources`` maps each field name to its citation."""

    protocol: str
    system: str | None
    chat_template: str
    prompt: str
    parser: str
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int | None
    params: Mapping[str, Any]
    max_new_tokens: int
    image_preprocess: str
    seeds: tuple[int, ...]
    sources: Mapping[str, str]
    #: the paper's beam search for this method (``num_beams`` … ; empty: none fixed)
    search: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: the paper's benchmark data (:data:`DATA_FIELDS` it declares; empty: the config's)
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def as_dict(self) -> dict:
        """JSON-able dict (keys sorted by json.dumps where hashed); ``search`` only when set."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["params"] = json.loads(json.dumps(dict(self.params), sort_keys=True, default=str))
        d["seeds"] = list(self.seeds)
        d["sources"] = dict(self.sources)
        for key in ("search", "data"):  # only when set: no other run's record changes
            if getattr(self, key):
                d[key] = (
                    json.loads(json.dumps(dict(getattr(self, key)))) if key == "data" else dict(self.search)
                )
            else:
                d.pop(key)
        return d

    def format_prompt(self, question: str = "") -> str:
        """The user turn for one item: ``prompt`` with ``{question}`` filled in."""
        return self.prompt.replace("{question}", question)


@dataclass(frozen=True)
class Protocol:
    """One paper's protocol (or the unified one). See the module docstring for the layering."""

    name: str
    title: str
    families_run: tuple[str, ...]
    benchmarks_run: tuple[str, ...]
    common: Mapping[str, Any] = field(default_factory=dict)
    benchmark: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    family: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    family_benchmark: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    modes: Mapping[str, S] = field(default_factory=dict)
    #: (family, benchmark) pairs the paper did not run although it ran both separately
    not_run: tuple[tuple[str, str], ...] = ()
    default_mode: S = S("sample", "the paper's sampling protocol (its sampler patches only `sample`)")
    notes: str = ""

    def layers(self, family: str, benchmark: str) -> list[Mapping[str, Any]]:
        return [
            self.common,
            self.benchmark.get(benchmark, {}),
            self.family.get(family, {}),
            self.family_benchmark.get((family, benchmark), {}),
        ]

    def resolve(self, method: str, family: str, benchmark: str, mode: str | None = None) -> Resolved:
        """The setting for ``method`` on ``family`` × ``benchmark`` (kind) in ``mode`` (``greedy``,
        ``sample`` or None: the protocol's own mode for that method)."""
        from . import get_protocol

        if family not in FAMILIES:
            hint = (
                " (resolve 'auto' from the model first: vcdflow.protocols.family_of_model(path))"
                if family in (None, "auto")
                else ""
            )
            raise ValueError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}{hint}")
        registry_spec = None  # a registry kind with no layer here (mmvp, ...): its own defaults
        if benchmark not in BENCHMARKS:
            from ..benchmarks import BENCHMARKS as REGISTRY

            if benchmark not in REGISTRY:
                raise ValueError(f"unknown benchmark kind {benchmark!r}; valid: {', '.join(REGISTRY)}")
            registry_spec = REGISTRY[benchmark]
            if registry_spec.extra.get("protocol_kind") in BENCHMARKS:  # leading_pope: POPE's setting
                return self.resolve(method, family, registry_spec.extra["protocol_kind"], mode)
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)} (or None)")
        unified = get_protocol("unified") if self.name != "unified" else self
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        params: dict[str, Any] = {}
        param_src: dict[str, str] = {}  # parameter → source of its final value
        search: dict[str, Any] = {}
        search_src: dict[str, str] = {}

        def take(layer: Mapping[str, Any], only: tuple[str, ...] | None = None, note: str = ""):
            for k, v in layer.items():
                if only is not None and k not in only:
                    continue
                if k in ("params", "search"):
                    # search: "*" is the harness's beam semantics for every method, the method's own wins
                    for entry in ([v.get("*")] if k == "search" else []) + [v.get(method)]:
                        if entry is not None:
                            (params if k == "params" else search).update(entry.value)
                            (param_src if k == "params" else search_src).update(
                                {key: note + entry.source for key in entry.value}
                            )
                    continue
                values[k] = v.value
                sources[k] = note + v.source

        fam_ok = family in self.families_run
        bench_ok = benchmark in self.benchmarks_run and (family, benchmark) not in self.not_run
        for layer in self.layers(family, benchmark):
            take(layer)
        if not fam_ok and self is not unified:
            note = f"{self.name} did not run {family}; unified's value: "
            for layer in unified.layers(family, benchmark):
                take(layer, FAMILY_FIELDS, note)
        if not bench_ok and self is not unified:
            note = f"{self.name} did not run {benchmark} on {family}; unified's value: "
            for layer in unified.layers(family, benchmark):
                take(layer, BENCHMARK_FIELDS, note)
        # decoding mode
        if mode is None:
            m = self.modes.get(method) or self.default_mode
            do_sample, mode_src = m.value == "sample", m.source
        else:
            do_sample, mode_src = mode == "sample", f"requested mode {mode!r}"
        if method == "sample":
            do_sample, mode_src = True, "method 'sample' always samples"
        elif method == "greedy":
            do_sample, mode_src = False, "method 'greedy' never samples"
        values["do_sample"] = do_sample
        sources["do_sample"] = mode_src
        values["params"] = params
        sources["params"] = "; ".join(dict.fromkeys(param_src.values())) or "the method's own defaults"
        if search and do_sample:  # beam search is a greedy mode: a sampling run has none
            search = {}
        if search:
            sources["search"] = "; ".join(dict.fromkeys(search_src.values()))
        if registry_spec is not None:
            src = f"vcdflow.benchmarks.{benchmark} (no {self.name} setting for it)"
            defaults = {
                "prompt": registry_spec.default_prompt,
                "max_new_tokens": registry_spec.extra.get("max_new_tokens", 64),
                "parser": registry_spec.parsers[0] if registry_spec.parsers else None,
            }
            for k, v in defaults.items():
                if k == "parser" or k not in values:
                    values[k], sources[k] = v, src
        missing = [f for f in FIELDS if f not in values]
        if missing:
            raise ValueError(
                f"protocol {self.name!r} has no value for {', '.join(missing)} ({family}, {benchmark})"
            )
        sources["family"] = (
            f"{self.name} ran {family}"
            if fam_ok
            else f"{self.name} did not run {family} (ran {', '.join(self.families_run)}): "
            f"{', '.join(FAMILY_FIELDS)} from unified"
        )
        sources["benchmark"] = (
            f"{self.name} ran {benchmark}"
            if bench_ok
            else f"{self.name} did not run {benchmark} on {family}: "
            f"{', '.join(BENCHMARK_FIELDS)} from unified"
        )
        top_k = values["top_k"]
        data = {k: values[k] for k in DATA_FIELDS if values.get(k) is not None}
        return Resolved(
            protocol=self.name,
            system=values["system"],
            chat_template=str(values["chat_template"]),
            prompt=str(values["prompt"]),
            parser=str(values["parser"]),
            do_sample=bool(values["do_sample"]),
            temperature=float(values["temperature"]),
            top_p=float(values["top_p"]),
            top_k=None if top_k is None else int(top_k),
            params=_freeze(params),
            max_new_tokens=int(values["max_new_tokens"]),
            image_preprocess=str(values["image_preprocess"]),
            seeds=tuple(int(s) for s in values["seeds"]),
            sources=_freeze(sources),
            search=_freeze(search),
            data=_freeze(data),
        )


def diff(
    a: "Protocol | str",
    b: "Protocol | str" = "unified",
    method: str | None = None,
    families: tuple[str, ...] | None = None,
    benchmarks: tuple[str, ...] = BENCHMARKS,
) -> list[dict]:
    """How protocol ``a`` differs from ``b``: one row per (family, benchmark, field) whose value
    differs, ``{"family", "benchmark", "field", "a", "b", "source_a", "source_b"}``. ``method``
    (default: ``a``'s own method, the first one mapped to it in :data:`PAPER_OF`) decides the
    mode and parameters; families default to the ones ``a`` ran."""
    from . import PAPER_OF, get_protocol

    pa = get_protocol(a) if isinstance(a, str) else a
    pb = get_protocol(b) if isinstance(b, str) else b
    if method is None:
        method = next((m for m, p in PAPER_OF.items() if p == pa.name), "greedy")
    rows = []
    for fam in families or pa.families_run:
        for bench in benchmarks:
            ra, rb = pa.resolve(method, fam, bench), pb.resolve(method, fam, bench)
            da, db = ra.as_dict(), rb.as_dict()
            for f in FIELDS:
                if da[f] != db[f]:
                    rows.append(
                        {
                            "family": fam,
                            "benchmark": bench,
                            "field": f,
                            "a": da[f],
                            "b": db[f],
                            "source_a": ra.sources.get(f, ""),
                            "source_b": rb.sources.get(f, ""),
                        }
                    )
    return rows
