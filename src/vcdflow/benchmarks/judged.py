"""What the judged benchmarks share: the judge of a benchmark entry and the judge label rows.

A judged benchmark's config entry names its judge (``benchmarks.<name>.judge``, see
:func:`vcdflow.metrics.judge.make_judge`): an OpenAI-compatible endpoint
``{kind: openai, url: ..., model: ..., api_key_env: OPENAI_API_KEY}`` (the key is read only from
that environment variable, never from the config) or a local model ``{kind: local, model: DIR}``.
Every judged per-item row carries ``judge`` (``"<kind>:<model>"``); the report writes that label
beside every judged number (:func:`judge_labels`).
"""

from __future__ import annotations

from typing import Any, Mapping

#: entry keys that decide only the scores, not the decoded records (``Benchmark.extra["score_keys"]``):
#: a config hook may keep them out of the decode jobs' params so a new judge never re-decodes
SCORE_KEYS = ("judge", "judge_workers")


def judge_config(bench: Mapping[str, Any], *, why: str) -> Mapping[str, Any]:
    """The ``judge`` mapping of a benchmark slice; ``ValueError`` naming the config key if absent."""
    judge = bench.get("judge")
    if not judge:
        raise ValueError(
            f"config benchmarks.{bench.get('name', '?')}.judge: {why} needs a judge "
            "({kind: openai, url: ..., model: ..., api_key_env: VAR} or {kind: local, model: DIR})"
        )
    return judge


def workers(bench: Mapping[str, Any]) -> int:
    return int(bench.get("judge_workers") or 1)


def judge_labels(per_item) -> str:
    """The judge label(s) of scored per-item rows (``", "``-joined, first-seen order; "" if none)."""
    from ..metrics.judge import judged_by

    return judged_by(per_item)


def uses_judge(name: str, entry: Mapping[str, Any]) -> bool:
    """True when the benchmark ``name``'s config entry scores with its judge: the registry entry
    says ``extra["judged"]`` ``always`` or ``parser=<p>`` (judged only with that parser)."""
    from . import get_benchmark

    spec = get_benchmark(name)
    judged = str(spec.extra.get("judged") or "")
    if judged == "always":
        return True
    if judged.startswith("parser="):
        return (entry.get("parser") or spec.parsers[0]) == judged.split("=", 1)[1]
    return False


def check_judge_keys(config: Mapping[str, Any]) -> None:
    """Before any job: every judge a configured benchmark will ask has its API key variable set
    (:func:`vcdflow.metrics.judge.check_key_env`), so a missing key does not surface only at
    scoring, after all the decoding."""
    from ..metrics.judge import check_key_env

    for name, entry in (config.get("benchmarks") or {}).items():
        entry = entry or {}
        if entry.get("judge") and uses_judge(name, entry):
            check_key_env(entry["judge"], f"benchmarks.{name}.judge")
