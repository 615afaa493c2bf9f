"""MMVP (Tong et al., CVPR 2024): 150 image pairs, 300 two-option questions; a pair counts only
when both answers are right. Split ``all``; scorer :mod:`vcdflow.metrics.mmvp` (lmms-eval's
ground-truth fixes of Index 99/100 and 279/280 by default, ``fixes: null`` keeps the release's).

Config entry (``benchmarks.mmvp``): ``root`` (the ``MMVP/MMVP`` folder: ``Questions.csv`` +
``MMVP Images/``; rule ``download_mmvp``), ``question_form`` — ``official`` (default: ``Question
+ " " + Options``, ``tsb0601/MMVP scripts/evaluate_mllm.py:56``) or ``lmms`` (lmms-eval's
``Question\\nA. ..\\nB. ..\\nAnswer with the option's letter from the given choices directly.``,
``lmms_eval/tasks/mmvp/utils.py:93-123`` + ``mmvp.yaml:26``); ``parser`` — ``lmms`` (default,
rule-based letter extraction) or ``gpt`` (the paper's grader ``scripts/gpt_grader.py``: needs
``judge``); ``n_items`` (a seeded subsample of *pairs*), ``prompt`` (default ``{question}``: the
official script sends the question as is, evaluate_mllm.py:56-62), ``max_new_tokens``.
"""

from __future__ import annotations

from .base import SINGLE_SPLIT, Benchmark, Column
from .judged import SCORE_KEYS, judge_config, workers


def _splits(cfg):
    return [SINGLE_SPLIT]


def _decode_inputs(bench):
    return {"root": bench["root"]}


def _score_inputs(bench):
    return {"root": bench["root"]}


def _items(bench):
    from ..metrics import mmvp

    fixes = bench.get("fixes", "lmms")
    return mmvp.load_items(bench["root"], fixes=fixes)


def _load_items(bench):
    from ..runner import seeded_subset

    form = bench.get("question_form") or "official"
    if form not in ("official", "lmms"):
        raise ValueError(
            f"config benchmarks.{bench.get('name', 'mmvp')}.question_form: 'official' or 'lmms', got {form!r}"
        )
    items = _items(bench)
    if form == "lmms":
        items = [{**it, "question": it["question_lmms"]} for it in items]
    return seeded_subset(items, bench.get("n_items"), label="mmvp-subset", group=lambda it: it["pair_index"])


def _score(bench, records):
    from ..metrics import mmvp

    parser = bench.get("parser") or "lmms"
    items = _items(bench)
    if parser == "gpt":
        records = mmvp.judge_items(
            records, items, judge_config(bench, why="parser 'gpt'"), workers=workers(bench)
        )
        return mmvp.score(records, None, parser), mmvp.score_items(records, None, parser)
    return mmvp.score(records, items, parser), mmvp.score_items(records, items, parser)


BENCHMARK = Benchmark(
    answers="choice",
    kind="mmvp",
    title="MMVP",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("pair_accuracy", "Pair accuracy", "higher"),
        Column("accuracy", "Question accuracy", "higher", "accuracy", "mcnemar"),
    ),
    note="Rates in %. A pair counts only when both of its questions are right. Ground truth with "
    "lmms-eval's fixes (Index 99/100, 279/280) unless fixes: null. With parser 'gpt' the "
    "judge model is named beside the table.",
    parsers=("lmms", "gpt"),
    extra={"score_keys": SCORE_KEYS, "judged": "parser=gpt", "max_new_tokens": 1024},  # evaluate_mllm.py:94
)
