"""Provenance helpers of the report."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

from vcdflow.io import config_hash
from vcdflow.report.provenance import collect_provenance, input_checksums, result_dates, sidecar_hardware


def test_collect_provenance(tmp_path):
    cfg = {"seeds": [0, 1], "methods": {"vcd": {"params": {"alpha": 1.0}}}}
    prov = collect_provenance(config=cfg, repo=tmp_path, extra={"decode_hardware": ["NVIDIA H200"]})
    assert prov["config"] == cfg and prov["config_hash"] == config_hash(cfg)
    assert prov["packages"]["numpy"] == metadata.version("numpy")
    assert prov["git"]["commit"].startswith("unknown")  # tmp_path is not a checkout
    assert prov["hardware"]["cpu_count"] >= 1
    assert prov["generated_at"].endswith("+00:00")
    assert prov["decode_hardware"] == ["NVIDIA H200"]
    json.dumps(prov)  # JSON-able


def test_input_checksums_and_dates(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_bytes(b'{"x": 1}\n')
    b = tmp_path / "b.csv"
    b.write_bytes(b"h\n1\n")
    rows = input_checksums([a, b, a, tmp_path / "missing.csv"])
    assert [r["path"] for r in rows] == [str(a), str(b)]  # de-duplicated, missing skipped
    assert rows[0]["md5"] == hashlib.md5(b'{"x": 1}\n').hexdigest() and rows[0]["bytes"] == 9
    dates = result_dates(rows)
    assert dates["first"] <= dates["last"]


def test_sidecar_hardware(tmp_path):
    r = tmp_path / "seed0.jsonl"
    r.write_text("")
    (tmp_path / "seed0.meta.json").write_text(json.dumps({"hardware": "1x NVIDIA H200", "config_hash": "x"}))
    r1 = tmp_path / "seed1.jsonl"
    (tmp_path / "seed1.meta.json").write_text(json.dumps({"device": "cpu"}))
    assert sidecar_hardware([r, r1, tmp_path / "seed2.jsonl"]) == ["1x NVIDIA H200", "cpu"]
