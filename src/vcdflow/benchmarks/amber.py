"""AMBER (Wang et al. 2023): generative (CHAIR/Cover/Hal/Cog) and discriminative tasks.

Splits are the configured ``tasks``; scorer: :mod:`vcdflow.metrics.amber`.
"""

from __future__ import annotations

from types import MappingProxyType

from pathlib import Path

from .base import Benchmark, Column


def _splits(cfg):
    return list(cfg.get("tasks") or ["generative", "discriminative"])


def data_files(bench) -> dict:
    root = bench["root"]
    return {
        "annotations": f"{root}/data/annotations.json",
        "relation": f"{root}/data/relation.json",
        "safe_words": f"{root}/data/safe_words.txt",
    }


def _decode_inputs(bench):
    root = bench["root"]
    return {
        **data_files(bench),
        "query": f"{root}/data/query/query_{bench['split']}.json",
        "images": f"{root}/image",
    }


def _score_inputs(bench):
    inputs = {**data_files(bench), "nltk_data": bench["nltk_data"]}
    if bench.get("spacy_model"):
        inputs["spacy_model"] = bench["spacy_model"]
    return inputs


def _load_items(bench):
    from ..metrics import amber
    from ..runner import seeded_subset

    root = Path(bench["root"])
    items = amber.load_items(
        root / "data" / "query" / f"query_{bench['split']}.json",
        root / "data" / "annotations.json",
        root / "image",
    )
    return seeded_subset(items, bench.get("n_items"), label=f"amber-subset-{bench['split']}")


def _score(bench, records):
    from ..metrics import amber

    root = Path(bench["root"])
    similarity = amber.spacy_similarity(bench["spacy_model"]) if bench.get("spacy_model") else None
    evaluator = amber.AmberEvaluator(
        root / "data" / "annotations.json",
        root / "data" / "relation.json",
        root / "data" / "safe_words.txt",
        bench["nltk_data"],
        similarity=similarity,
    )
    parser = bench.get("parser") or "pope"
    return amber.score(records, evaluator, parser), amber.score_items(records, evaluator, parser)


BENCHMARK = Benchmark(
    answers=MappingProxyType({"generative": "caption", "discriminative": "yes_no"}),
    kind="amber",
    title="AMBER",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("amber_score", "AMBER score", "higher"),
        Column("chair", "CHAIR", "lower", "chair_i", "paired_bootstrap"),
        Column("hal", "Hal", "lower", "chair_s", "paired_bootstrap"),
        Column("cover", "Cover", "higher"),
        Column("accuracy", "Accuracy", "higher", "accuracy", "mcnemar"),
        Column("f1", "F1", "higher"),
    ),
    note="AMBER score = ½·(100 − CHAIR + F1); discriminative precision/recall/F1 treat “No” as "
    "the positive class.",
    parsers=("pope", "exact", "first_word"),
    # decide the scores only (the scorer's tagger data and similarity model) / only the grid
    extra={"score_keys": ("nltk_data", "spacy_model"), "grid_keys": ("tasks",)},
)
