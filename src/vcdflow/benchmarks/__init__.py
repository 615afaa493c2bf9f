"""The benchmark registry: ``BENCHMARKS[kind]`` → a frozen :class:`Benchmark` (one module each).

A config key names a benchmark: ``pope``, ``chair``, ``mme``, ``amber``, ``mmvp``,
``hallusionbench``, ``llavabench``, ``mmhal``, ``leading_pope``, or ``<kind>_<name>`` for a further
dataset of a kind (``pope_aokvqa``, ``pope_gqa``, ``leading_pope_gqa``). :func:`kind_of` answers "which
benchmark is this key" — the one place that knows ``pope_gqa`` is POPE. Add a benchmark: write
``vcdflow/benchmarks/<kind>.py`` defining ``BENCHMARK = Benchmark(...)``, list it below, and give
its config entry a schema (``workflow/schemas/config.schema.yaml``).
"""

from __future__ import annotations

import re

from . import amber, chair, hallusionbench, leading_pope, llavabench, mme, mmhal, mmvp, pope
from .base import SINGLE_SPLIT, Benchmark, Column
from .calibrated_scores import mme_rows, pope_rows, with_calibration

# POPE and MME also score debias results calibrated (extra rows; see calibrated_scores)
BENCHMARKS: dict[str, Benchmark] = {
    b.kind: b
    for b in (
        with_calibration(pope.BENCHMARK, pope_rows),
        chair.BENCHMARK,
        with_calibration(mme.BENCHMARK, mme_rows),
        amber.BENCHMARK,
        mmvp.BENCHMARK,
        hallusionbench.BENCHMARK,
        llavabench.BENCHMARK,
        mmhal.BENCHMARK,
        leading_pope.BENCHMARK,
    )
}

#: kinds that take further datasets as ``<kind>_<name>`` keys (longest kind first)
MULTI_DATASET = ("leading_pope", "pope")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def kind_of(name: str) -> str:
    """The benchmark kind of a config key: ``pope_gqa`` → ``pope``; ``leading_pope_gqa`` →
    ``leading_pope``; ``chair`` → ``chair``. ``ValueError`` naming the key for anything else."""
    if name in BENCHMARKS:
        return name
    for kind in MULTI_DATASET:
        if name.startswith(kind + "_") and _NAME.match(name[len(kind) + 1 :]):
            return kind
    raise ValueError(
        f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)} "
        f"or {'/'.join(k + '_<name>' for k in MULTI_DATASET)}"
    )


def get_benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` of a config key (or kind)."""
    return BENCHMARKS[kind_of(name)]


def title_of(name: str) -> str:
    """Table title: ``POPE``, or ``POPE (GQA)`` for ``pope_gqa``."""
    kind = kind_of(name)
    title = BENCHMARKS[kind].title
    return title if name == kind else f"{title} ({name[len(kind) + 1 :].upper()})"


__all__ = ["BENCHMARKS", "Benchmark", "Column", "SINGLE_SPLIT", "get_benchmark", "kind_of", "title_of"]
