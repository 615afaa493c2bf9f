"""Score one result file: per-item outcomes (for paired tests) and long-format metric rows."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .io import atomic_path, read_jsonl, write_jsonl
from .metrics import COLUMNS, metric_rows

METRIC_COLUMNS = list(COLUMNS)


def score_records(bench: dict, records: list[dict]) -> tuple[dict, list[dict]]:
    """Return ``(scores, per_item)`` for one benchmark split's records (``kind`` picks the
    scorer for ``pope_<dataset>`` benchmarks; it defaults to ``name``)."""
    name = bench.get("kind", bench["name"])
    if name == "pope":
        from .metrics import pope

        parser = bench.get("parser", "official")
        return pope.score(records, parser=parser), pope.score_items(records, parser=parser)
    if name == "chair":
        from .metrics import chair

        evaluator = chair.ChairEvaluator(
            bench["synonyms"], bench["nltk_data"], instances=bench["instances"], captions=bench["captions"]
        )
        return chair.score(records, evaluator), chair.score_items(records, evaluator)
    if name == "mme":
        from .metrics import mme

        parser = bench.get("parser", "official")
        return _flat_mme(mme.score(records, parser=parser)), mme.score_items(records, parser=parser)
    if name == "amber":
        from .metrics import amber

        root = Path(bench["root"])
        similarity = amber.spacy_similarity(bench["spacy_model"]) if bench.get("spacy_model") else None
        evaluator = amber.AmberEvaluator(
            root / "data" / "annotations.json", root / "data" / "relation.json",
            root / "data" / "safe_words.txt", bench["nltk_data"], similarity=similarity,
        )
        parser = bench.get("parser", "pope")
        return amber.score(records, evaluator, parser), amber.score_items(records, evaluator, parser)
    raise ValueError(f"unknown benchmark {name!r}; valid: pope, chair, mme, amber")


def _flat_mme(scores: dict) -> dict:
    """MME rows live in split ``all``: ``existence`` (score), ``existence_acc``, ``existence_acc_plus``…"""
    out = {}
    for key, value in scores.items():
        subtask, _, metric = key.partition("/")
        out[subtask if metric in ("", "score") else f"{subtask}_{metric}"] = value
    return out


def score_file(bench: dict, results: str | os.PathLike, scored_out, metrics_out, *, model: str, method: str, seed: int) -> dict:
    records = read_jsonl(results)
    scores, per_item = score_records(bench, records)
    write_jsonl(scored_out, per_item)
    rows = metric_rows(
        {k: v for k, v in scores.items() if v is not None},
        benchmark=bench["name"], split=bench["split"], model=model, method=method, seed=int(seed),
    )
    write_metrics(rows, metrics_out)
    return scores


def write_metrics(rows: list[dict] | pd.DataFrame, dest) -> None:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=METRIC_COLUMNS)
    df = df[METRIC_COLUMNS]
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False)


def combine_metrics(parts: list[str | os.PathLike], dest) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in parts]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    df = df.sort_values(["benchmark", "split", "model", "method", "seed", "metric"], kind="stable")
    write_metrics(df.reset_index(drop=True), dest)
    return df
