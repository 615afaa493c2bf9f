"""Figures for the report, returned as base64-encoded PNG (embedded in the HTML).

Uses matplotlib's object API (``matplotlib.figure.Figure``: no pyplot, no global backend
switch, nothing left open) styled with seaborn. The CIs drawn are the report's own
(:mod:`vcdflow.report.stats`), not seaborn's internal bootstrap, so plots and tables agree.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .analysis import bench_info

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import Analysis

DPI = 100
MODE_MARKERS = {"greedy": "o", "sample": "s"}


def fig_to_base64(fig: Figure) -> str:
    """PNG bytes of ``fig`` as base64 text (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _palette(n: int):
    return sns.color_palette("colorblind", max(n, 1))


def metric_plot(analysis: "Analysis", benchmark: str, split: str, max_metrics: int = 3) -> str | None:
    """Point plot per headline metric: mean over seeds per method label, 95% CI as error bars.

    x = method label (grouped by mode), colour = model, marker = decoding mode.
    Refused cells are left out. Returns None when nothing can be drawn.
    """
    cols = [c for c in analysis.columns(benchmark) if c.better or c.item_stat][:max_metrics]
    models = analysis.models(benchmark, split)
    labels = analysis.labels(benchmark, split)
    labels = sorted(
        labels, key=lambda l: (analysis.mode(l) != "greedy", analysis.mode(l), list(analysis.runs).index(l))
    )
    if not cols or not labels:
        return None
    colors = _palette(len(models))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        width = max(4.0, 0.45 * len(labels) + 2.0)
        fig = Figure(figsize=(width * len(cols), 3.6))
        axes = fig.subplots(1, len(cols), squeeze=False)[0]
        drawn = False
        for ax, col in zip(axes, cols):
            offsets = np.linspace(-0.2, 0.2, len(models)) if len(models) > 1 else [0.0]
            labelled: set[str] = set()
            for mi, (model, off) in enumerate(zip(models, offsets)):
                for x, label in enumerate(labels):
                    cell = analysis.cell(benchmark, split, model, label, col.metric)
                    if cell is None or cell.mean is None:
                        continue
                    yerr = None
                    if cell.ci is not None:
                        yerr = [[max(0.0, cell.mean - cell.ci[0])], [max(0.0, cell.ci[1] - cell.mean)]]
                    ax.errorbar(
                        x + off,
                        cell.mean,
                        yerr=yerr,
                        fmt=MODE_MARKERS.get(cell.mode, "D"),
                        color=colors[mi],
                        capsize=3,
                        markersize=6,
                        label=model if model not in labelled else None,
                    )
                    labelled.add(model)
                    drawn = True
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=40, ha="right", rotation_mode="anchor")
            arrow = {"higher": " ↑", "lower": " ↓"}.get(col.better, "")
            ax.set_title(f"{col.title}{arrow}")
            ax.set_xlim(-0.6, len(labels) - 0.4)
        handles, names = axes[0].get_legend_handles_labels()
        uniq = dict(zip(names, handles))
        if uniq and len(models) > 1:
            axes[-1].legend(uniq.values(), uniq.keys(), title="model", fontsize=8, loc="best")
        fig.suptitle(
            f"{bench_info(benchmark, []).title} {split}: mean over seeds, 95% CI"
            + (" (demo world)" if getattr(analysis, "demo", False) else "")
        )
        if not drawn:
            return None
        return fig_to_base64(fig)


def yes_ratio_scatter(analysis: "Analysis", bench: str = "pope") -> str | None:
    """POPE accuracy against yes-ratio for POPE benchmark ``bench`` (``pope`` or a further dataset
    ``pope_<name>``), one point per (split, model, label); 50% marked.

    Colour = engine method, marker = mode. A method that gains accuracy by saying "yes"
    more often moves up *and* right.
    """
    if bench not in analysis.benchmarks():
        return None
    title = bench_info(bench, []).title
    splits = analysis.splits(bench)
    methods = list(dict.fromkeys(analysis.engine_method(l) for l in analysis.labels(bench)))
    colors = dict(zip(methods, _palette(len(methods))))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=(4.2 * len(splits), 3.8))
        axes = fig.subplots(1, len(splits), squeeze=False)[0]
        drawn = False
        seen = set()
        for ax, split in zip(axes, splits):
            for model in analysis.models(bench, split):
                for label in analysis.labels(bench, split, model):
                    acc = analysis.cell(bench, split, model, label, "accuracy")
                    yes = analysis.cell(bench, split, model, label, "yes_ratio")
                    if not acc or not yes or acc.mean is None or yes.mean is None:
                        continue
                    meth = analysis.engine_method(label)
                    key = (meth, acc.mode)
                    ax.scatter(
                        yes.mean,
                        acc.mean,
                        color=colors[meth],
                        marker=MODE_MARKERS.get(acc.mode, "D"),
                        s=40,
                        edgecolor="black",
                        linewidth=0.5,
                        label=f"{meth} ({acc.mode})" if key not in seen else None,
                    )
                    seen.add(key)
                    ax.annotate(
                        f"{label}" + (f"·{model}" if len(analysis.models(bench)) > 1 else ""),
                        (yes.mean, acc.mean),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
                    drawn = True
            ax.axvline(50.0, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("yes-ratio (%)")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"{title} {split}")
        if not drawn:
            return None
        handles, names = [], []
        for ax in axes:
            h, n = ax.get_legend_handles_labels()
            handles += h
            names += n
        if handles:
            axes[-1].legend(handles, names, fontsize=7, loc="best")
        return fig_to_base64(fig)


def _times(x) -> str:
    return f"{float(x):.2f}×" if x is not None and math.isfinite(float(x)) else ""


def speed_plot(summary: pd.DataFrame) -> str | None:
    """Bar chart of new tokens per second per method label (one panel per benchmark).

    Bars are annotated with the overhead vs greedy (× time per token) when known.
    """
    if summary is None or summary.empty:
        return None
    data = summary[np.isfinite(summary["tokens_per_s"].astype(float))]
    if data.empty:
        return None
    benches = list(dict.fromkeys(data["benchmark"]))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        n_labels = data["method"].nunique()
        fig = Figure(figsize=(max(4.0, 0.7 * n_labels + 2) * len(benches), 3.6))
        axes = fig.subplots(1, len(benches), squeeze=False)[0]
        for ax, bench in zip(axes, benches):
            sub = data[data["benchmark"] == bench]
            sns.barplot(
                data=sub,
                x="method",
                y="tokens_per_s",
                hue="model",
                ax=ax,
                errorbar=None,
                palette=_palette(sub["model"].nunique()),
            )
            xs = list(dict.fromkeys(sub["method"]))
            for container, model in zip(ax.containers, dict.fromkeys(sub["model"])):
                over = dict(
                    zip(sub.loc[sub["model"] == model, "method"], sub.loc[sub["model"] == model, "overhead"])
                )
                labels = [_times(over.get(x)) for x in xs]
                if len(container) == len(labels):
                    ax.bar_label(container, labels=labels, fontsize=7, padding=2)
            ax.set_title(f"{bench}: new tokens / s (label: time per token vs greedy)")
            ax.set_xlabel("")
            ax.set_ylabel("tokens / s")
            ax.tick_params(axis="x", rotation=30)
            if sub["model"].nunique() < 2 and ax.get_legend() is not None:
                ax.get_legend().remove()
        return fig_to_base64(fig)


def overview_heatmap(analysis: "Analysis") -> str | None:
    """Heatmap of Δ vs the same-mode baseline: rows = runs (model · label, baselines left out),
    columns = each benchmark/split's headline metric (:meth:`Analysis.overview`).

    Colour = the gain in the metric's better direction (Δ, sign flipped for lower-is-better
    metrics, divided by the column's largest |Δ|; green better, red worse, centred at 0); the annotation
    is the signed Δ itself, ``*`` where the paired test gives p < 0.05. None when no Δ exists.
    """
    ov = analysis.overview()
    cols = ov["columns"]
    multi_model = len({r["model"] for r in ov["rows"]}) > 1
    names, gain, text = [], [], []
    for r in ov["rows"]:
        g_row, t_row = [], []
        for (_b, _s, col), cell in zip(cols, r["cells"]):
            if cell is None or cell.delta is None or cell.refused:
                g_row.append(np.nan)
                t_row.append("")
                continue
            sign = -1.0 if col.better == "lower" else 1.0
            g_row.append(sign * cell.delta)
            star = (
                "*"
                if cell.test is not None and cell.test.pvalue is not None and cell.test.pvalue < 0.05
                else ""
            )
            t_row.append(f"{cell.delta:+.1f}{star}")
        if any(math.isfinite(g) for g in g_row):
            names.append(f"{r['model']} · {r['label']}" if multi_model else r["label"])
            gain.append(g_row)
            text.append(t_row)
    if not gain:
        return None
    data = pd.DataFrame(
        gain, index=names, columns=[f"{bench_info(b, []).title} {s}\n{c.title}" for b, s, c in cols]
    )
    keep = data.notna().any(axis=0)
    data = data.loc[:, keep]
    annot = np.array(text, dtype=object)[:, keep.to_numpy()]
    # each column on its own scale (MME's 0–800 next to POPE's percent): gain / largest |gain|
    scale = data.abs().max(axis=0).replace(0.0, 1.0)
    data = data / scale
    lim = 1.0
    with sns.axes_style("white"), sns.plotting_context("notebook", font_scale=0.8):
        fig = Figure(figsize=(1.5 * data.shape[1] + 3.0, 0.35 * data.shape[0] + 1.6))
        ax = fig.subplots()
        with warnings.catch_warnings():  # seaborn's own cmap.set_bad call (matplotlib deprecation)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(
                data,
                ax=ax,
                cmap="RdYlGn",
                center=0.0,
                vmin=-lim,
                vmax=lim,
                annot=annot,
                fmt="",
                linewidths=0.5,
                linecolor="white",
                cbar_kws={"label": "gain vs baseline, scaled per column"},
            )
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=0)
        ax.set_title(
            "Δ vs the same-mode baseline (* p < 0.05)"
            + (" — demo world" if getattr(analysis, "demo", False) else "")
        )
        return fig_to_base64(fig)
