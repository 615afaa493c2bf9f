"""The run contract (vcdflow.config), the benchmark registry, protocol grids, sidecar merging."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from vcdflow import config as runs
from vcdflow.benchmarks import BENCHMARKS, get_benchmark, kind_of, title_of
from vcdflow.runner import merge_shards, result_hash

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
PAPER = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())


def cell(cfg, g):
    return runs.build_run(
        cfg, **{k: g[k] for k in ("benchmark", "split", "model", "method", "seed", "protocol")}
    )


def test_execution_settings_stay_out_of_the_result():
    cfg = copy.deepcopy(DEMO)
    g = next(x for x in runs.grid(cfg) if x["method"] == "vcd")
    spec = cell(cfg, g).as_dict()
    text = json.dumps(spec)
    for key in ("device", "threads", "batch_size", "gpu_lock_dir", "n_shards", "compile"):
        assert f'"{key}"' not in text, key
    other = copy.deepcopy(cfg)
    other.update(threads=7, batch_size=3, device="cuda", gpu_lock_dir="/x", n_shards=5, compile="on")
    other["models"]["demo"]["batch_size"] = 2
    assert cell(other, g).as_dict() == spec
    a = runs.job_run(spec, runs.execution(cfg, model="demo", benchmark="pope"))
    b = runs.job_run(
        cell(other, g).as_dict(), runs.execution(other, model="demo", benchmark="pope", threads=9)
    )
    assert (a["threads"], a["model"]["batch_size"], b["threads"], b["model"]["batch_size"]) == (1, 16, 9, 2)
    assert a["device"] == "auto" and b["device"] == "cuda" and b["execution"]["n_shards"] == 5
    assert (a["execution"]["compile"], b["execution"]["compile"]) == ("off", "on")
    assert result_hash(a) == result_hash(b)
    # ... while what decides the records does change it
    third = copy.deepcopy(cfg)
    third["methods"]["vcd"]["params"]["alpha"] = 0.5
    assert result_hash(runs.job_run(cell(third, g).as_dict(), runs.execution(third))) != result_hash(a)


def test_cli_builds_the_same_run_as_the_workflow():
    """vcdflow decode's run (pope_file_run) = the workflow's build_run for the same settings."""
    cfg = {
        "seeds": [3],
        "benchmarks": {
            "pope": {
                "splits": ["random"],
                "questions": "q_{split}.json",
                "images": "img",
                "prompt": "{question} One word.",
                "max_new_tokens": 4,
            }
        },
        "models": {"m": {"path": "models/m", "revision": "local", "dtype": "float32", "family": "llava"}},
        "methods": {"vcd": {"method": "vcd", "params": {"alpha": 0.5}, "temperature": 1.0, "top_p": 1.0}},
    }
    spec = runs.build_run(cfg, benchmark="pope", split="random", model="m", method="vcd", seed=3).as_dict()
    cli = runs.pope_file_run(
        questions="q_random.json",
        images="img",
        model="models/m",
        method="vcd",
        split="random",
        params={"alpha": 0.5},
        seed=3,
        prompt="{question} One word.",
        max_new_tokens=4,
        temperature=1.0,
        top_p=1.0,
        threads=4,
        device="cpu",
        batch_size=2,
        family="llava",
    )
    assert result_hash(cli) == result_hash(runs.job_run(spec, runs.execution(cfg)))
    with pytest.raises(runs.ConfigError, match="unknown parameter 'alhpa' for method 'vcd'"):
        runs.pope_file_run(
            questions="q.json",
            images="i",
            model="m",
            method="vcd",
            split="random",
            params={"alhpa": 1},
            family="llava",
        )
    with pytest.raises(runs.ConfigError, match="config models.m.family: auto needs the model folder"):
        runs.pope_file_run(
            questions="q.json", images="i", model=str(Path("nowhere") / "m"), method="vcd", split="random"
        )


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (
            lambda c: c["methods"]["vcd"].update(method="vdc"),
            "config methods.vcd.method: unknown method 'vdc'; valid: ",
        ),
        (
            lambda c: c["methods"]["vcd"]["params"].update(alhpa=1),
            "config methods.vcd.params: unknown parameter 'alhpa'",
        ),
        (
            lambda c: c["methods"]["vcd"]["params"].update(alpha="abc"),
            "parameter 'alpha' of method 'vcd' must be number, got 'abc' (str)",
        ),
        (
            lambda c: c["methods"]["vcd"]["params"].update(noise_step=2.5),
            "parameter 'noise_step' of method 'vcd' must be int, got 2.5 (float)",
        ),
        (
            lambda c: c["methods"]["vcd"].update(protocol=["unified", "papr"]),
            "config methods.vcd.protocol: unknown protocol 'papr'",
        ),
        (lambda c: c.update(protocol="vdc"), "config protocol: unknown protocol 'vdc'"),
    ],
)
def test_validate_config_names_the_key(mutate, needle):
    cfg = copy.deepcopy(DEMO)
    mutate(cfg)
    with pytest.raises(runs.ConfigError) as err:
        runs.validate_config(cfg)
    assert needle in str(err.value)


def test_typed_params_accept_what_the_defaults_allow():
    from vcdflow.decoding import METHODS

    assert (
        METHODS["vcd"].resolve({"alpha": 1, "noise_step": 500.0})["alpha"] == 1
    )  # int for a float, 500.0 for an int
    with pytest.raises(ValueError, match="parameter 'alpha' of method 'vcd' must be number, got True"):
        METHODS["vcd"].resolve({"alpha": True})
    with pytest.raises(ValueError, match="parameter 'position' of method 'icd' must be str, got 3"):
        METHODS["icd"].resolve({"position": 3})
    assert METHODS["ritual"].resolve({"transform": None})["transform"] is None  # a None default: anything


def test_paper_config_runs_every_method_under_unified_and_its_paper():
    from vcdflow.protocols import PAPER_OF

    grid = list(runs.grid(PAPER))
    pairs = {(g["method"], g["protocol"], g["mode"]) for g in grid}
    labels = set(PAPER["methods"])
    assert {l for l, p, _ in pairs if p == "unified"} == labels
    for label in labels:
        engine = runs.method_entry(PAPER, label)["method"]
        if engine in ("greedy", "sample"):
            continue
        under = {p for l, p, _ in pairs if l == label and p != "unified"}
        # its own paper protocol, unless another label decodes exactly the same under it (vcd_sample = vcd)
        assert under in ({PAPER_OF[engine]}, set()), label
        assert any(
            p == PAPER_OF[engine] and runs.method_entry(PAPER, l)["method"] == engine for l, p, _ in pairs
        )
    # every paper comparison has its own baseline: same protocol, same mode
    for label, protocol, mode in pairs:
        if protocol != "unified":
            assert (mode, protocol, mode) in pairs, (label, protocol, mode)
    # each result once, with one path
    paths = ["{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}".format(**g) for g in grid]
    assert len(paths) == len(set(paths))


def test_paper_protocol_values_win_and_unified_keeps_the_config():
    cfg = {
        "seeds": [0],
        "benchmarks": {
            "pope": {
                "questions": "q_{split}.json",
                "images": "i",
                "splits": ["random"],
                "prompt": "{question} Mine.",
                "max_new_tokens": 2,
            }
        },
        "models": {"m": {"path": "m", "family": "llava"}},
        "methods": {
            "vcd": {"method": "vcd", "params": {"alpha": 0.25}, "protocol": ["unified", "paper"]},
            "sample": {"method": "sample", "do_sample": True, "protocol": "paper"},
        },
    }
    assert runs.label_protocols(cfg) == [("vcd", "unified"), ("vcd", "vcd"), ("sample", "vcd")]
    uni = runs.build_run(
        cfg, benchmark="pope", split="random", model="m", method="vcd", seed=0, protocol="unified"
    )
    assert uni.benchmark["prompt"] == "{question} Mine." and uni.benchmark["max_new_tokens"] == 2
    assert uni.method["params"]["alpha"] == 0.25 and uni.method["mode"] == "greedy"
    pap = runs.build_run(
        cfg, benchmark="pope", split="random", model="m", method="vcd", seed=0, protocol="vcd"
    )
    assert pap.protocol["protocol"] == "vcd" and pap.method["mode"] == "sample"  # VCD samples
    assert (
        pap.scoring["parser"] == "vcd" and pap.benchmark["max_new_tokens"] == pap.protocol["max_new_tokens"]
    )
    assert "parser" not in pap.as_dict()["benchmark"] and "parser" not in pap.as_dict()["protocol"]
    assert pap.method["params"] == {**{"alpha": 0.25}, **pap.protocol["params"]}
    cfg["benchmarks"]["pope"]["max_new_tokens_cap"] = 3
    capped = runs.build_run(
        cfg, benchmark="pope", split="random", model="m", method="vcd", seed=0, protocol="vcd"
    )
    assert capped.benchmark["max_new_tokens"] == 3 and capped.benchmark["max_new_tokens_cap"] == 3


def test_benchmark_registry_answers_which_benchmark():
    assert set(BENCHMARKS) == {
        "pope",
        "chair",
        "mme",
        "amber",
        "mmvp",
        "hallusionbench",
        "llavabench",
        "mmhal",
        "leading_pope",
    }
    assert kind_of("leading_pope_gqa") == "leading_pope" and kind_of("pope_leading") == "pope"
    assert kind_of("pope_gqa") == "pope" and kind_of("pope_my-data") == "pope" and kind_of("chair") == "chair"
    with pytest.raises(ValueError, match="unknown benchmark 'chair_x'"):
        kind_of("chair_x")
    assert title_of("pope_aokvqa") == "POPE (AOKVQA)"
    for b in BENCHMARKS.values():
        assert b.columns and all(c.better in ("higher", "lower", "") for c in b.columns)
    assert get_benchmark("pope").headline() == {"accuracy": "higher", "yes_ratio": "", "f1": "higher"}
    amber = {"name": "amber", "kind": "amber", "split": "generative", "root": "r", "nltk_data": "n"}
    assert get_benchmark("amber").decode_inputs(amber)["query"] == "r/data/query/query_generative.json"
    assert get_benchmark("chair").splits({}) == ["all"]
    assert runs.method_inputs("convis") == ("convis_reconstructions",) and runs.method_inputs("vcd") == ()


def test_merge_shards_merges_the_sidecars(tmp_path):
    shards = []
    for i, (sec, mem, hw) in enumerate([(2.0, 100.0, "1x H200"), (3.5, 250.0, "1x A100")]):
        p = tmp_path / f"{i}-of-2.jsonl"
        p.write_text(json.dumps({"item_id": f"q{i}"}) + "\n")
        (tmp_path / f"{i}-of-2.meta.json").write_text(
            json.dumps(
                {
                    "wall_seconds": sec,
                    "peak_mem_mb": mem,
                    "hardware": hw,
                    "device": "cuda",
                    "git_commit": "abc",
                    "protocol": {"protocol": "vcd"},
                    "n_items": 1,
                    "n_decoded": 1 - i,
                    "n_resumed": i,
                    "n_errors": i,
                    "error_items": [f"q{i}"] if i else [],
                    "shard": i,
                    "output": str(p),
                    "result_sha256": "shard",
                    "versions": {"torch": "2.13.0+cpu", "transformers": f"5.2{4 + i}.0"},
                }
            )
        )
        shards.append(p)
    out = merge_shards(shards, tmp_path / "seed0.jsonl")
    assert [json.loads(x)["item_id"] for x in out.read_text().splitlines()] == ["q0", "q1"]
    meta = json.loads((tmp_path / "seed0.meta.json").read_text())
    assert meta["wall_seconds"] == 5.5 and meta["peak_mem_mb"] == 250.0
    assert meta["hardware"] == ["1x H200", "1x A100"] and meta["device"] == "cuda"
    assert meta["git_commit"] == "abc" and meta["protocol"] == {"protocol": "vcd"} and meta["n_shards"] == 2
    # shards decoded under different library versions: both sets kept, and the report reads both
    assert meta["versions"] == [
        {"torch": "2.13.0+cpu", "transformers": "5.24.0"},
        {"torch": "2.13.0+cpu", "transformers": "5.25.0"},
    ]
    from vcdflow.report.provenance import result_versions

    assert result_versions(out) == meta["versions"]
    # counts over the whole result, the merged file's own path and hash
    assert (meta["n_items"], meta["n_decoded"], meta["n_resumed"], meta["n_errors"]) == (2, 1, 1, 1)
    assert meta["error_items"] == ["q1"] and "shard" not in meta and meta["output"] == str(out)
    import hashlib

    assert meta["result_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    (tmp_path / "1-of-2.meta.json").unlink()
    merge_shards(shards, tmp_path / "seed0.jsonl")
    assert json.loads((tmp_path / "seed0.meta.json").read_text())["missing"] == [str(shards[1])]


def test_greedy_without_random_draw_is_decoded_once_and_recorded_per_seed(tmp_path):
    assert runs.seed_free("greedy", "greedy") and runs.seed_free("m3id", "greedy")
    assert not runs.seed_free("vcd", "greedy")  # its noise is a seeded draw
    assert not runs.seed_free("ritual", "greedy") and not runs.seed_free("greedy", "sample")
    assert runs.decode_seed({"seeds": [5, 6]}, "greedy", "greedy", 6) == 5
    assert runs.decode_seed({"seeds": [5, 6]}, "vcd", "greedy", 6) == 6
    shard = tmp_path / "0-of-1.jsonl"
    recs = [{"item_id": "a", "seed": 5, "answer": "yes"}, {"item_id": "b", "seed": 5, "answer": "no"}]
    shard.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    merge_shards([shard], tmp_path / "seed6.jsonl", seed=6)
    out = [json.loads(x) for x in (tmp_path / "seed6.jsonl").read_text().splitlines()]
    assert out == [dict(r, seed=6) for r in recs]
    meta = json.loads((tmp_path / "seed6.meta.json").read_text())
    assert meta["decoded_seed"] == 5 and meta["seed"] == 6 and "decoded once" in meta["note"]
    merge_shards([shard], tmp_path / "seed5.jsonl", seed=5)
    assert (tmp_path / "seed5.jsonl").read_text() == shard.read_text()
    assert "decoded_seed" not in json.loads((tmp_path / "seed5.meta.json").read_text())


def test_grid_leaves_out_models_a_method_does_not_apply_to():
    """CARVE declares families (llava, qwen2_5_vl): the grid plans no CARVE run for a model whose
    configured family is instructblip (instead of a run whose every item fails), keeps it for
    family auto, and every other method runs on every model."""
    from vcdflow.config import applies, grid

    config = {
        "seeds": [0],
        "protocol": "unified",
        "models": {
            "blip": {"path": "m/blip", "family": "instructblip"},
            "llava": {"path": "m/llava", "family": "llava"},
            "any": {"path": "m/any", "family": "auto"},
        },
        "benchmarks": {"chair": {}},
        "methods": {"carve": {"method": "carve"}, "vcd": {"method": "vcd"}},
    }
    assert not applies(config, "carve", "blip")
    assert (
        applies(config, "carve", "llava")
        and applies(config, "carve", "any")
        and applies(config, "vcd", "blip")
    )
    runs = {(r["model"], r["method"]) for r in grid(config)}
    assert runs == {("blip", "vcd"), ("llava", "vcd"), ("any", "vcd"), ("llava", "carve"), ("any", "carve")}


def test_the_judge_decides_scores_not_records():
    """A judged benchmark's judge (Benchmark.extra["score_keys"]) stays out of the decode run: a
    new judge model never re-decodes; the prompt still does."""
    cfg = {
        "seeds": [0],
        "protocol": "unified",
        "models": {"m": {"path": "m", "family": "llava"}},
        "benchmarks": {
            "llavabench": {
                "questions": "q.jsonl",
                "images": "img",
                "judge": {"kind": "openai", "url": "http://x", "model": "judge-a"},
            }
        },
        "methods": {"greedy": {"method": "greedy"}},
    }
    g = next(iter(runs.grid(cfg)))
    a = cell(cfg, g).as_dict()
    other = copy.deepcopy(cfg)
    other["benchmarks"]["llavabench"]["judge"]["model"] = "judge-b"
    assert cell(other, g).as_dict() == a and "judge" not in json.dumps(a)
    third = copy.deepcopy(cfg)
    third["benchmarks"]["llavabench"]["prompt"] = "{question} Be brief."
    assert cell(third, g).as_dict() != a


# --------------------------------------------------------------------------- parsers and score-only settings


def _scorer_accepts(kind: str, parser: str) -> bool:
    """Whether the benchmark's scorer itself runs with ``parser`` (its own parse function)."""
    from vcdflow.metrics import amber, llavabench, mme, pope

    try:
        if kind in ("pope", "leading_pope"):
            pope._predict("Yes, there is.", "yes", parser)
        elif kind == "amber":
            amber.parse_answer("Yes, there is.", parser)
        elif kind == "mme":
            return parser in mme.PARSERS
        elif kind == "llavabench":
            return parser in llavabench._PARSERS
        else:  # judged yes/no or choice benchmarks (hallusionbench, mmvp): their declared pair
            return parser in get_benchmark(kind).parsers
    except ValueError:
        return False
    return True


def test_declared_parsers_are_what_each_scorer_runs():
    for kind, spec in BENCHMARKS.items():
        for parser in spec.parsers:
            assert _scorer_accepts(kind, parser), (kind, parser)
    assert not _scorer_accepts("amber", "official")  # the rehearsal's failure, at scoring


@pytest.mark.parametrize(
    "protocol", sorted(__import__("vcdflow.protocols", fromlist=["PROTOCOLS"]).PROTOCOLS)
)
def test_every_protocol_gives_every_benchmark_a_parser_its_scorer_runs(protocol):
    """All protocols x all benchmarks x all families: the parser a result is scored with (a
    protocol's own, mapped where the scorer lacks it) is one the scorer runs; the score-only
    parser never reaches the decode record."""
    from vcdflow.protocols import FAMILIES, PAPER_OF

    method = next((m for m, p in PAPER_OF.items() if p == protocol), "greedy")
    for kind in BENCHMARKS:
        for family in FAMILIES:
            cfg = {
                "seeds": [0],
                "benchmarks": {kind: {}},
                "models": {"m": {"path": "m", "family": family}},
                "methods": {method: {"method": method}},
            }
            spec = runs.build_run(
                cfg,
                benchmark=kind,
                split=runs.splits_of(cfg, kind)[0],
                model="m",
                method=method,
                seed=0,
                protocol=protocol,
            )
            if BENCHMARKS[kind].parsers:
                assert _scorer_accepts(kind, spec.scoring["parser"]), (protocol, kind, family, spec.scoring)
                assert spec.scoring["parser_source"]
            assert "parser" not in json.dumps(spec.as_dict()["benchmark"])
            assert "parser" not in spec.as_dict()["protocol"]


def test_unified_amber_is_scored_with_the_pope_parser_and_a_bad_parser_fails_at_parse_time():
    cfg = copy.deepcopy(PAPER)
    cfg["benchmarks"]["amber"].pop("parser", None)
    spec = runs.build_run(
        cfg,
        benchmark="amber",
        split="discriminative",
        model="llava-1.5-7b",
        method="greedy",
        seed=42,
        protocol="unified",
    )
    assert spec.score_slice()["parser"] == "pope" and "AMBER" in spec.scoring["parser_source"]
    bad = {
        "seeds": [0],
        "benchmarks": {"amber": {"root": "a", "nltk_data": "n", "parser": "official"}},
        "models": {"m": {"path": "m", "family": "llava"}},
        "methods": {"greedy": {"method": "greedy"}},
    }
    with pytest.raises(
        runs.ConfigError,
        match=r"config benchmarks\.amber\.parser: 'official' is not a amber parser "
        r"\(protocol unified\); valid: pope, exact, first_word",
    ):
        runs.validate_config(bad)


#: (what changes, config edit) for every setting that decides scores or the grid only
SCORE_ONLY = {
    "pope parser official -> opera": lambda c: c["benchmarks"]["pope"].update(parser="opera"),
    "pope: one split dropped": lambda c: c["benchmarks"]["pope"].update(splits=["random", "popular"]),
    "chair nltk_data with a trailing /": lambda c: c["benchmarks"]["chair"].update(
        nltk_data=c["benchmarks"]["chair"]["nltk_data"] + "/"
    ),
    "chair synonyms": lambda c: c["benchmarks"]["chair"].update(synonyms="elsewhere/synonyms.txt"),
    "amber spacy_model null -> path": lambda c: c["benchmarks"]["amber"].update(
        spacy_model="resources/spacy/lg"
    ),
    "amber nltk_data": lambda c: c["benchmarks"]["amber"].update(nltk_data="elsewhere/nltk_data"),
    "amber parser": lambda c: c["benchmarks"]["amber"].update(parser="exact"),
    "amber: discriminative task dropped": lambda c: c["benchmarks"]["amber"].update(tasks=["generative"]),
    "mme parser": lambda c: c["benchmarks"]["mme"].update(parser="lmms"),
}


@pytest.mark.parametrize("change", list(SCORE_ONLY))
def test_score_only_settings_never_change_a_decode_record(change):
    cfg = copy.deepcopy(DEMO)
    cfg["benchmarks"]["amber"]["spacy_model"] = None
    other = copy.deepcopy(cfg)
    SCORE_ONLY[change](other)
    kept = {json.dumps(g, sort_keys=True) for g in runs.grid(other)}
    cells = [g for g in runs.grid(cfg) if json.dumps(g, sort_keys=True) in kept]
    assert cells and len(kept) <= len(list(runs.grid(cfg)))
    assert [cell(other, g).as_dict() for g in cells] == [cell(cfg, g).as_dict() for g in cells]
    # ... and the scorer does see the change (a re-score, not a no-op), unless only the grid changed
    if "dropped" not in change:
        assert any(cell(other, g).score_slice() != cell(cfg, g).score_slice() for g in cells)
