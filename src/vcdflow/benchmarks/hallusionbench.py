"""HallusionBench (Guan et al., CVPR 2024): yes/no questions on original and edited figures
(and text-only VS questions); aAcc / fAcc / qAcc. Split ``all``; scorer
:mod:`vcdflow.metrics.hallusionbench` (official ``utils.py``/``evaluation.py`` logic).

Config entry (``benchmarks.hallusionbench``): ``questions`` (``HallusionBench.json``, rule
``download_hallusionbench``), ``images`` (the folder the JSON's ``./hallusion_bench/...`` file
names are relative to, default the JSON's folder), ``parser`` — ``yesno`` (default: lmms-eval's
rule-based ``"yes" in answer`` correctness, ``lmms_eval/tasks/hallusion_bench/evaluate_hb.py:93-98``)
or ``gpt`` (the official GPT correctness check, ``tianyi-lab/HallusionBench utils.py:26-73``;
needs ``judge``); ``n_items`` (seeded subsample of question groups), ``prompt`` (default
``{question}``: the official release leaves generation to the user, README step 4; lmms-eval's
``hb_doc_to_text`` sends the bare question with empty pre/post prompts,
``lmms_eval/tasks/hallusion_bench/evaluate_hb.py:22-27`` + ``hallusion_bench_image.yaml:13-16``,
lmms-eval@75571cf). Text-only questions (``visual_input`` "0") are decoded without an image.
"""

from __future__ import annotations

from pathlib import Path

from .base import SINGLE_SPLIT, Benchmark, Column
from .judged import SCORE_KEYS, judge_config, workers


def _splits(cfg):
    return [SINGLE_SPLIT]


def _image_root(bench):
    return bench.get("images") or str(Path(bench["questions"]).parent)


def _decode_inputs(bench):
    # the release's figures live in <root>/hallusion_bench/ (rule download_hallusionbench's output)
    images = bench.get("images") or str(Path(bench["questions"]).parent / "hallusion_bench")
    return {"questions": bench["questions"], "images": images}


def _score_inputs(bench):
    return {"questions": bench["questions"]}


def _items(bench):
    from ..metrics import hallusionbench

    return hallusionbench.load_items(bench["questions"], _image_root(bench))


def _load_items(bench):
    from ..runner import seeded_subset

    group = lambda it: "_".join(it[k] for k in ("category", "subcategory", "set_id", "question_id"))  # noqa: E731
    return seeded_subset(_items(bench), bench.get("n_items"), label="hallusionbench-subset", group=group)


def _score(bench, records):
    from ..metrics import hallusionbench as hb

    parser = bench.get("parser") or "yesno"
    items = _items(bench)
    if parser == "gpt":
        records = hb.judge_items(
            records, items, judge_config(bench, why="parser 'gpt'"), workers=workers(bench)
        )
        return hb.score(records, None, "gpt"), hb.score_items(records, None, "gpt")
    return hb.score(records, items, parser), hb.score_items(records, items, parser)


BENCHMARK = Benchmark(
    answers="yes_no",
    kind="hallusionbench",
    title="HallusionBench",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("aAcc", "aAcc (question)", "higher", "accuracy", "mcnemar"),
        Column("fAcc", "fAcc (figure)", "higher"),
        Column("qAcc", "qAcc (question pair)", "higher"),
        Column("easy_aAcc", "Easy", "higher"),
        Column("hard_aAcc", "Hard", "higher"),
    ),
    note="Rates in %. Correctness by lmms-eval's rule (\"yes\" in the answer) unless parser 'gpt' "
    "(the official GPT check; the judge is named beside the table). fAcc leaves out VS "
    "figure 0 (no image), as the official get_eval_fig.",
    parsers=("yesno", "gpt"),
    extra={
        "score_keys": SCORE_KEYS,
        "judged": "parser=gpt",
        "max_new_tokens": 128,
    },  # lmms-eval hallusion_bench_image.yaml:18
)
