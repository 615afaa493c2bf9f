"""Load the report's inputs and compute every number it shows (no HTML here).

Inputs (and nothing else; the report never runs a model):

* ``results/metrics.csv`` — long format ``benchmark,split,model,method,seed,metric,value``
  (``method`` is the config's method *label*; rates in percent; MME on its 0–200 scale).
* per-item outcomes ``*.scored.jsonl`` (``item_id`` plus ``correct`` 0/1, or per caption
  ``hallucinated``, ``mentions``, ``hallucinated_mentions``, ``hallucinated_objects``) and
  the raw result files ``*.jsonl`` — mappings ``(benchmark, split, model, label, seed) → path``.
* ``runs``: label → ``{"method": engine method, "mode": "greedy"|"sample", "params": {...}}``.
  The baseline of a mode is the label whose engine method *is* the mode's name
  (``greedy`` for greedy, ``sample`` for sampling).
* ``resources/paper_results.csv`` — the papers' numbers (see :func:`load_paper_results`).

Statistics (all in :mod:`vcdflow.report.stats`):

* mean ± sample std over seeds;
* a 95% percentile-bootstrap CI, over *items* where per-item outcomes re-derive the metric
  (items resampled jointly across seeds, metric averaged over seeds), otherwise over the
  per-seed values (needs ≥ 2 seeds);
* Δ = mean(label) − mean(baseline of the same mode, same benchmark/split/model);
* a paired test against that baseline per seed (a label's seed ``s`` against the baseline's
  seed ``s``, or against the baseline's only seed — greedy is deterministic), exact McNemar
  on ``correct`` or a paired bootstrap on CHAIR outcomes. With several seeds the reported
  p is the *largest* per-seed p (an intersection–union test: significant only if every seed
  is), and every per-seed result is listed beside it.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..benchmarks import BENCHMARKS as _REGISTRY
from ..benchmarks import Column, kind_of, title_of
from ..io import read_json, read_jsonl
from . import stats

METRIC_COLUMNS = ["benchmark", "split", "model", "method", "seed", "metric", "value"]
PAPER_COLUMNS = [
    "benchmark",
    "split",
    "model",
    "method",
    "mode",
    "metric",
    "value",
    "source",
    "table",
    "setting",
]
COUNT_METRICS = ("n", "n_errors")
MODE_ORDER = ("greedy", "sample")
BASELINE_METHODS = ("greedy", "sample")
# cd_rethink's controls (engine methods): a CD method's gain is judged against theirs.
CONTROL_METHODS = ("pba", "olm", "apc")
# Tolerance (metric units, i.e. percentage points) between a metric re-derived from the
# per-item outcomes and metrics.csv; beyond it the item bootstrap is not used.
ITEM_CONSISTENCY_TOL = 0.05

RunKey = tuple  # (benchmark, split, model, label, seed); label = run_key(config label, protocol)
UNIFIED = "unified"


def run_key(label: str, protocol: str | None) -> str:
    """The report's name of a run: the config label, ``@protocol`` added unless unified
    (``vcd@vcd`` = label vcd under VCD's paper protocol)."""
    return str(label) if protocol in (None, "", UNIFIED) else f"{label}@{protocol}"


def split_key(key: str) -> tuple[str, str]:
    """``vcd@vcd`` → ``("vcd", "vcd")``; ``vcd`` → ``("vcd", "unified")``."""
    label, _, protocol = str(key).partition("@")
    return label, protocol or UNIFIED


# --------------------------------------------------------------------------- benchmark specs


@dataclass(frozen=True)
class BenchInfo:
    title: str
    columns: tuple[Column, ...]
    note: str = ""


# Headline metrics come from the benchmark registry (vcdflow.benchmarks): one place per benchmark.
BENCHMARKS: dict[str, BenchInfo] = {
    k: BenchInfo(b.title, tuple(b.columns), b.note) for k, b in _REGISTRY.items()
}


def bench_info(benchmark: str, metrics: Iterable[str]) -> BenchInfo:
    """The spec of a known benchmark (``pope_gqa`` → POPE's, titled by dataset), or a generic one
    listing every metric it has."""
    try:
        kind = kind_of(benchmark)
    except ValueError:
        cols = tuple(Column(m, m) for m in sorted(set(metrics)) if m not in COUNT_METRICS)
        return BenchInfo(benchmark.upper(), cols)
    info = BENCHMARKS[kind]
    return info if benchmark == kind else BenchInfo(title_of(benchmark), info.columns, info.note)


# --------------------------------------------------------------------------- per-item stats


# name -> (required fields, function(arrays) -> (num, den)); each metric = 100·Σnum/Σden.
def _pred_yes(a):
    return np.where(a["label_yes"] == 1, a["correct"], 1 - a["correct"])


ITEM_STATS: dict[str, tuple[tuple[str, ...], Any]] = {
    "accuracy": (("correct",), lambda a: (a["correct"], np.ones_like(a["correct"]))),
    "yes_ratio": (("correct", "label_yes"), lambda a: (_pred_yes(a), np.ones_like(a["correct"]))),
    "precision": (("correct", "label_yes"), lambda a: (a["label_yes"] * a["correct"], _pred_yes(a))),
    "recall": (("correct", "label_yes"), lambda a: (a["label_yes"] * a["correct"], a["label_yes"])),
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (#pred_yes + #label_yes): a ratio of sums.
    "f1": (
        ("correct", "label_yes"),
        lambda a: (2 * a["label_yes"] * a["correct"], _pred_yes(a) + a["label_yes"]),
    ),
    "chair_s": (("hallucinated",), lambda a: (a["hallucinated"], np.ones_like(a["hallucinated"]))),
    "chair_i": (("hallucinated_mentions", "mentions"), lambda a: (a["hallucinated_mentions"], a["mentions"])),
}

_NUMERIC_FIELDS = ("correct", "hallucinated", "mentions", "hallucinated_mentions")
_BINARY_FIELDS = ("correct", "hallucinated")


@dataclass
class RunItems:
    """Per-item outcomes of one run as arrays (NaN where a record lacks the field).

    Fields: ``correct``, ``hallucinated``, ``mentions``, ``hallucinated_mentions`` (a list
    value counts its elements) and ``label_yes`` (POPE's rule: label ``no`` → 0, any other
    label → 1; taken from the scored record, else from the result record).
    """

    ids: list[str]
    pos: dict[str, int]
    fields: dict[str, np.ndarray]
    objects: list[list[str]]

    def valid(self, names: Iterable[str]) -> np.ndarray:
        """Boolean mask of items that have every field in ``names``."""
        mask = np.ones(len(self.ids), dtype=bool)
        for name in names:
            mask &= np.isfinite(self.fields[name])
        return mask

    def get(self, item_id: str) -> dict[str, Any]:
        """One item's outcome as a dict (None for absent fields); {} for an unknown item."""
        i = self.pos.get(item_id)
        if i is None:
            return {}
        out: dict[str, Any] = {
            k: (None if not np.isfinite(v[i]) else float(v[i])) for k, v in self.fields.items()
        }
        out["hallucinated_objects"] = self.objects[i]
        return out


def load_run_items(path: Path, labels: Mapping[str, Any] | None = None) -> RunItems:
    """Read a ``*.scored.jsonl`` file; bad records are errors naming ``file:line``."""
    recs = read_jsonl(path)
    n = len(recs)
    fields = {k: np.full(n, np.nan) for k in (*_NUMERIC_FIELDS, "label_yes")}
    ids: list[str] = []
    pos: dict[str, int] = {}
    objects: list[list[str]] = [[] for _ in range(n)]
    for i, rec in enumerate(recs):
        where = f"{path}:{i + 1}"
        if "item_id" not in rec:
            raise ValueError(f"{where}: record has no 'item_id'")
        iid = str(rec["item_id"])
        if iid in pos:
            raise ValueError(f"{where}: duplicate item_id {iid!r}")
        pos[iid] = i
        ids.append(iid)
        for key in _NUMERIC_FIELDS:
            v = rec.get(key)
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                v = len(v)
            elif not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"{where}: field {key!r} must be a number or a list, got {v!r}")
            if key in _BINARY_FIELDS and v not in (0, 1):
                raise ValueError(f"{where}: field {key!r} must be 0 or 1, got {v!r}")
            fields[key][i] = float(v)
        label = rec.get("label")
        if label is None and labels is not None:
            label = labels.get(iid)
        if label is not None:
            fields["label_yes"][i] = float(str(label).strip().lower() != "no")
        objs = rec.get("hallucinated_objects")
        if objs:
            objects[i] = [str(o) for o in objs] if isinstance(objs, (list, tuple)) else [str(objs)]
    return RunItems(ids, pos, fields, objects)


@dataclass
class ResultSummary:
    """What the report keeps of a raw result file (the records themselves are not kept)."""

    n: int
    n_errors: int
    top_error: str
    labels: dict[str, Any]
    items_timed: int
    seconds: float
    new_tokens: int


def summarise_results(path: Path) -> ResultSummary:
    recs = read_jsonl(path)
    errors: dict[str, int] = defaultdict(int)
    labels = {}
    timed, seconds, tokens = 0, 0.0, 0
    for i, r in enumerate(recs, 1):
        if "item_id" not in r:
            raise ValueError(f"{path}:{i}: record has no 'item_id'")
        labels[str(r["item_id"])] = r.get("label")
        if r.get("error"):
            errors[str(r["error"])] += 1
            continue
        t = r.get("timing") or {}
        if "seconds" in t:
            timed += 1
            seconds += float(t.get("seconds") or 0.0)
            tokens += int(t.get("new_tokens") or 0)
    top = ""
    if errors:
        msg, cnt = max(errors.items(), key=lambda kv: kv[1])
        top = f"{cnt}× {msg[:160]}"
    return ResultSummary(len(recs), sum(errors.values()), top, labels, timed, seconds, tokens)


# --------------------------------------------------------------------------- loading


def _norm_key(key, where: str) -> RunKey:
    if isinstance(key, str):
        parts = key.split("/")
        if len(parts) != 5:
            raise ValueError(f"{where}: key {key!r} is not 'benchmark/split/model/method/seed'")
        key = parts
    if len(key) != 5:
        raise ValueError(f"{where}: key {key!r} is not (benchmark, split, model, method, seed)")
    b, s, m, l, seed = key
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: key {key!r} has a non-integer seed") from None
    return (str(b), str(s), str(m), str(l), seed)


def norm_file_map(files: Mapping | None, where: str) -> dict[RunKey, Path]:
    return {_norm_key(k, where): Path(v) for k, v in (files or {}).items()}


def load_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Read metrics.csv and check its columns and values (errors name the file and row)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"metrics table {path} does not exist")
    df = pd.read_csv(
        path,
        dtype={"benchmark": str, "split": str, "model": str, "method": str, "metric": str},
        keep_default_na=False,
        na_values={"value": ["", "nan", "NaN"]},
    )
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {METRIC_COLUMNS}")
    if "protocol" in df.columns:  # label each run with its protocol (see run_key)
        df["method"] = [run_key(m, p) for m, p in zip(df["method"], df["protocol"])]
    df = df[METRIC_COLUMNS].copy()
    seeds = pd.to_numeric(df["seed"], errors="coerce")
    if seeds.isna().any():
        row = int(seeds.isna().idxmax())
        raise ValueError(f"{path}: row {row + 2}: seed {df['seed'][row]!r} is not an integer")
    df["seed"] = seeds.astype(int)
    values = pd.to_numeric(df["value"], errors="coerce")
    bad = values.isna() & df["value"].notna()
    if bad.any():
        row = int(bad.idxmax())
        raise ValueError(f"{path}: row {row + 2}: value {df['value'][row]!r} is not a number")
    df["value"] = values
    df = df.dropna(subset=["value"])
    dup = df.duplicated(["benchmark", "split", "model", "method", "seed", "metric"], keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise ValueError(
            f"{path}: duplicate rows for {r.benchmark}/{r.split}/{r.model}/{r.method}/seed{r.seed} metric {r.metric!r}"
        )
    return df.reset_index(drop=True)


def load_paper_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read the papers' numbers.

    Columns ``benchmark,split,model,method,mode,metric,value,source,table,setting`` (and
    optionally ``protocol``: the protocol the paper's number was measured under; default
    :func:`paper_protocol` of ``source``); ``method`` is the *engine* method (``greedy``/``sample`` for the plain baselines), ``mode`` the
    decoding mode the paper used, ``split`` may be empty (matches any split).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"paper results file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {PAPER_COLUMNS}")
    values = pd.to_numeric(df["value"], errors="coerce")
    if values.isna().any():
        row = int(values.isna().idxmax())
        raise ValueError(f"{path}: row {row + 2}: value {df['value'][row]!r} is not a number")
    df["value"] = values
    if "protocol" not in df.columns or (df["protocol"] == "").any():
        derived = [paper_protocol(src) for src in df["source"]]
        df["protocol"] = (
            derived if "protocol" not in df.columns else [p or d for p, d in zip(df["protocol"], derived)]
        )
    return df


def paper_protocol(source: str) -> str:
    """The protocol a paper's numbers were measured under, from its ``source``: the paper's
    name, lower case (``VCD (Leng et al. …)`` → ``vcd``; ``RITUAL (…)`` → ``ritual``)."""
    head = str(source).strip().split(" ", 1)[0].split("(", 1)[0]
    return "".join(ch for ch in head.lower() if ch.isalnum() or ch == "_")


def normalise_runs(runs: Mapping | None, labels: Iterable[str]) -> dict[str, dict]:
    """label -> {"method", "mode", "params"}; labels missing from ``runs`` are inferred.

    Inference (only without a config): label ``greedy``/``sample`` are the baselines; a label
    ending in ``_sample``/``-sample`` is sampling mode (engine method = the label without
    the suffix); anything else is greedy mode with engine method = label.
    """
    out: dict[str, dict] = {}
    for label, spec in (runs or {}).items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"runs[{label!r}] must be a mapping with 'method' and 'mode', got {spec!r}")
        method = str(spec.get("method", label))
        mode = spec.get("mode")
        if mode is None:
            mode = "sample" if spec.get("do_sample", method == "sample") else "greedy"
        protocol = str(spec.get("protocol") or split_key(label)[1])
        out[str(label)] = {
            "method": method,
            "mode": str(mode),
            "params": dict(spec.get("params") or {}),
            "protocol": protocol,
            "label": str(spec.get("label") or split_key(label)[0]),
            "inferred": False,
        }
    for key in labels:
        if key in out:
            continue
        label, protocol = split_key(key)
        if label in BASELINE_METHODS:
            method, mode = label, label
        else:
            mode = "greedy"
            method = label
            for suffix in ("_sample", "-sample"):
                if label.endswith(suffix):
                    method, mode = label[: -len(suffix)], "sample"
            for suffix in ("_greedy", "-greedy"):
                if label.endswith(suffix):
                    method = label[: -len(suffix)]
        out[key] = {
            "method": method,
            "mode": mode,
            "params": {},
            "protocol": protocol,
            "label": label,
            "inferred": True,
        }
    return out


def baselines(runs: Mapping[str, dict]) -> dict:
    """``(protocol, mode)`` -> baseline run: the run of that protocol whose engine method equals
    the mode's name (a paper protocol's comparisons use that paper's own baseline); also
    ``mode`` -> the unified protocol's baseline.

    A run with a beam search (``search``: ``num_beams`` > 1, e.g. ``beam5: {method: greedy,
    num_beams: 5}``) is a baseline of its own, never *the* greedy baseline. With several candidates
    the one whose config label equals the mode wins (``greedy@opera`` under OPERA's protocol),
    else the first in sorted order.
    """
    out: dict = {}
    for protocol, mode in sorted({(r.get("protocol", UNIFIED), r["mode"]) for r in runs.values()}):
        cands = sorted(
            l
            for l, r in runs.items()
            if r["mode"] == mode
            and r["method"] == mode
            and r.get("protocol", UNIFIED) == protocol
            and not r.get("search")
        )
        if cands:
            named = [l for l in cands if runs[l].get("label", split_key(l)[0]) == mode]
            out[(protocol, mode)] = named[0] if named else cands[0]
            if protocol == UNIFIED:
                out[mode] = out[(protocol, mode)]
    return out


def mode_order(modes: Iterable[str]) -> list[str]:
    modes = set(modes)
    return [m for m in MODE_ORDER if m in modes] + sorted(modes - set(MODE_ORDER))


# --------------------------------------------------------------------------- cells


@dataclass
class TestResult:
    kind: str  # "McNemar (exact)" | "paired bootstrap"
    pvalue: float | None
    per_seed: list[str] = field(default_factory=list)  # human-readable per-seed details
    note: str = ""


@dataclass
class Cell:
    """One (benchmark, split, model, label, metric) summarised over seeds."""

    benchmark: str
    split: str
    model: str
    label: str
    mode: str
    metric: str
    values: dict[int, float]
    mean: float | None = None
    std: float | None = None
    ci: tuple[float, float] | None = None
    ci_kind: str = ""  # "items" | "seeds" | ""
    ci_note: str = ""
    delta: float | None = None
    delta_note: str = ""
    is_baseline: bool = False
    test: TestResult | None = None
    refused: str | None = None

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.split}/{self.model}/{self.label}/{self.metric}"

    @property
    def n_seeds(self) -> int:
        return len(self.values)


@dataclass
class RunStatus:
    key: RunKey
    n: float | None
    n_errors: float | None
    source: str
    refused: bool
    top_error: str = ""

    @property
    def fraction(self) -> float | None:
        if self.n is None or self.n_errors is None or self.n <= 0:
            return None
        return self.n_errors / self.n


class Analysis:
    """Everything the report shows, computed once from the inputs."""

    def __init__(
        self,
        metrics: pd.DataFrame,
        *,
        result_files: Mapping | None = None,
        scored_files: Mapping | None = None,
        runs: Mapping | None = None,
        max_error_fraction: float = 0.05,
        seed: int = 0,
        n_boot: int = stats.N_BOOT_CI,
        n_boot_test: int = stats.N_BOOT_TEST,
        expected: Mapping[str, Iterable] | None = None,
    ):
        if not 0 <= max_error_fraction <= 1:
            raise ValueError(f"max_error_fraction must be in [0, 1], got {max_error_fraction}")
        self.metrics = metrics
        self.result_files = norm_file_map(result_files, "result_files")
        self.scored_files = norm_file_map(scored_files, "scored_files")
        self.max_error_fraction = max_error_fraction
        self.seed = seed
        self.n_boot = n_boot
        self.n_boot_test = n_boot_test
        labels = list(dict.fromkeys(list((runs or {}).keys()) + sorted(metrics["method"].unique())))
        self.runs = normalise_runs(runs, labels)
        self.baselines = baselines(self.runs)
        self.notes: list[str] = []
        self._summary_cache: dict[RunKey, ResultSummary | None] = {}
        self._items_cache: dict[RunKey, RunItems | None] = {}
        self.expected = {k: list(v) for k, v in (expected or {}).items()}
        self.status = self._run_status()
        self.cells: dict[str, Cell] = {}
        self._compute_cells()

    # ---------------------------------------------------------------- file access

    def results(self, key: RunKey) -> list[dict] | None:
        """Raw result records of a run (not cached: only the examples need whole records)."""
        path = self.result_files.get(key)
        if path is None or not path.exists():
            return None
        return read_jsonl(path)

    def summary(self, key: RunKey) -> ResultSummary | None:
        """Counts, labels and timing of a run's result file (None when there is none)."""
        if key not in self._summary_cache:
            path = self.result_files.get(key)
            out = None
            if path is not None:
                if path.exists():
                    out = summarise_results(path)
                else:
                    self.notes.append(f"result file {path} is missing")
            self._summary_cache[key] = out
        return self._summary_cache[key]

    def items(self, key: RunKey) -> RunItems | None:
        """Per-item outcomes of a run (None without a scored file)."""
        if key not in self._items_cache:
            path = self.scored_files.get(key)
            out = None
            if path is not None:
                if path.exists():
                    summ = self.summary(key)
                    out = load_run_items(path, summ.labels if summ else None)
                else:
                    self.notes.append(f"scored file {path} is missing")
            self._items_cache[key] = out
        return self._items_cache[key]

    # ---------------------------------------------------------------- structure

    def mode(self, label: str) -> str:
        return self.runs[label]["mode"]

    def engine_method(self, label: str) -> str:
        return self.runs[label]["method"]

    def present(self) -> pd.DataFrame:
        return self.metrics[~self.metrics["metric"].isin(COUNT_METRICS)]

    def benchmarks(self) -> list[str]:
        seen = list(dict.fromkeys(self.metrics["benchmark"]))
        known = [b for b in BENCHMARKS if b in seen]
        return known + sorted(b for b in seen if b not in BENCHMARKS)

    def splits(self, benchmark: str) -> list[str]:
        sub = self.metrics[self.metrics["benchmark"] == benchmark]
        order = {"random": 0, "popular": 1, "adversarial": 2}
        return sorted(sub["split"].unique(), key=lambda s: (order.get(s, 9), s))

    def models(self, benchmark: str | None = None, split: str | None = None) -> list[str]:
        sub = self.metrics
        if benchmark is not None:
            sub = sub[sub["benchmark"] == benchmark]
        if split is not None:
            sub = sub[sub["split"] == split]
        present = set(sub["model"])
        cfg = [m for m in self.expected.get("models", []) if m in present]
        return cfg + sorted(present - set(cfg))

    def labels(
        self, benchmark: str | None = None, split: str | None = None, model: str | None = None
    ) -> list[str]:
        sub = self.metrics
        for col, v in (("benchmark", benchmark), ("split", split), ("model", model)):
            if v is not None:
                sub = sub[sub[col] == v]
        present = set(sub["method"])
        return [l for l in self.runs if l in present]

    def row_groups(self, labels: Iterable[str]) -> list[dict]:
        """Rows of a table: labels sharing an engine method and params side by side per mode.

        Returns ``[{"name", "detail", "labels": {mode: label}}]``; the baselines (engine
        method ``greedy``/``sample``) share one row.
        """
        rows: dict[tuple, dict] = {}
        for label in labels:
            run = self.runs[label]
            protocol = run.get("protocol", UNIFIED)
            if run.get("search"):  # a beam-search run: its own row, named by its beams
                key: tuple = (
                    run["method"],
                    json.dumps([run["params"], run["search"]], sort_keys=True, default=str),
                    protocol,
                )
                name = f"{run['method']} ({run['search'].get('num_beams')} beams)"
            elif run["method"] in BASELINE_METHODS:
                key = ("__baseline__", protocol)
                name = "baseline"
            else:
                key = (run["method"], json.dumps(run["params"], sort_keys=True, default=str), protocol)
                name = run["method"]
            while key in rows and run["mode"] in rows[key]["labels"]:
                key = key + (label,)
            row = rows.setdefault(
                key, {"name": name, "labels": {}, "params": run["params"], "protocol": protocol}
            )
            row["labels"][run["mode"]] = label
        out = list(rows.values())
        names = defaultdict(int)
        for r in out:
            names[(r["name"], r["protocol"])] += 1
        for r in out:
            r["detail"] = ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items()))
            if names[(r["name"], r["protocol"])] > 1 and r["name"] != "baseline":
                r["name"] = f"{r['name']} [{'/'.join(r['labels'].values())}]"
        out.sort(key=lambda r: (r["protocol"] != UNIFIED, r["protocol"], r["name"] != "baseline"))
        return out

    # ---------------------------------------------------------------- errors

    def _run_status(self) -> dict[RunKey, RunStatus]:
        out = {}
        counts = self.metrics[self.metrics["metric"].isin(COUNT_METRICS)]
        pivot = None
        if not counts.empty:
            pivot = counts.pivot_table(
                index=["benchmark", "split", "model", "method", "seed"],
                columns="metric",
                values="value",
                aggfunc="first",
            )
        keys = set(
            map(
                tuple, self.metrics[["benchmark", "split", "model", "method", "seed"]].itertuples(index=False)
            )
        )
        for key in sorted(keys, key=str):
            key = (key[0], key[1], key[2], key[3], int(key[4]))
            n = n_err = None
            source = ""
            if pivot is not None and key in pivot.index:
                row = pivot.loc[key]
                n = row.get("n")
                n_err = row.get("n_errors")
                n = None if n is None or pd.isna(n) else float(n)
                n_err = None if n_err is None or pd.isna(n_err) else float(n_err)
                if n is not None and n_err is not None:
                    source = "metrics.csv"
            top = ""
            summ = self.summary(key) if key in self.result_files else None
            if summ is not None:
                top = summ.top_error
                if not source:
                    n, n_err, source = float(summ.n), float(summ.n_errors), "result file"
            frac = None if (n is None or n_err is None or n <= 0) else n_err / n
            refused = frac is not None and frac > self.max_error_fraction
            out[key] = RunStatus(key, n, n_err, source or "unknown", refused, top)
        return out

    # ---------------------------------------------------------------- cells

    def columns(self, benchmark: str) -> list[Column]:
        metrics = set(self.metrics.loc[self.metrics["benchmark"] == benchmark, "metric"])
        return [c for c in bench_info(benchmark, metrics).columns if c.metric in metrics]

    def _compute_cells(self) -> None:
        df = self.present()
        groups = df.groupby(["benchmark", "split", "model", "method", "metric"], sort=False)
        for (b, s, m, label, metric), g in groups:
            values = {int(seed): float(v) for seed, v in zip(g["seed"], g["value"])}
            cell = Cell(b, s, m, label, self.mode(label), metric, dict(sorted(values.items())))
            bad = [
                sd
                for sd in cell.values
                if self.status.get((b, s, m, label, sd)) and self.status[(b, s, m, label, sd)].refused
            ]
            if bad:
                parts = []
                for sd in bad:
                    st = self.status[(b, s, m, label, sd)]
                    parts.append(
                        f"seed {sd}: {st.n_errors:g}/{st.n:g} items errored ({100 * st.fraction:.1f}%)"
                    )
                cell.refused = "; ".join(parts) + f" > {100 * self.max_error_fraction:g}% allowed"
            else:
                cell.mean, cell.std = stats.mean_std(list(cell.values.values()))
            self.cells[cell.key] = cell
        for cell in self.cells.values():
            if cell.refused is None:
                self._ci(cell)
        for cell in self.cells.values():
            self._delta_and_test(cell)

    def cell(self, benchmark, split, model, label, metric) -> Cell | None:
        return self.cells.get(f"{benchmark}/{split}/{model}/{label}/{metric}")

    def _column(self, benchmark: str, metric: str) -> Column | None:
        for c in bench_info(benchmark, [metric]).columns:
            if c.metric == metric:
                return c
        return None

    def _item_matrix(self, keys: list[RunKey], stat: str):
        """((num, den, ids), "") with arrays (n_items, n_seeds) of a per-item stat, items
        aligned by id (those every seed has); or (None, reason)."""
        fields, fn = ITEM_STATS[stat]
        runs = []
        for key in keys:
            items = self.items(key)
            if items is None:
                return None, "no per-item outcomes"
            mask = items.valid(fields)
            if not mask.any():
                return None, f"per-item outcomes lack {', '.join(fields)}"
            runs.append((items, mask))
        first, mask0 = runs[0]
        common = [iid for iid, ok in zip(first.ids, mask0) if ok]
        for items, mask in runs[1:]:
            common = [iid for iid in common if iid in items.pos and mask[items.pos[iid]]]
        if not common:
            return None, "no item common to all seeds"
        nums, dens = [], []
        for items, _ in runs:
            idx = np.fromiter((items.pos[i] for i in common), dtype=np.int64, count=len(common))
            num, den = fn({f: items.fields[f][idx] for f in fields})
            nums.append(num)
            dens.append(den)
        return (np.stack(nums, 1), np.stack(dens, 1), common), ""

    def _ci(self, cell: Cell) -> None:
        col = self._column(cell.benchmark, cell.metric)
        keys = [(cell.benchmark, cell.split, cell.model, cell.label, s) for s in cell.values]
        why = "no per-item outcomes"
        if col is not None and col.item_stat:
            mat, why = self._item_matrix(keys, col.item_stat)
            if mat is not None:
                num, den, ids = mat
                point = 100.0 * stats.ratio_of_sums(num, den)
                if math.isfinite(point) and abs(point - cell.mean) <= ITEM_CONSISTENCY_TOL:
                    lo, hi = stats.bootstrap_ci(num, self.n_boot, self.seed, denom=den)
                    cell.ci, cell.ci_kind = (100.0 * lo, 100.0 * hi), "items"
                    cell.ci_note = f"bootstrap over {len(ids)} items × {len(keys)} seed(s)"
                    return
                why = (
                    f"per-item outcomes give {point:.3f}, metrics.csv {cell.mean:.3f}"
                    if math.isfinite(point)
                    else "per-item statistic undefined"
                )
        if len(cell.values) >= 2:
            lo, hi = stats.bootstrap_ci(list(cell.values.values()), self.n_boot, self.seed)
            cell.ci, cell.ci_kind = (lo, hi), "seeds"
            cell.ci_note = f"bootstrap over {len(cell.values)} seeds ({why})"
        else:
            cell.ci_note = f"no CI: 1 seed and {why}"

    def _delta_and_test(self, cell: Cell) -> None:
        protocol = self.runs[cell.label].get("protocol", UNIFIED)
        base_label = self.baselines.get((protocol, cell.mode))
        if base_label is None:
            cell.delta_note = f"no {cell.mode} baseline under protocol {protocol} in this run"
            return
        if base_label == cell.label:
            cell.is_baseline = True
            return
        base = self.cell(cell.benchmark, cell.split, cell.model, base_label, cell.metric)
        if base is None:
            cell.delta_note = f"baseline {base_label!r} has no {cell.metric}"
            return
        if cell.refused or base.refused:
            cell.delta_note = "refused" if cell.refused else f"baseline {base_label!r} refused"
            return
        cell.delta = cell.mean - base.mean
        col = self._column(cell.benchmark, cell.metric)
        if col is not None and col.test:
            cell.test = self._paired_test(cell, base, col)

    def _seed_pairs(self, cell: Cell, base: Cell) -> list[tuple[int, int]]:
        if len(base.values) == 1:
            only = next(iter(base.values))
            return [(s, only) for s in cell.values]
        return [(s, s) for s in cell.values if s in base.values]

    def _paired_test(self, cell: Cell, base: Cell, col: Column) -> TestResult:
        pairs = self._seed_pairs(cell, base)
        kind = "McNemar (exact)" if col.test == "mcnemar" else "paired bootstrap"
        if not pairs:
            return TestResult(kind, None, note="no seed in common with the baseline")
        ps, details = [], []
        for s, sb in pairs:
            k = (cell.benchmark, cell.split, cell.model, cell.label, s)
            kb = (cell.benchmark, cell.split, cell.model, base.label, sb)
            a_items, b_items = self.items(k), self.items(kb)
            if a_items is None or b_items is None:
                return TestResult(kind, None, note="no per-item outcomes")
            fields = ("correct",) if col.test == "mcnemar" else ITEM_STATS[col.item_stat][0]
            ma, mb = a_items.valid(fields), b_items.valid(fields)
            ids = [i for i, ok in zip(a_items.ids, ma) if ok and i in b_items.pos and mb[b_items.pos[i]]]
            if not ids:
                return TestResult(kind, None, note=f"no paired items with {', '.join(fields)}")
            ia = np.fromiter((a_items.pos[i] for i in ids), dtype=np.int64, count=len(ids))
            ib = np.fromiter((b_items.pos[i] for i in ids), dtype=np.int64, count=len(ids))
            if col.test == "mcnemar":
                res = stats.mcnemar_exact(a_items.fields["correct"][ia], b_items.fields["correct"][ib])
                ps.append(res.pvalue)
                details.append(
                    f"seed {s} vs {base.label} seed {sb}: n={len(ids)}, only {cell.label} right "
                    f"{res.a_only}, only {base.label} right {res.b_only}, p={fmt_p(res.pvalue)}"
                )
            else:
                fn = ITEM_STATS[col.item_stat][1]
                na, da = fn({f: a_items.fields[f][ia] for f in fields})
                nb, db = fn({f: b_items.fields[f][ib] for f in fields})
                p = stats.paired_bootstrap_p(na, nb, self.n_boot_test, self.seed, denom_a=da, denom_b=db)
                ps.append(p)
                details.append(f"seed {s} vs {base.label} seed {sb}: n={len(ids)}, p={fmt_p(p)}")
        finite = [p for p in ps if p is not None and math.isfinite(p)]
        if not finite:
            return TestResult(kind, None, details, note="undefined")
        note = "largest per-seed p (intersection–union test)" if len(ps) > 1 else ""
        return TestResult(kind, max(finite), details, note)

    # ---------------------------------------------------------------- overview

    def headline(self, benchmark: str, split: str | None = None) -> Column | None:
        """The benchmark's headline metric: the first column the benchmark registry lists with
        a better direction that this run has (POPE accuracy, CHAIR CHAIR_s, MME hallucination,
        AMBER score) — in ``split`` when given (AMBER's generative split has CHAIR, its
        discriminative splits accuracy); None when it has none."""
        cols = self.columns(benchmark)
        if split is not None:
            df = self.metrics
            have = set(df.loc[(df["benchmark"] == benchmark) & (df["split"] == split), "metric"])
            cols = [c for c in cols if c.metric in have]
        return next((c for c in cols if c.better), None)

    def overview(self) -> dict:
        """The field at a glance: ``{"columns": [(benchmark, split, Column)], "rows": [{"model",
        "label", "cells": [Cell | None per column]}]}`` — every run with a headline cell, rows
        in run order per model, each cell the same :class:`Cell` the benchmark tables show."""
        cols = [
            (b, s, c)
            for b in self.benchmarks()
            for s in self.splits(b)
            if (c := self.headline(b, s)) is not None
        ]
        rows = []
        for model in self.models():
            for label in self.labels(model=model):
                cells = [self.cell(b, s, model, label, c.metric) for b, s, c in cols]
                if any(x is not None for x in cells):
                    rows.append({"model": model, "label": label, "cells": cells})
        return {"columns": cols, "rows": rows}

    # ---------------------------------------------------------------- controls

    def is_control(self, label: str) -> bool:
        return self.runs[label]["method"] in CONTROL_METHODS

    def controls(self) -> list[dict]:
        """cd_rethink's question per POPE dataset, split, model, protocol and mode: does a CD
        method's gain over the baseline beat the controls' (pba/olm/apc) gains?

        One group per (benchmark, split, model, protocol, mode) that has a baseline and at least
        one CD method or control: ``{"benchmark", "split", "model", "protocol", "mode",
        "baseline", "column" (the headline Column), "yes" (yes-ratio metric or None),
        "controls": [{"label", "cell", "yes"}], "methods": [{"label", "cell", "yes", "vs":
        [{"control", "diff", "test"}], "beats": bool | None}], "note"}``. ``diff`` = method −
        control (headline mean), ``test`` the same paired test as against the baseline (method
        seed s against control seed s, or its only seed). ``beats``: better than every control
        with p < 0.05 against each; None when some comparison is undefined.
        """
        from ..benchmarks import kind_of

        out = []
        for bench in self.benchmarks():
            try:
                if kind_of(bench) != "pope":
                    continue
            except ValueError:
                continue
            col = self.headline(bench)
            if col is None:
                continue
            yes = next((c.metric for c in self.columns(bench) if c.item_stat == "yes_ratio"), None)
            for split in self.splits(bench):
                for model in self.models(bench, split):
                    labels = self.labels(bench, split, model)
                    for protocol, mode in sorted(
                        {(self.runs[l].get("protocol", UNIFIED), self.mode(l)) for l in labels}
                    ):
                        base = self.baselines.get((protocol, mode))
                        same = [
                            l
                            for l in labels
                            if self.runs[l].get("protocol", UNIFIED) == protocol
                            and self.mode(l) == mode
                            and l != base
                            and self.engine_method(l) not in BASELINE_METHODS
                        ]
                        ctrls = [l for l in same if self.is_control(l)]
                        methods = [l for l in same if not self.is_control(l)]
                        if base is None or not same:
                            continue
                        get = lambda l, m: self.cell(bench, split, model, l, m) if m else None  # noqa: E731
                        group = {
                            "benchmark": bench,
                            "split": split,
                            "model": model,
                            "protocol": protocol,
                            "mode": mode,
                            "baseline": base,
                            "column": col,
                            "yes": yes,
                            "baseline_cell": get(base, col.metric),
                            "baseline_yes": get(base, yes),
                            "controls": [
                                {"label": c, "cell": get(c, col.metric), "yes": get(c, yes)} for c in ctrls
                            ],
                            "methods": [],
                            "note": "" if ctrls else "no control run (pba/olm/apc) in this group",
                        }
                        for l in methods:
                            mc = get(l, col.metric)
                            vs, verdicts = [], []
                            for c in ctrls:
                                cc = get(c, col.metric)
                                if mc is None or cc is None or mc.refused or cc.refused:
                                    vs.append({"control": c, "diff": None, "test": None})
                                    verdicts.append(None)
                                    continue
                                test = self._paired_test(mc, cc, col) if col.test else None
                                diff = mc.mean - cc.mean
                                better = diff > 0 if col.better == "higher" else diff < 0
                                p = test.pvalue if test is not None else None
                                vs.append({"control": c, "diff": diff, "test": test})
                                verdicts.append(None if p is None else bool(better and p < 0.05))
                            beats = (
                                None if not verdicts or any(v is None for v in verdicts) else all(verdicts)
                            )
                            group["methods"].append(
                                {"label": l, "cell": mc, "yes": get(l, yes), "vs": vs, "beats": beats}
                            )
                        out.append(group)
        return out

    # ---------------------------------------------------------------- missing

    def missing(self) -> list[str]:
        """Human-readable list of expected benchmarks/models/methods without results."""
        out = []
        present = self.metrics
        for b in self.expected.get("benchmarks", []):
            if b not in set(present["benchmark"]):
                out.append(f"benchmark {b}: no results")
        for m in self.expected.get("models", []):
            if m not in set(present["model"]):
                out.append(f"model {m}: no results")
        for label in self.runs:
            if not self.runs[label]["inferred"] and label not in set(present["method"]):
                out.append(f"method {label}: no results")
        combos = present[["benchmark", "split", "model"]].drop_duplicates()
        for b, s, m in combos.itertuples(index=False):
            have = set(
                present.loc[(present.benchmark == b) & (present.split == s) & (present.model == m), "method"]
            )
            lacking = [l for l in self.runs if l not in have and l in set(present["method"])]
            if lacking:
                out.append(f"{b}/{s}/{m}: no results for {', '.join(lacking)}")
        for protocol, mode in sorted({(r.get("protocol", UNIFIED), r["mode"]) for r in self.runs.values()}):
            if (protocol, mode) not in self.baselines:
                where = "" if protocol == UNIFIED else f" under protocol {protocol}"
                out.append(
                    f"no {mode} baseline{where} (a method with engine method {mode!r}): "
                    f"Δ and tests skipped for that mode"
                )
        return out

    # ---------------------------------------------------------------- paper comparison

    def comparisons(self, paper: pd.DataFrame) -> tuple[list[dict], int]:
        """Reproduced cells matched with the papers' numbers; plus the count unmatched."""
        rows = []
        used = set()
        for cell in self.cells.values():
            run = self.runs[cell.label]
            protocol = run.get("protocol", UNIFIED)
            if protocol == UNIFIED or "protocol" not in paper.columns:
                continue  # a paper's number is compared only with a run under that paper's protocol
            m = paper[
                (paper["protocol"] == protocol)
                & (paper["benchmark"] == cell.benchmark)
                & ((paper["split"] == cell.split) | (paper["split"] == ""))
                & (paper["model"] == cell.model)
                & (paper["method"] == run["method"])
                & (paper["mode"] == run["mode"])
                & (paper["metric"] == cell.metric)
            ]
            for idx, p in m.iterrows():
                used.add(idx)
                row = {
                    "cell": cell,
                    "paper": float(p["value"]),
                    "source": p["source"],
                    "table": p["table"],
                    "setting": p["setting"],
                    "diff": None,
                    "flag": "",
                    "flag_kind": "",
                }
                if cell.refused:
                    row["flag"], row["flag_kind"] = "refused", "refused"
                else:
                    row["diff"] = cell.mean - row["paper"]
                    if cell.ci is None:
                        row["flag"], row["flag_kind"] = "no CI", "noci"
                    elif not cell.ci[0] <= row["paper"] <= cell.ci[1]:
                        row["flag"], row["flag_kind"] = "outside CI", "outside"
                    else:
                        row["flag"], row["flag_kind"] = "within CI", "within"
                rows.append(row)
        rows.sort(
            key=lambda r: (
                r["cell"].benchmark,
                r["cell"].split,
                r["cell"].model,
                r["cell"].label,
                r["cell"].metric,
                r["source"],
            )
        )
        return rows, len(paper) - len(used)


# --------------------------------------------------------------------------- speed


SPEED_COLUMNS = ["benchmark", "model", "method", "items", "seconds", "new_tokens", "peak_mem_mb", "hardware"]


def sidecar_hardware_text(meta: Mapping) -> str:
    """One line of the hardware a sidecar records: ``hardware`` (a string, or a list when the
    shards ran on different machines), else ``gpu``/``cpu``, with the ``device``."""
    hw = meta.get("hardware")
    if isinstance(hw, (list, tuple)):
        hw = "; ".join(dict.fromkeys(str(h) for h in hw if h))
    elif isinstance(hw, Mapping):
        hw = ", ".join(f"{k}: {v}" for k, v in hw.items())
    hw = hw or meta.get("gpu") or meta.get("cpu") or ""
    dev = meta.get("device")
    if isinstance(dev, (list, tuple)):
        dev = "/".join(dict.fromkeys(str(d) for d in dev))
    return f"{hw} ({dev})" if hw and dev else str(hw or dev or "")


def speed_from_results(analysis: Analysis) -> pd.DataFrame:
    """Aggregate the ``timing`` fields of the raw result files.

    One row per (benchmark, model, label) with Σ items, Σ seconds, Σ new tokens (error
    records excluded); ``peak_mem_mb`` (largest) and ``hardware`` (distinct, with the device)
    from the ``.meta.json`` sidecars when they carry them (key ``peak_mem_mb`` at top level or
    under ``speed``; ``hardware``/``gpu``/``cpu`` and ``device``).
    """
    acc: dict[tuple, dict] = {}
    for key, path in analysis.result_files.items():
        summ = analysis.summary(key)
        if summ is None:
            continue
        b, _s, m, label, _seed = key
        row = acc.setdefault(
            (b, m, label),
            {"items": 0, "seconds": 0.0, "new_tokens": 0, "peak_mem_mb": np.nan, "hardware": ""},
        )
        side = Path(str(path)[: -len(".jsonl")] + ".meta.json") if str(path).endswith(".jsonl") else None
        meta = {}
        if side is not None and side.exists():
            try:
                meta = read_json(side)
            except ValueError:
                meta = {}
        if meta.get("decoded_seed") is None or meta.get("decoded_seed") == meta.get("seed"):
            # a seed recorded from another seed's decode (greedy, no random draw) took no time itself
            row["items"] += summ.items_timed
            row["seconds"] += summ.seconds
            row["new_tokens"] += summ.new_tokens
        if meta:
            mem = meta.get("peak_mem_mb", (meta.get("speed") or {}).get("peak_mem_mb"))
            if mem is not None:
                row["peak_mem_mb"] = float(np.nanmax([float(mem), row["peak_mem_mb"]]))
            hw = sidecar_hardware_text(meta)
            if hw and hw not in row["hardware"].split("; "):
                row["hardware"] = "; ".join(x for x in (row["hardware"], hw) if x)
    rows = [{"benchmark": b, "model": m, "method": l, **v} for (b, m, l), v in acc.items() if v["items"]]
    return pd.DataFrame(rows, columns=SPEED_COLUMNS)


def load_speed(speed) -> pd.DataFrame:
    """Normalise a speed table given as a CSV/JSON path, a DataFrame or a list of dicts.

    Required columns: ``model``, ``method`` (label) and either ``seconds`` + ``new_tokens``
    (sums; tokens/s = Σ new_tokens / Σ seconds) or ``tokens_per_s``. Optional:
    ``benchmark`` (default ``all``), ``items``, ``peak_mem_mb``. JSON may be a list of rows
    or ``{"runs": [...]}``.
    """
    where = "speed table"
    if isinstance(speed, (str, os.PathLike)):
        path = Path(speed)
        where = str(path)
        if not path.exists():
            raise FileNotFoundError(f"speed table {path} does not exist")
        if path.suffix == ".csv":
            df = pd.read_csv(path)
        else:
            data = read_json(path)
            df = pd.DataFrame(data["runs"] if isinstance(data, dict) else data)
    elif isinstance(speed, pd.DataFrame):
        df = speed.copy()
    else:
        df = pd.DataFrame(list(speed))
    for col in ("model", "method"):
        if col not in df.columns:
            raise ValueError(f"{where}: missing column {col!r}")
    has_sums = {"seconds", "new_tokens"} <= set(df.columns)
    if not has_sums and "tokens_per_s" not in df.columns:
        raise ValueError(f"{where}: needs 'seconds' and 'new_tokens', or 'tokens_per_s'")
    if "benchmark" not in df.columns:
        df["benchmark"] = "all"
    if not has_sums:
        # Represent a given rate as 1 second of tokens_per_s tokens so sums stay rates.
        df["seconds"] = 1.0
        df["new_tokens"] = df["tokens_per_s"].astype(float)
    for col in ("items", "peak_mem_mb"):
        if col not in df.columns:
            df[col] = np.nan
    if "hardware" not in df.columns:
        df["hardware"] = ""
    df["hardware"] = df["hardware"].fillna("").astype(str)
    return df[SPEED_COLUMNS]


def speed_summary(df: pd.DataFrame, analysis: Analysis) -> pd.DataFrame:
    """Per (benchmark, model, label): tokens/s, s/item, overhead vs the greedy baseline, memory.

    Overhead = (seconds per new token of the label) / (seconds per new token of the greedy
    baseline label on the same benchmark and model); the sampling baseline is used when the
    run has no greedy baseline.
    """
    if df.empty:
        return df.assign(tokens_per_s=[], s_per_item=[], overhead=[], mode=[])
    g = (
        df.groupby(["benchmark", "model", "method"], sort=False)
        .agg(
            items=("items", lambda x: x.sum(min_count=1)),
            seconds=("seconds", "sum"),
            new_tokens=("new_tokens", "sum"),
            peak_mem_mb=("peak_mem_mb", "max"),
            hardware=("hardware", lambda x: "; ".join(dict.fromkeys(h for h in x if h))),
        )
        .reset_index()
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        g["tokens_per_s"] = g["new_tokens"] / g["seconds"]
        g["s_per_item"] = g["seconds"] / g["items"]
    ref_label = (
        analysis.baselines.get("greedy")
        or analysis.baselines.get("sample")
        or next((v for k, v in sorted(analysis.baselines.items(), key=str) if isinstance(k, tuple)), None)
    )
    g["overhead"] = np.nan
    g["mode"] = [analysis.runs.get(l, {}).get("mode", "") for l in g["method"]]
    if ref_label is not None:
        for (b, m), sub in g.groupby(["benchmark", "model"]):
            ref = sub[sub["method"] == ref_label]
            if ref.empty or not ref["new_tokens"].iloc[0]:
                continue
            ref_spt = ref["seconds"].iloc[0] / ref["new_tokens"].iloc[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                g.loc[sub.index, "overhead"] = (sub["seconds"] / sub["new_tokens"]) / ref_spt
    order = {l: i for i, l in enumerate(analysis.runs)}
    g["_o"] = [order.get(l, 999) for l in g["method"]]
    return g.sort_values(["benchmark", "model", "_o"]).drop(columns="_o").reset_index(drop=True)


# --------------------------------------------------------------------------- formatting


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def fmt_signed(x: float | None, digits: int = 2) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}"


def fmt_p(p: float | None) -> str:
    """p-values with 3 significant digits (``0.00195``; ``1.95e-05`` below 1e-4)."""
    if p is None or not math.isfinite(p):
        return "—"
    if p >= 1e-4:
        return f"{p:.3g}"
    return f"{p:.2e}"
