"""MME (Fu et al. 2023): yes/no questions, two per image, 14 subtasks; split ``all``.

Scorer: :mod:`vcdflow.metrics.mme` (official ``calculation.py`` parity).
"""

from __future__ import annotations

from pathlib import Path

from .base import SINGLE_SPLIT, Benchmark, Column


def _splits(cfg):
    return [SINGLE_SPLIT]


def _decode_inputs(bench):
    return {"root": bench["root"]}


def _score_inputs(bench):
    return {}


def _load_items(bench):
    from ..metrics import mme
    from ..runner import seeded_subset

    prepared = Path(bench["root"]) / "items.jsonl"  # written by rule prepare_mme (parquet source)
    if prepared.exists():
        from ..io import read_jsonl

        items = read_jsonl(prepared)
        wanted = bench.get("subtasks")
        items = [it for it in items if not wanted or it.get("subtask") in wanted]
    else:
        items = mme.load_items(bench["root"], subtasks=bench.get("subtasks"))
    n = bench.get("n_images")
    if not n:
        return items
    # per subtask, n images with both their questions (acc+ is per image), file order kept
    subtasks = list(dict.fromkeys(it["subtask"] for it in items))
    keep = {
        id(it)
        for sub in subtasks
        for it in seeded_subset(
            [it for it in items if it["subtask"] == sub],
            n,
            label=f"mme-subset-{sub}",
            group=lambda it: it["image_id"],
        )
    }
    return [it for it in items if id(it) in keep]


def flat_scores(scores: dict) -> dict:
    """MME rows live in split ``all``: ``existence`` (score), ``existence_acc``, ``existence_acc_plus``…"""
    out = {}
    for key, value in scores.items():
        subtask, _, metric = key.partition("/")
        out[subtask if metric in ("", "score") else f"{subtask}_{metric}"] = value
    return out


def _score(bench, records):
    from ..metrics import mme

    parser = bench.get("parser") or "official"
    return flat_scores(mme.score(records, parser=parser)), mme.score_items(records, parser=parser)


BENCHMARK = Benchmark(
    answers="yes_no",
    kind="mme",
    title="MME",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("hallucination", "Hallucination (/800)", "higher", None, "mcnemar"),
        Column("perception", "Perception (/2000)", "higher"),
        Column("cognition", "Cognition (/800)", "higher"),
    ),
    note="Scores on MME's scale (acc + acc+ per subtask, 0–200 each). Hallucination = existence + "
    "count + position + color. The McNemar test uses every scored question.",
    parsers=("official", "lmms"),
)
