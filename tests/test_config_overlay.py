"""Short user configs (vcdflow.overlay): a config names a base and states only what differs.

The workflow run of an overlay is tests/test_e2e_workflow.py::test_overlay_config_runs_end_to_end;
here the merge rules, the errors and the shipped overlays, without Snakemake."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from vcdflow import config as runs
from vcdflow.overlay import OverlayError, lay_over, read_config, resolve

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

# the README's example (docs/configs.md): one model, three methods, COCO POPE on the paper grid
README_OVERLAY = """\
base: paper
seeds: [42]
models: [llava-1.5-7b]
methods: [greedy, vcd, pai]
benchmarks:
  pope: {splits: [random, adversarial]}
"""


def write(path, text):
    path.write_text(text)
    return path


def resolved(path):
    """The merged config of ``path`` (checked by the schema and the run checks, as the workflow
    does, on a copy: the schema fills defaults in)."""
    cfg = resolve(read_config(path), path, ROOT)
    checked = copy.deepcopy(cfg)
    validate(checked, str(SCHEMA))
    runs.validate_config(checked)
    return cfg


def test_readme_overlay_is_one_model_three_methods_pope(tmp_path):
    path = write(tmp_path / "mine.yaml", README_OVERLAY)
    assert len(README_OVERLAY.splitlines()) <= 10
    cfg = resolved(path)
    paper = read_config(ROOT / "config" / "paper.yaml")
    assert (
        list(cfg["models"]) == ["llava-1.5-7b"]
        and cfg["models"]["llava-1.5-7b"] == paper["models"]["llava-1.5-7b"]
    )
    assert cfg["methods"] == {k: paper["methods"][k] for k in ("greedy", "vcd", "pai")}
    # the named entry is laid over the base's: splits replaced, every other POPE key kept
    assert cfg["benchmarks"] == {"pope": dict(paper["benchmarks"]["pope"], splits=["random", "adversarial"])}
    # everything the overlay does not name is the base's (protocols, devices, ConVis, report)
    for key in ("world", "protocol", "dtype", "group_results", "report"):
        assert cfg[key] == paper[key], key
    assert "base" not in cfg
    grid = list(runs.grid(cfg))
    assert {(g["benchmark"], g["split"], g["model"], g["seed"]) for g in grid} == {
        ("pope", s, "llava-1.5-7b", 42) for s in ("random", "adversarial")
    }
    assert {g["method"] for g in grid} == {"greedy", "vcd", "pai"}


def test_mappings_merge_recursively_lists_and_scalars_replace():
    base = {
        "seeds": [0, 1],
        "demo": {"train": {"steps": 10, "lr": 0.1}, "seed": 0},
        "benchmarks": {"pope": {"splits": ["a", "b"], "prompt": "p"}, "chair": {"n_images": 4}},
        "amber": {"spacy_model": "x"},
    }
    out = lay_over(
        base,
        {
            "seeds": [5],
            "demo": {"train": {"steps": 20}},
            "amber": {"spacy_model": None},
            "benchmarks": {"pope": {"splits": ["a"]}},
        },
    )
    assert out["seeds"] == [5]
    assert out["demo"] == {"train": {"steps": 20, "lr": 0.1}, "seed": 0}
    assert out["amber"] == {"spacy_model": None}  # null replaces (unsets) the base's value
    assert out["benchmarks"] == {"pope": {"splits": ["a"], "prompt": "p"}}  # chair not named: not run
    assert base["demo"]["train"]["steps"] == 10  # the base is not changed


def test_grid_keys_name_the_entries_and_new_entries_are_whole():
    base = {"methods": {"greedy": {"method": "greedy"}, "vcd": {"method": "vcd", "params": {"alpha": 1.0}}}}
    out = lay_over(base, {"methods": {"vcd": {"params": {"beta": 0.2}}, "mine": {"method": "icd"}}})
    assert out["methods"] == {
        "vcd": {"method": "vcd", "params": {"alpha": 1.0, "beta": 0.2}},
        "mine": {"method": "icd"},
    }
    assert lay_over(base, {"methods": ["vcd"]})["methods"] == {"vcd": base["methods"]["vcd"]}


def test_errors_name_the_file_and_the_key(tmp_path):
    bad = write(tmp_path / "bad.yaml", "base: paper\nmethods: [greedy, vcdd]\n")
    with pytest.raises(OverlayError, match=rf"config {bad}: methods: 'vcdd' is not an entry of .*paper.yaml"):
        resolve(read_config(bad), bad, ROOT)
    empty = write(tmp_path / "empty.yaml", "base: paper\nmodels: {mine: null}\n")
    with pytest.raises(OverlayError, match=rf"config {empty}: models.mine is empty"):
        resolve(read_config(empty), empty, ROOT)
    kind = write(tmp_path / "kind.yaml", "base: paper\nbenchmarks: pope\n")
    with pytest.raises(
        OverlayError, match=rf"config {kind}: benchmarks must be a mapping of entries or a list"
    ):
        resolve(read_config(kind), kind, ROOT)
    missing = write(tmp_path / "missing.yaml", "base: papre\n")
    with pytest.raises(
        OverlayError, match=rf"config {missing}: base 'papre' not found .*config names: .*paper"
    ):
        resolve(read_config(missing), missing, ROOT)
    write(tmp_path / "a.yaml", "base: b.yaml\nseeds: [1]\n")
    write(tmp_path / "b.yaml", "base: ./a.yaml\n")
    with pytest.raises(OverlayError, match=r"base cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        resolve(read_config(tmp_path / "a.yaml"), tmp_path / "a.yaml", ROOT)
    twice = write(tmp_path / "twice.yaml", "base: config\nseeds: [1]\n")
    write(tmp_path / "dup.yaml", "base: twice.yaml\nmethods: {vcd: {}, vcd: {}}\n")
    with pytest.raises(OverlayError, match=r"dup.yaml.*vcd"):
        resolve(read_config(tmp_path / "dup.yaml"), tmp_path / "dup.yaml", ROOT)
    write(tmp_path / "base_dup.yaml", "seeds: [1]\nseeds: [2]\n")
    with pytest.raises(OverlayError, match=r"base_dup.yaml.*seeds"):  # a base's duplicate key too
        resolve({"base": "base_dup.yaml"}, twice, ROOT)
    broken = write(tmp_path / "broken.yaml", "base: paper\nseeds: [1\n")
    with pytest.raises(OverlayError, match=rf"config {broken}: not valid YAML"):
        read_config(broken)


def test_base_chain_and_relative_paths(tmp_path):
    """A base may name its own base; a path is taken relative to the file that names it."""
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "mid.yaml", "base: paper\nseeds: [7]\nmethods: [greedy, vcd]\n")
    top = write(tmp_path / "top.yaml", "base: sub/mid.yaml\nmethods: [vcd]\ndtype: bfloat16\n")
    cfg = resolved(top)
    assert cfg["seeds"] == [7] and list(cfg["methods"]) == ["vcd"] and cfg["dtype"] == "bfloat16"
    assert len(cfg["models"]) == len(read_config(ROOT / "config" / "paper.yaml")["models"])


@pytest.mark.parametrize("name", ["demo-full", "demo-paper"])
def test_shipped_demo_overlays_are_short_and_valid(name):
    """config/demo-full.yaml and demo-paper.yaml are overlays of config/config.yaml: short, and
    their merged configs pass the schema (their DAGs: test_workflow_config.py)."""
    path = ROOT / "config" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["base"] == "config" and len(path.read_text().splitlines()) < 30
    cfg = resolved(path)
    demo = read_config(ROOT / "config" / "config.yaml")
    assert cfg["seeds"] == [0, 1] and cfg["models"] == demo["models"]
    assert set(cfg["methods"]) <= set(demo["methods"])
