"""metric_rows: long-table rows for results/metrics.csv."""

import math

import pandas as pd
import pytest

from vcdflow.metrics import COLUMNS, metric_rows

KEYS = dict(benchmark="mme", split="all", model="llava", method="vcd", seed=3)


def test_columns_exact():
    assert COLUMNS == ("benchmark", "split", "model", "method", "seed", "metric", "value")


def test_rows_and_split_override():
    rows = metric_rows({"existence/score": 190.0, "perception": 1500.5, "n": 4, "chair_i": math.nan}, **KEYS)
    assert [tuple(r) for r in rows] == [COLUMNS] * 4
    assert rows[0] == {
        "benchmark": "mme",
        "split": "existence",
        "model": "llava",
        "method": "vcd",
        "seed": 3,
        "metric": "score",
        "value": 190.0,
    }
    assert rows[1]["split"] == "all" and rows[1]["metric"] == "perception" and rows[1]["value"] == 1500.5
    assert isinstance(rows[2]["value"], float) and rows[2]["value"] == 4.0
    assert math.isnan(rows[3]["value"])
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    assert list(df.columns) == list(COLUMNS) and len(df) == 4


def test_bad_keys_and_values():
    with pytest.raises(TypeError, match="missing \\['seed'\\]"):
        metric_rows({"f1": 1.0}, benchmark="pope", split="random", model="m", method="greedy")
    with pytest.raises(TypeError, match="unexpected \\['extra'\\]"):
        metric_rows({"f1": 1.0}, extra=1, **KEYS)
    with pytest.raises(TypeError, match="metric 'f1'"):
        metric_rows({"f1": "high"}, **KEYS)
