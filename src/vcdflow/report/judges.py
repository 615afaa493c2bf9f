"""Which judge produced which judged number: the ``judge`` labels of the scored per-item files.

The judged benchmarks (LLaVA-Bench, MMHal-Bench; MMVP and HallusionBench with their GPT
graders) write ``judge`` = ``"<kind>:<model>"`` on every per-item row
(:func:`vcdflow.metrics.judge.judge_label`); the report shows them beside the benchmark's tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping


def judges_of(scored_files: Mapping | None, bench: str) -> list[dict]:
    """``[{"label": "openai:gpt-4-0314", "runs": "model/method, ..."}]`` for one benchmark, in
    first-seen order; ``[]`` when nothing of it was judged (or no scored files are given)."""
    found: dict[str, set] = {}
    for key, path in (scored_files or {}).items():
        if key[0] != bench or not Path(path).is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                label = json.loads(line).get("judge")
                if label:
                    found.setdefault(label, set()).add(f"{key[2]}/{key[3]}")
    return [{"label": label, "runs": ", ".join(sorted(runs))} for label, runs in found.items()]
