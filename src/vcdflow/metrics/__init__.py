"""Benchmark item loaders and official-parity scorers: POPE, CHAIR, MME, AMBER.

Each module offers ``load_items(...) -> list[dict]`` (items for decoding, keys ``item_id``,
``image``, ``image_path``, ``image_id``, ``question_id``, ``question``, ``label`` plus
benchmark extras) and ``score(records, ...) -> dict[str, float]`` /
``score_items(records, ...) -> list[dict]`` over result-file records
(``{"item_id", "answer", "label", "error", ...}``; records with ``error`` set are excluded
and counted in ``n_errors``).

Units (docs/design.md): rates in percent (0-100), MME scores on their 0-200 scale, counts
as plain numbers. :func:`metric_rows` turns a score dict into rows of the long metrics table
``benchmark,split,model,method,seed,metric,value``.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["COLUMNS", "metric_rows"]

#: Columns of ``results/metrics.csv``, in order.
COLUMNS = ("benchmark", "split", "model", "method", "seed", "metric", "value")


def metric_rows(scores: Mapping[str, float], **keys: Any) -> list[dict]:
    """Long-table rows from a score dict.

    ``keys`` must give ``benchmark``, ``split``, ``model``, ``method`` and ``seed``. A score
    named ``"<split>/<metric>"`` (MME subtasks, AMBER dimensions) becomes a row of that split
    with metric ``<metric>``; any other name is a row of ``keys["split"]``. Values are floats
    (NaN kept); rows come in the score dict's order, each with exactly :data:`COLUMNS`.

    >>> metric_rows({"f1": 85.0, "existence/score": 190.0}, benchmark="mme", split="all",
    ...             model="m", method="greedy", seed=0)[1]["split"]
    'existence'
    """
    missing = [c for c in COLUMNS[:5] if c not in keys]
    extra = sorted(set(keys) - set(COLUMNS[:5]))
    if missing or extra:
        raise TypeError(f"metric_rows needs exactly {COLUMNS[:5]}; missing {missing}, unexpected {extra}")
    rows = []
    for name, value in scores.items():
        split, metric = name.split("/", 1) if "/" in name else (keys["split"], name)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {name!r}: value {value!r} is not a number") from None
        rows.append(
            {
                "benchmark": keys["benchmark"],
                "split": split,
                "model": keys["model"],
                "method": keys["method"],
                "seed": keys["seed"],
                "metric": metric,
                "value": v,
            }
        )
    return rows
