"""Render the reproduction report: one self-contained ``reports/index.html``.

:func:`build_report` reads the metrics table, per-item outcomes, raw results and the papers'
numbers (never a model), computes every number with :mod:`vcdflow.report.analysis`, draws
the figures with :mod:`vcdflow.report.figures` and renders ``templates/index.html`` with
jinja2 (autoescaped). Figures and image thumbnails are embedded as base64 ``data:`` URIs;
the page loads nothing from outside itself. The file is written atomically.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
from markupsafe import Markup, escape

from ..io import atomic_path
from . import analysis as an
from . import figures as _figures
from . import stats
from .judges import judges_of
from .provenance import (
    collect_provenance,
    input_checksums,
    result_dates,
    sidecar_hardware,
    version_conflicts,
    versions_in_use,
)

TEMPLATE_DIR = Path(__file__).parent / "templates"
_REPO_PAPER_RESULTS = Path(__file__).resolve().parents[3] / "resources" / "paper_results.csv"
THUMB_PX = 192
META_KEYS_FIRST = ("transform", "augmentation", "sas_choice", "choice", "reconstructions")


class _NoFigures:
    """Stand-in for :mod:`figures` when plots are switched off."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def default_paper_results() -> Path | None:
    """``resources/paper_results.csv`` of this checkout, else of the working directory."""
    for p in (_REPO_PAPER_RESULTS, Path("resources/paper_results.csv")):
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------- small helpers


def thumbnail_uri(path: str | os.PathLike, max_px: int = THUMB_PX) -> str | None:
    """A ``data:`` URI of a thumbnail of ``path`` (PNG for small images, else JPEG); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (OSError, ValueError):
        return None
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    if im.width * im.height <= 128 * 128:
        im.save(buf, format="PNG")
        mime = "image/png"
    else:
        im.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def highlight(text: str, objects: Iterable[str]) -> Markup:
    """Escape ``text`` and wrap each mention of ``objects`` in ``<mark>``.

    A mention is the object word or phrase (case-insensitive, any whitespace between
    words) optionally followed by a plural ``s``/``es``, on word boundaries. CHAIR reports
    node words (e.g. ``person`` for "man"); a synonym that is not the node word is not
    marked, which is why the report also lists the objects beside the text.
    """
    objs = sorted({o.strip() for o in objects if o and o.strip()}, key=len, reverse=True)
    if not objs or not text:
        return Markup(escape(text or ""))
    alts = [r"\s+".join(re.escape(w) for w in o.split()) + r"(?:e?s)?" for o in objs]
    pattern = re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE)
    out, last = [], 0
    for m in pattern.finditer(text):
        out.append(str(escape(text[last : m.start()])))
        out.append(f"<mark>{escape(m.group(0))}</mark>")
        last = m.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))


def _short(value: Any, limit: int = 80) -> str | None:
    if isinstance(value, (str, int, float, bool)):
        s = str(value)
        return s if len(s) <= limit else s[: limit - 1] + "…"
    if (
        isinstance(value, (list, tuple))
        and len(value) <= 6
        and all(isinstance(v, (str, int, float)) for v in value)
    ):
        return _short(", ".join(map(str, value)), limit)
    return None


def _meta_items(meta: Mapping | None) -> list[tuple[str, str]]:
    meta = meta or {}
    keys = [k for k in META_KEYS_FIRST if k in meta] + sorted(k for k in meta if k not in META_KEYS_FIRST)
    out = []
    for k in keys:
        s = _short(meta[k])
        if s is not None:
            out.append((str(k), s))
    return out[:8]


def _image_path(name: str | None, bench: str, split: str, image_root, config: Mapping | None) -> Path | None:
    if not name:
        return None
    cands = [Path(name)]
    if image_root is not None:
        roots = image_root.get(bench) if isinstance(image_root, Mapping) else image_root
        if roots is not None:
            cands.append(Path(str(roots).format(split=split)) / name)
    bcfg = (
        ((config or {}).get("benchmarks") or {}).get(bench)
        if isinstance((config or {}).get("benchmarks"), Mapping)
        else None
    )
    if isinstance(bcfg, Mapping) and isinstance(bcfg.get("images"), str):
        cands.append(Path(bcfg["images"].format(split=split)) / name)
    for c in cands:
        if c.is_file():
            return c
    return None


def _extra_paths(extra_images: Mapping | None, label: str | None, item_id: str) -> list[Path]:
    if not extra_images:
        return []
    value = extra_images.get((label, item_id)) if label is not None else extra_images.get(item_id)
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    return [Path(v) for v in value]


# --------------------------------------------------------------------------- table views


def _cell_view(a: an.Analysis, cell: an.Cell | None, reason_missing: str) -> dict:
    if cell is None:
        return {"empty": reason_missing}
    view: dict[str, Any] = {
        "key": cell.key,
        "label": cell.label,
        "n_seeds": cell.n_seeds,
        "seeds": ", ".join(f"{s}: {v:.2f}" for s, v in cell.values.items()),
    }
    if cell.refused:
        view["refused"] = cell.refused
        return view
    view["mean"] = an.fmt(cell.mean)
    view["std"] = an.fmt(cell.std) if cell.std is not None and math.isfinite(cell.std) else None
    if cell.ci is not None:
        view["ci"] = (an.fmt(cell.ci[0]), an.fmt(cell.ci[1]))
    view["ci_note"] = cell.ci_note
    view["is_baseline"] = cell.is_baseline
    if cell.delta is not None:
        view["delta"] = an.fmt_signed(cell.delta)
        col = a._column(cell.benchmark, cell.metric)
        better = col.better if col else ""
        if better and abs(cell.delta) >= 0.005:
            good = (cell.delta > 0) == (better == "higher")
            view["delta_class"] = "better" if good else "worse"
    view["delta_note"] = cell.delta_note
    if cell.test is not None:
        t = cell.test
        view["p"] = an.fmt_p(t.pvalue)
        view["p_sig"] = t.pvalue is not None and t.pvalue < 0.05
        view["p_title"] = "\n".join([t.kind + (f" — {t.note}" if t.note else "")] + t.per_seed)
    return view


def _table(a: an.Analysis, bench: str, split: str, version_notes: Mapping[tuple, str] | None = None) -> dict:
    cols = a.columns(bench)
    labels = a.labels(bench, split)
    modes = an.mode_order(a.mode(l) for l in labels)
    blocks = []
    for model in a.models(bench, split):
        model_labels = a.labels(bench, split, model)
        rows = []
        for group in a.row_groups(labels):
            cells = {}
            for mode in modes:
                label = group["labels"].get(mode)
                if label is None:
                    cells[mode] = [{"empty": f"no {mode} run of this method"} for _ in cols]
                elif label not in model_labels:
                    cells[mode] = [{"empty": f"no results for {label}"} for _ in cols]
                else:
                    cells[mode] = [
                        _cell_view(
                            a, a.cell(bench, split, model, label, c.metric), f"{label} has no {c.metric}"
                        )
                        for c in cols
                    ]
            rows.append(
                {
                    "name": group["name"],
                    "detail": group["detail"],
                    "labels": group["labels"],
                    "protocol": group.get("protocol", an.UNIFIED),
                    "cells": cells,
                }
            )
        blocks.append(
            {"model": model, "rows": rows, "versions_note": (version_notes or {}).get((bench, split, model))}
        )
    protocols = {a.runs[l].get("protocol", an.UNIFIED) for l in labels}
    # the header names the baseline of each mode; with several protocols each row's own applies
    base = (
        {
            m: a.baselines[(protocols.copy().pop(), m)]
            for m in modes
            if (next(iter(protocols)), m) in a.baselines
        }
        if len(protocols) == 1
        else {}
    )
    return {"columns": cols, "modes": modes, "blocks": blocks, "baselines": base}


def _all_metrics(a: an.Analysis, bench: str, split: str) -> dict:
    sub = a.present()
    sub = sub[(sub.benchmark == bench) & (sub.split == split)]
    known = [c.metric for c in an.bench_info(bench, sub["metric"]).columns]
    metrics = [m for m in known if m in set(sub["metric"])] + sorted(set(sub["metric"]) - set(known))
    rows = []
    for model in a.models(bench, split):
        for label in a.labels(bench, split, model):
            vals = []
            for m in metrics:
                c = a.cell(bench, split, model, label, m)
                if c is None:
                    vals.append("")
                elif c.refused:
                    vals.append("—")
                else:
                    s = an.fmt(c.mean)
                    if c.std is not None and math.isfinite(c.std):
                        s += f" ± {an.fmt(c.std)}"
                    vals.append(s)
            rows.append({"model": model, "label": label, "mode": a.mode(label), "values": vals})
    return {"metrics": metrics, "rows": rows}


def _sort_value(cell: an.Cell | None) -> str:
    """The number a sortable overview column sorts by (the mean); empty for no number."""
    if cell is None or cell.refused or cell.mean is None or not math.isfinite(cell.mean):
        return ""
    return repr(float(cell.mean))


def _overview(a: an.Analysis) -> dict:
    """The field at a glance: methods × benchmark headline metrics (see :meth:`Analysis.overview`)."""
    ov = a.overview()
    cols = [
        {
            "benchmark": b,
            "split": s,
            "metric": c.metric,
            "title": an.bench_info(b, [c.metric]).title,
            "metric_title": c.title,
            "better": c.better,
        }
        for b, s, c in ov["columns"]
    ]
    rows = []
    for r in ov["rows"]:
        run = a.runs[r["label"]]
        cells = []
        for (b, s, c), cell in zip(ov["columns"], r["cells"]):
            v = _cell_view(a, cell, f"{r['label']} has no {c.metric} on {b}/{s}")
            v["sort"] = _sort_value(cell)
            cells.append(v)
        rows.append(
            {
                "model": r["model"],
                "label": r["label"],
                "method": run["method"],
                "mode": run["mode"],
                "protocol": run.get("protocol", an.UNIFIED),
                "cells": cells,
            }
        )
    return {"columns": cols, "rows": rows}


def _test_view(t: an.TestResult | None) -> dict:
    if t is None:
        return {}
    return {
        "p": an.fmt_p(t.pvalue),
        "p_sig": t.pvalue is not None and t.pvalue < 0.05,
        "p_title": "\n".join([t.kind + (f" — {t.note}" if t.note else "")] + t.per_seed),
    }


def _controls(a: an.Analysis) -> list[dict]:
    """The controls section (cd_rethink): see :meth:`Analysis.controls`."""
    out = []
    for g in a.controls():
        col = g["column"]

        def run_view(label, cell, yes):
            v = {"label": label, "mean": "—", "delta": "—", "yes": "—", "key": cell.key if cell else ""}
            if cell is not None and not cell.refused:
                v["mean"] = an.fmt(cell.mean)
                v["delta"] = an.fmt_signed(cell.delta) if cell.delta is not None else "—"
                v.update(_test_view(cell.test))
            elif cell is not None:
                v["refused"] = cell.refused
            if yes is not None and not yes.refused:
                v["yes"] = an.fmt(yes.mean)
            return v

        base = run_view(g["baseline"], g["baseline_cell"], g["baseline_yes"])
        ctrls = [run_view(c["label"], c["cell"], c["yes"]) for c in g["controls"]]
        methods = []
        for m in g["methods"]:
            v = run_view(m["label"], m["cell"], m["yes"])
            v["vs"] = [
                dict({"control": x["control"], "diff": an.fmt_signed(x["diff"])}, **_test_view(x["test"]))
                for x in m["vs"]
            ]
            v["beats"] = m["beats"]
            methods.append(v)
        out.append(
            {
                "benchmark": g["benchmark"],
                "title": an.bench_info(g["benchmark"], [col.metric]).title,
                "split": g["split"],
                "model": g["model"],
                "protocol": g["protocol"],
                "mode": g["mode"],
                "metric": col.metric,
                "metric_title": col.title,
                "baseline": base,
                "controls": ctrls,
                "control_labels": [c["label"] for c in g["controls"]],
                "methods": methods,
                "note": g["note"],
            }
        )
    return out


# --------------------------------------------------------------------------- examples


def _outcome(items: an.RunItems | None, item_id: str) -> dict:
    return items.get(item_id) if items is not None else {}


def _examples(a: an.Analysis, n_examples: int, config, image_root, extra_images) -> list[dict]:
    out = []
    if n_examples <= 0:
        return out
    for bench in a.benchmarks():
        splits = a.splits(bench)
        models = a.models(bench)
        if not splits or not models:
            continue
        split, model = splits[0], models[0]
        labels = [
            l
            for l in a.labels(bench, split, model)
            if any(k[:4] == (bench, split, model, l) for k in a.result_files)
        ]
        per_label: dict[str, tuple[int, dict, an.RunItems | None]] = {}
        for label in labels:
            seeds = sorted(k[4] for k in a.result_files if k[:4] == (bench, split, model, label))
            key = (bench, split, model, label, seeds[0])
            recs = a.results(key)
            if not recs:
                continue
            per_label[label] = (seeds[0], {str(r["item_id"]): r for r in recs}, a.items(key))
        if not per_label:
            continue
        first = next(iter(per_label.values()))[1]
        common = [i for i in first if all(i in v[1] for v in per_label.values())]

        def interest(iid: str) -> tuple:
            hall = [_outcome(v[2], iid).get("hallucinated_mentions") for v in per_label.values()]
            hall = [h for h in hall if h is not None]
            answers = {str(v[1][iid].get("answer", "")).strip().lower() for v in per_label.values()}
            correct = {_outcome(v[2], iid).get("correct") for v in per_label.values()} - {None}
            spread = (max(hall) - min(hall)) if hall else 0
            return (-(spread + len(correct) - 1), -len(answers))

        order = {iid: i for i, iid in enumerate(common)}

        def has_extra(iid: str) -> bool:
            return bool(_extra_paths(extra_images, None, iid)) or any(
                _extra_paths(extra_images, l, iid) for l in per_label
            )

        # Items with extra images (e.g. ConVis reconstructions) first, then disagreement.
        chosen = sorted(common, key=lambda i: (not has_extra(i), interest(i), order[i]))[:n_examples]
        for iid in chosen:
            rec0 = first[iid]
            img = _image_path(rec0.get("image"), bench, split, image_root, config)
            ex = {
                "benchmark": bench,
                "split": split,
                "model": model,
                "item_id": iid,
                "image_name": rec0.get("image") or "",
                "image_uri": thumbnail_uri(img) if img else None,
                "prompt": rec0.get("prompt", ""),
                "label": rec0.get("label"),
                "extras": [u for u in (thumbnail_uri(p) for p in _extra_paths(extra_images, None, iid)) if u],
                "rows": [],
            }
            for label, (seed, recs, items) in per_label.items():
                r, it = recs[iid], _outcome(items, iid)
                objs = it.get("hallucinated_objects") or []
                ex["rows"].append(
                    {
                        "label": label,
                        "mode": a.mode(label),
                        "seed": seed,
                        "answer": highlight(str(r.get("answer", "")), objs),
                        "error": r.get("error"),
                        "correct": it.get("correct"),
                        "hallucinated": objs,
                        "meta": _meta_items(r.get("meta")),
                        "extras": [
                            u for u in (thumbnail_uri(p) for p in _extra_paths(extra_images, label, iid)) if u
                        ],
                    }
                )
            out.append(ex)
    return out


# --------------------------------------------------------------------------- main entry


def _expected(config: Mapping | None) -> dict[str, list]:
    out: dict[str, list] = {}
    if not config:
        return out
    for key in ("benchmarks", "models"):
        v = config.get(key)
        if isinstance(v, Mapping):
            out[key] = list(v)
        elif isinstance(v, (list, tuple)):
            out[key] = [str(x) for x in v]
    return out


def _is_pope(benchmark: str) -> bool:
    """POPE or a further POPE dataset (the benchmark registry says which)."""
    from ..benchmarks import kind_of

    try:
        return kind_of(benchmark) == "pope"
    except ValueError:
        return False


def _protocol_view(a: an.Analysis, protocols: Mapping | None) -> dict:
    """The protocol section: which protocols the runs used, and how each paper protocol differs
    from the unified one (field, unified value, paper value, the paper's source)."""
    used = sorted(
        {r.get("protocol", an.UNIFIED) for r in a.runs.values()}, key=lambda p: (p != an.UNIFIED, p)
    )
    diffs = []
    for name, rows in sorted((protocols or {}).items()):
        diffs.append(
            {
                "name": name,
                "rows": [
                    {
                        "family": r.get("family", ""),
                        "benchmark": r.get("benchmark", ""),
                        "field": r.get("field", ""),
                        "unified": _short(json.dumps(r.get("b"), default=str), 120),
                        "paper": _short(json.dumps(r.get("a"), default=str), 120),
                        "source": r.get("source_a", ""),
                    }
                    for r in rows
                ],
            }
        )
    runs_of = {p: sorted(k for k, r in a.runs.items() if r.get("protocol", an.UNIFIED) == p) for p in used}
    return {"used": used, "runs": runs_of, "diffs": diffs}


def _yaml(obj: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 - fall back to JSON for anything yaml refuses
        return json.dumps(obj, indent=2, default=str)


def build_report(
    metrics_csv: str | os.PathLike,
    out_html: str | os.PathLike,
    *,
    result_files: Mapping | None = None,
    scored_files: Mapping | None = None,
    runs: Mapping | None = None,
    paper_results: str | os.PathLike | None = None,
    config: Mapping | None = None,
    demo: bool = False,
    speed=None,
    extra_images: Mapping | None = None,
    max_error_fraction: float = 0.05,
    seed: int = 0,
    provenance: Mapping | None = None,
    image_root: str | os.PathLike | Mapping | None = None,
    n_examples: int | None = None,
    title: str | None = None,
    n_boot: int = stats.N_BOOT_CI,
    n_boot_test: int = stats.N_BOOT_TEST,
    figures: bool = True,
    protocols: Mapping | None = None,
) -> Path:
    """Render the reproduction report to ``out_html`` (atomically) and return its path.

    Parameters
    ----------
    metrics_csv: ``results/metrics.csv`` (long format, see ``docs/design.md``).
    result_files, scored_files: ``(benchmark, split, model, method_label, seed) → path`` of the
        raw result JSONL and the per-item outcomes; optional (without them: no item-level CIs,
        no paired tests, no examples, error counts from metrics.csv only).
    runs: method label → ``{"method", "mode", "params"}`` (the config's methods); labels it
        lacks are inferred from their names (see :func:`analysis.normalise_runs`).
    paper_results: the papers' numbers; default ``resources/paper_results.csv``. Never used
        when ``demo`` is true.
    config: the run config (shown in the provenance; its ``benchmarks``/``models`` say what
        was expected, its ``report`` block supplies ``title``/``n_examples`` defaults and its
        benchmark ``images`` folders locate example images).
    demo: label everything as demo-world results and skip the comparison with papers.
    speed: a speed table (path to CSV/JSON, DataFrame or rows; see :func:`analysis.load_speed`);
        default: aggregated from the result files' ``timing`` fields.
    extra_images: extra images per example, keyed by ``item_id`` or ``(method_label, item_id)``,
        value a path or list of paths (e.g. ConVis reconstructions).
    max_error_fraction: a seed whose errored items exceed this fraction of its items makes
        every metric of that (benchmark, split, model, method) show "—" with the reason.
    seed: seed of every bootstrap (``numpy.random.default_rng(seed)``).
    provenance: from :func:`provenance.collect_provenance`; collected here when None.
    image_root: folder (or ``{benchmark: folder}``, ``{split}`` allowed) of example images.
    n_boot, n_boot_test: bootstrap resamples for CIs (B = 2000) and paired tests (10000).
    figures: False leaves the plots out (tables only; a few seconds faster).
    protocols: paper protocol name → rows of how it differs from ``unified``
        (:func:`vcdflow.config.protocol_differences`); listed in the report's protocol section.
    """
    plots = _figures if figures else _NoFigures()
    out_html = Path(out_html)
    metrics_csv = Path(metrics_csv)
    metrics = an.load_metrics(metrics_csv)
    report_cfg = (config or {}).get("report") or {}
    if n_examples is None:
        n_examples = int(report_cfg.get("n_examples", 4))
    if title is None:
        title = str(report_cfg.get("title", "vcdflow reproduction report"))
    a = an.Analysis(
        metrics,
        result_files=result_files,
        scored_files=scored_files,
        runs=runs,
        max_error_fraction=max_error_fraction,
        seed=seed,
        n_boot=n_boot,
        n_boot_test=n_boot_test,
        expected=_expected(config),
    )
    a.demo = bool(demo)

    # Benchmark sections ------------------------------------------------------------
    version_notes = version_conflicts(a.result_files)
    sections = []
    for bench in a.benchmarks():
        info = an.bench_info(bench, a.metrics.loc[a.metrics.benchmark == bench, "metric"])
        splits = []
        for split in a.splits(bench):
            splits.append(
                {
                    "split": split,
                    "table": _table(a, bench, split, version_notes),
                    "all": _all_metrics(a, bench, split),
                    "figure": plots.metric_plot(a, bench, split),
                }
            )
        sections.append(
            {
                "bench": bench,
                "title": info.title,
                "note": info.note,
                "splits": splits,
                "judges": judges_of(a.scored_files, bench),
            }
        )
    for b in _expected(config).get("benchmarks", []):
        if b not in a.benchmarks():
            sections.append(
                {
                    "bench": b,
                    "title": an.bench_info(b, []).title,
                    "note": "",
                    "splits": [],
                    "missing": f"No results for {b} in {metrics_csv}.",
                }
            )

    # Reproduced vs reported ----------------------------------------------------------
    comparison: dict[str, Any] = {}
    if demo:
        comparison["skipped"] = (
            "Demo-world results come from a synthetic world and a tiny model; "
            "they are never compared with the papers' numbers."
        )
    else:
        paper_path = Path(paper_results) if paper_results is not None else default_paper_results()
        if paper_path is None:
            comparison["skipped"] = "No paper results file given (resources/paper_results.csv not found)."
        else:
            paper = an.load_paper_results(paper_path)
            rows, unmatched = a.comparisons(paper)
            comparison["path"] = str(paper_path)
            comparison["unmatched"] = unmatched
            comparison["rows"] = [
                {
                    "key": r["cell"].key,
                    "benchmark": r["cell"].benchmark,
                    "split": r["cell"].split,
                    "model": r["cell"].model,
                    "label": r["cell"].label,
                    "mode": r["cell"].mode,
                    "protocol": a.runs[r["cell"].label].get("protocol", an.UNIFIED),
                    "metric": r["cell"].metric,
                    "ours": "—" if r["cell"].refused else an.fmt(r["cell"].mean),
                    "ci": None
                    if r["cell"].ci is None or r["cell"].refused
                    else (an.fmt(r["cell"].ci[0]), an.fmt(r["cell"].ci[1])),
                    "paper": an.fmt(r["paper"]),
                    "diff": an.fmt_signed(r["diff"]),
                    "source": r["source"],
                    "table": r["table"],
                    "setting": r["setting"],
                    "flag": r["flag"],
                    "flag_kind": r["flag_kind"],
                    "refused": r["cell"].refused,
                }
                for r in rows
            ]
            comparison["n_outside"] = sum(r["flag_kind"] == "outside" for r in rows)

    # Speed ----------------------------------------------------------------------------
    speed_view: dict[str, Any] = {}
    if speed is not None:
        raw = an.load_speed(speed)
        speed_view["source"] = (
            str(speed) if isinstance(speed, (str, os.PathLike)) else "speed table passed in"
        )
    else:
        raw = an.speed_from_results(a)
        speed_view["source"] = "timing fields of the result files"
    summary = an.speed_summary(raw, a)
    speed_view["rows"] = [
        {
            "benchmark": r["benchmark"],
            "model": r["model"],
            "label": r["method"],
            "mode": r["mode"],
            "n_items": "—" if not math.isfinite(float(r["items"])) else f"{int(r['items'])}",
            "tokens": f"{float(r['new_tokens']):.0f}",
            "seconds": an.fmt(float(r["seconds"])),
            "tps": an.fmt(float(r["tokens_per_s"])),
            "spi": an.fmt(float(r["s_per_item"]), 3),
            "overhead": "—" if not math.isfinite(float(r["overhead"])) else f"{float(r['overhead']):.2f}×",
            "mem": "—" if not math.isfinite(float(r["peak_mem_mb"])) else f"{float(r['peak_mem_mb']):.0f}",
            "hardware": r.get("hardware") or "—",
            "protocol": a.runs.get(r["method"], {}).get("protocol", an.UNIFIED),
        }
        for _, r in summary.iterrows()
    ]
    speed_view["figure"] = plots.speed_plot(summary)

    # Errors -----------------------------------------------------------------------------
    errors = []
    for key, st in sorted(a.status.items(), key=lambda kv: (-(kv[1].n_errors or 0), str(kv[0]))):
        errors.append(
            {
                "run": "/".join(map(str, key[:4])) + f"/seed{key[4]}",
                "n": "—" if st.n is None else f"{st.n:g}",
                "n_errors": "—" if st.n_errors is None else f"{st.n_errors:g}",
                "pct": "—" if st.fraction is None else f"{100 * st.fraction:.1f}%",
                "source": st.source,
                "refused": st.refused,
                "top": st.top_error,
            }
        )
    n_err_runs = sum(1 for s in a.status.values() if (s.n_errors or 0) > 0)

    # Provenance -------------------------------------------------------------------------
    prov = dict(provenance) if provenance is not None else collect_provenance(config=config)
    if config is not None and "config" not in prov:
        prov["config"] = dict(config)
    inputs = [metrics_csv]
    if comparison.get("path"):
        inputs.append(Path(comparison["path"]))
    inputs += list(a.result_files.values()) + list(a.scored_files.values())
    checks = input_checksums(inputs)
    prov_view = {
        "generated_at": prov.get("generated_at", ""),
        "git": prov.get("git", {}),
        "packages": prov.get("packages", {}),
        "hardware": prov.get("hardware", {}),
        "decode_hardware": sidecar_hardware(a.result_files.values()) or prov.get("decode_hardware") or [],
        "decode_versions": versions_in_use(a.result_files),
        "hub_revisions": prov.get("hub_revisions") or [],
        "version_conflicts": [
            {"comparison": "/".join(map(str, k)), "note": v} for k, v in version_notes.items()
        ],
        "config_hash": prov.get("config_hash", ""),
        "config_yaml": _yaml(prov["config"]) if prov.get("config") is not None else "",
        "inputs": checks,
        "dates": result_dates(checks),
        "other": {
            k: v
            for k, v in prov.items()
            if k
            not in (
                "generated_at",
                "git",
                "packages",
                "hardware",
                "config",
                "config_hash",
                "decode_hardware",
                "hub_revisions",
            )
        },
    }

    ctx = {
        "title": title + (" — DEMO WORLD" if demo else ""),
        "demo": demo,
        "sections": sections,
        "comparison": comparison,
        "scatters": {b: plots.yes_ratio_scatter(a, b) for b in a.benchmarks() if _is_pope(b)},
        "speed": speed_view,
        "examples": _examples(a, n_examples, config, image_root, extra_images),
        "overview": _overview(a),
        "overview_figure": plots.overview_heatmap(a),
        "controls": _controls(a),
        "errors": errors,
        "n_err_runs": n_err_runs,
        "max_error_pct": f"{100 * max_error_fraction:g}",
        "provenance": prov_view,
        "missing": a.missing(),
        "notes": list(dict.fromkeys(a.notes)),
        "baselines": a.baselines,
        "protocols": _protocol_view(a, protocols),
        "runs": a.runs,
        "n_boot": n_boot,
        "n_boot_test": n_boot_test,
        "seed": seed,
        "summary": {
            "benchmarks": a.benchmarks(),
            "models": a.models(),
            "labels": [l for l in a.runs if l in set(a.metrics.method)],
            "n_runs": len(a.status),
        },
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template("index.html").render(**ctx)
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
        os.chmod(tmp, 0o644)  # a page to be read by others (temp files are created 0600)
    return out_html
