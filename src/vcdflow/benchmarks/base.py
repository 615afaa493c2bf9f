"""The benchmark protocol: what a benchmark declares (one module per benchmark, like METHODS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

SINGLE_SPLIT = "all"  # split name of benchmarks without splits (CHAIR, MME)


@dataclass(frozen=True)
class Column:
    """A headline metric of a benchmark table."""

    metric: str
    title: str
    better: str = ""  # "higher" | "lower" | "" (no direction, e.g. yes-ratio)
    item_stat: str | None = None  # per-item statistic that re-derives the metric (report ITEM_STATS)
    test: str | None = None  # "mcnemar" (on `correct`) | "paired_bootstrap" (on item_stat)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark kind. ``cfg`` below is the benchmark's config entry; ``bench`` the slice of
    one split that a job gets (``name``, ``kind``, ``split`` and the entry's keys, ``{split}``
    filled in; see :func:`vcdflow.config.bench_slice`).

    * ``splits(cfg) -> list[str]``: the splits it is decoded and scored on;
    * ``decode_inputs(bench) -> {key: path}``: files a decode job reads (``images`` keys are image
      folders);
    * ``score_inputs(bench) -> {key: path}``: ground truth a scorer reads beside the results;
    * ``load_items(bench) -> list[dict]``: the items of one split, in a fixed order;
    * ``score(bench, records) -> (scores, per_item)``: metric values and per-item outcomes;
    * ``columns``: headline metrics and their better direction (the report's tables);
    * ``parsers``: valid answer parsers (the first is the default), exactly the names the scorer
      accepts; a protocol's or config's parser outside them fails when the config is parsed
      (:func:`vcdflow.config.run_parser`);
    * ``extra["score_keys"]``: entry keys that decide only the scores (the judge, CHAIR's and
      AMBER's word lists and models) and ``extra["grid_keys"]`` those that decide only the grid
      (the list of splits): both are kept out of the decode jobs' run record, so changing them
      re-scores and never re-decodes (:class:`vcdflow.config.RunSpec` ``scoring``);
    * ``answers``: what an item asks for — ``"yes_no"``, ``"caption"``, ``"choice"`` or ``"open"``
      — one value, or split -> value (AMBER: generative captions, discriminative yes/no); a method
      that declares ``answer_kinds`` (PBA: yes/no only) is left out of the other splits' grid
      (:func:`vcdflow.config.applies`).
    """

    kind: str
    title: str
    splits: Callable[[Mapping[str, Any]], list[str]]
    decode_inputs: Callable[[Mapping[str, Any]], dict]
    score_inputs: Callable[[Mapping[str, Any]], dict]
    load_items: Callable[[Mapping[str, Any]], list]
    score: Callable[[Mapping[str, Any], list], tuple[dict, list]]
    columns: tuple[Column, ...] = ()
    note: str = ""
    parsers: tuple[str, ...] = ()
    default_prompt: str = "{question}"
    extra: Mapping[str, Any] = field(default_factory=dict)
    answers: str | Mapping[str, str] = "open"

    def answer_kind(self, split: str) -> str:
        """What the items of ``split`` ask for (see ``answers``)."""
        if isinstance(self.answers, str):
            return self.answers
        return self.answers.get(split, "open")

    def headline(self) -> dict[str, str]:
        """metric -> better direction ("higher" / "lower" / "") of the headline metrics."""
        return {c.metric: c.better for c in self.columns}
