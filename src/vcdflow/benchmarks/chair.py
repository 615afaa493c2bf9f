"""CHAIR (Rohrbach et al., EMNLP 2018) on COCO captions: hallucinated objects in free captions.

One split (``all``); scorer: :mod:`vcdflow.metrics.chair`.
"""

from __future__ import annotations

from .base import SINGLE_SPLIT, Benchmark, Column


def _splits(cfg):
    return [SINGLE_SPLIT]


def _decode_inputs(bench):
    inputs = {"instances": bench["instances"], "captions": bench["captions"], "images": bench["images"]}
    if bench.get("image_ids"):
        inputs["image_ids"] = bench["image_ids"]
    return inputs


def _score_inputs(bench):
    return {k: bench[k] for k in ("instances", "captions", "synonyms", "nltk_data")}


def _load_items(bench):
    from ..data.chair_subsets import read_released
    from ..metrics import chair

    released = bench.get("image_id_list")  # a paper protocol's released list (vcdflow.data.chair_subsets)
    return chair.load_items(
        bench["captions"],
        bench["images"],
        n=bench.get("n_images", 500),
        seed=bench.get("subset_seed", 0),
        id_list=read_released(released) if released else bench.get("image_ids"),
        prompt=bench.get("prompt") or chair.DEFAULT_PROMPT,
        rule=bench.get("subset_rule", "sample"),
    )


def _score(bench, records):
    from ..metrics import chair

    evaluator = chair.ChairEvaluator(
        bench["synonyms"], bench["nltk_data"], instances=bench["instances"], captions=bench["captions"]
    )
    return chair.score(records, evaluator), chair.score_items(records, evaluator)


BENCHMARK = Benchmark(
    answers="caption",
    kind="chair",
    title="CHAIR",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("chair_s", "CHAIR_s", "lower", "chair_s", "paired_bootstrap"),
        Column("chair_i", "CHAIR_i", "lower", "chair_i", "paired_bootstrap"),
        Column("recall", "Recall", "higher"),
        Column("length", "Length", ""),
    ),
    note="CHAIR_s = % captions with ≥ 1 hallucinated object; CHAIR_i = % hallucinated object "
    "mentions (micro average). Lower is better.",
    default_prompt="Please describe this image in detail.",
    extra={"score_keys": ("synonyms", "nltk_data")},  # the scorer's word lists: decide scores only
)
