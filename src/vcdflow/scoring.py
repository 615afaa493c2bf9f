"""Score one result file: per-item outcomes (for paired tests) and long-format metric rows.

``results/metrics.csv`` columns: :data:`METRIC_COLUMNS` =
``benchmark,split,model,protocol,method,mode,seed,metric,value`` (``method`` is the config's
method label; ``protocol`` the resolved protocol name; ``mode`` greedy or sample).
"""

from __future__ import annotations

import os

import pandas as pd

from .io import atomic_path, read_jsonl, write_jsonl
from .metrics import metric_rows

METRIC_COLUMNS = ["benchmark", "split", "model", "protocol", "method", "mode", "seed", "metric", "value"]
SORT_COLUMNS = ["benchmark", "split", "model", "protocol", "method", "mode", "seed", "metric"]


def score_records(bench: dict, records: list[dict]) -> tuple[dict, list[dict]]:
    """Return ``(scores, per_item)`` for one benchmark split's records: the scorer of the
    benchmark's registry entry (:mod:`vcdflow.benchmarks`; ``kind`` or ``name`` picks it)."""
    from .benchmarks import get_benchmark

    return get_benchmark(bench.get("kind") or bench["name"]).score(bench, records)


def _flat_mme(scores: dict) -> dict:  # kept for callers of the old name
    from .benchmarks.mme import flat_scores

    return flat_scores(scores)


def _mode_of(records: list[dict]) -> str:
    modes = {(r.get("meta") or {}).get("mode") for r in records} - {None}
    return modes.pop() if len(modes) == 1 else "greedy"


def judgements_path(scored_out) -> str:
    """Where the judgements of a judged scoring are kept: ``<x>.judgements.jsonl`` beside
    ``<x>.scored.jsonl`` (not an output of the scoring job: it outlives a failed one)."""
    s = os.fspath(scored_out)
    return (s[: -len(".scored.jsonl")] if s.endswith(".scored.jsonl") else s) + ".judgements.jsonl"


def score_file(
    bench: dict,
    results: str | os.PathLike,
    scored_out,
    metrics_out,
    *,
    model: str,
    method: str,
    seed: int,
    protocol: str | None = None,
    mode: str | None = None,
) -> dict:
    """Score ``results``. ``protocol`` and ``mode`` default to ``bench["protocol"]`` /
    ``bench["mode"]`` (the workflow's score params carry them), else ``unified`` and the
    records' ``meta.mode`` (else greedy)."""
    from .metrics.judge import JudgeError, judgement_checkpoint

    from .validate import check_records

    records = read_jsonl(results)
    check_records(results, records, bench)  # one item twice, a label edited: refused, naming it
    kept = judgements_path(scored_out)
    try:
        with judgement_checkpoint(kept):  # a judged benchmark's replies, kept as they come
            scores, per_item = score_records(bench, records)
    except JudgeError as exc:
        raise JudgeError(
            f"{exc}; scoring stopped: every judgement made so far is kept in {kept} and the "
            f"rerun asks only the rest"
        ) from exc
    write_jsonl(scored_out, per_item)
    rows = metric_rows(
        {k: v for k, v in scores.items() if v is not None},
        benchmark=bench["name"],
        split=bench["split"],
        model=model,
        method=method,
        seed=int(seed),
    )
    protocol = protocol or bench.get("protocol") or "unified"
    mode = mode or bench.get("mode") or _mode_of(records)
    for row in rows:
        row.update(protocol=protocol, mode=mode)
    write_metrics(rows, metrics_out)
    return scores


def write_metrics(rows: list[dict] | pd.DataFrame, dest) -> None:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=METRIC_COLUMNS)
    for col, default in (("protocol", "unified"), ("mode", "greedy")):
        if col not in df.columns:  # parts written before these columns existed
            df[col] = default
    df = df[METRIC_COLUMNS]
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False)


def combine_metrics(parts: list[str | os.PathLike], dest) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in parts]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    for col, default in (("protocol", "unified"), ("mode", "greedy")):
        if col not in df.columns:
            df[col] = default
    df = df.sort_values(SORT_COLUMNS, kind="stable")
    write_metrics(df.reset_index(drop=True), dest)
    return df
