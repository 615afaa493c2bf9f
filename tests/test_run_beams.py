"""Run-level beam search (through the workflow): method-entry keys ``num_beams``,
``length_penalty``, ``early_stopping``, ``length_norm`` and a protocol's ``search`` -> the run
record (``method.search``, so the hash) -> ``runner.decode_batch`` -> ``generate``.

Checks that cannot pass by accident: a beam run decoded through the runner equals a direct
``generate(num_beams=k, …)`` call on the same requests (and the spy sees the keys); the beam run's
hash differs from the greedy run's while a one-beam run's record carries no ``search`` at all;
each bad value fails with one line naming the label and the key; VTI's protocol fixes 5 beams and
HALC's harness 3 for DoLa on CHAIR (not on POPE, not in sampling mode); a tiny Snakemake run
(tests/configs/beams.yaml) decodes and scores a beam label whose records equal ``generate``'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vcdflow import config as runs
from vcdflow.runner import decode_batch, result_hash

from scene_pope import write_scene_pope

ROOT = Path(__file__).resolve().parents[1]
N_NEW = 6


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vcdflow.models import load_vlm
    from vcdflow.models.demo import build_demo_vlm

    root = tmp_path_factory.mktemp("beams")
    questions, images = write_scene_pope(root / "pope", 3, (0, 11))
    model, processor = build_demo_vlm(seed=6)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return {
        "root": root,
        "questions": questions,
        "images": images,
        "model": root / "model",
        "vlm": load_vlm(root / "model"),
    }


def make_config(
    methods,
    *,
    protocol="unified",
    questions="q_{split}.json",
    images="img",
    model="models/m",
    extra_benchmarks=None,
):
    return {
        "seeds": [0],
        "benchmarks": {
            "pope": {
                "splits": ["random"],
                "questions": questions,
                "images": images,
                "prompt": "{question} One word.",
                "max_new_tokens": N_NEW,
            },
            **(extra_benchmarks or {}),
        },
        "models": {"demo": {"path": str(model), "family": "llava", "revision": "local", "dtype": "float32"}},
        "methods": methods,
        "protocol": protocol,
    }


def spec_of(cfg, label, protocol="unified", benchmark="pope", split="random"):
    return runs.build_run(
        cfg, benchmark=benchmark, split=split, model="demo", method=label, seed=0, protocol=protocol
    ).as_dict()


def job(cfg, label, protocol="unified"):
    return runs.job_run(spec_of(cfg, label, protocol), runs.execution(cfg))


# --------------------------------------------------------------------------- config -> record -> decode


def test_beam_label_decodes_through_the_runner_as_generate_with_beams(world):
    from PIL import Image

    from vcdflow.decoding import Request, generate
    from vcdflow.runner import load_items

    methods = {
        "greedy": {"method": "greedy"},
        "beam3": {"method": "greedy", "num_beams": 3, "length_penalty": 0.5},
        "vcd_beam2": {
            "method": "vcd",
            "num_beams": 2,
            "early_stopping": True,
            "length_norm": "total",
            "params": {"alpha": 1.0, "beta": 0.1, "noise_step": 500},
        },
    }
    cfg = make_config(methods, questions=world["questions"], images=world["images"], model=world["model"])
    runs.validate_config(cfg)
    vlm = world["vlm"]
    greedy_run = job(cfg, "greedy")
    items = load_items(greedy_run["benchmark"])
    assert len(items) == 6

    seen = []

    def spy(vlm_, requests, **kw):
        seen.append(kw)
        return generate(vlm_, requests, **kw)

    cases = {
        "beam3": (
            "greedy",
            {},
            {"num_beams": 3, "length_penalty": 0.5, "early_stopping": False, "length_norm": "generated"},
        ),
        "vcd_beam2": (
            "vcd",
            {"alpha": 1.0, "beta": 0.1, "noise_step": 500},
            {"num_beams": 2, "length_penalty": 1.0, "early_stopping": True, "length_norm": "total"},
        ),
    }
    differs = 0
    for label, (method, params, search) in cases.items():
        run = job(cfg, label)
        assert run["method"]["search"] == search and run["method"]["mode"] == "greedy"
        assert run["method"]["do_sample"] is False  # num_beams > 1 without do_sample: greedy mode
        recs = decode_batch(vlm, run, items, generate_fn=spy)
        assert {k: seen[-1][k] for k in search} == search  # the runner passed the record's search keys
        # the same requests, decoded by calling the engine directly with the beam arguments written out
        system = run["protocol"]["system"]
        reqs = [
            Request(
                image=Image.open(it["image_path"]).convert("RGB"),
                prompt=f"{it['question']} One word.",
                item_id=it["item_id"],
                system=system,
            )
            for it in items
        ]
        direct = generate(
            vlm,
            reqs,
            method=method,
            params=params,
            max_new_tokens=N_NEW,
            seed=0,
            batch_size=len(reqs),
            **search,
        )
        assert all(r["error"] is None for r in recs)
        assert [r["answer"] for r in recs] == [o.text for o in direct]
        assert [r["meta"]["finish_reason"] for r in recs] == [o.meta["finish_reason"] for o in direct]
        one_beam = generate(
            vlm, reqs, method=method, params=params, max_new_tokens=N_NEW, seed=0, batch_size=len(reqs)
        )
        differs += sum(o.token_ids != b.token_ids for o, b in zip(direct, one_beam))
    assert differs > 0, "beam search never changed an output: the test would not see beams being dropped"
    # the greedy run passes no beam argument at all
    decode_batch(vlm, greedy_run, items[:1], generate_fn=spy)
    assert not set(runs.SEARCH_KEYS) & set(seen[-1])


def test_beam_run_hash_differs_and_one_beam_records_stay_as_they_were():
    methods = {
        "greedy": {"method": "greedy"},
        "beam5": {"method": "greedy", "num_beams": 5},
        "beam5_lp": {"method": "greedy", "num_beams": 5, "length_penalty": 2.0},
        "one": {"method": "greedy", "num_beams": 1},
    }
    cfg = make_config(methods)
    runs.validate_config(cfg)
    h = {label: result_hash(job(cfg, label)) for label in methods}
    assert len({h["greedy"], h["beam5"], h["beam5_lp"]}) == 3
    g, one = spec_of(cfg, "greedy"), spec_of(cfg, "one")
    assert "search" not in g["method"] and "search" not in one["method"]
    assert {**one["method"], "label": "greedy"} == g["method"]  # num_beams: 1 is the greedy run itself
    # the same spec as before beams existed: no search key anywhere, under a harness that fixes
    # the beam semantics ("*": length_norm total) too
    for protocol in ("opera", "vti"):
        spec = spec_of(make_config({"greedy": {"method": "greedy"}}, protocol=protocol), "greedy", protocol)
        assert '"search":' not in json.dumps(spec), protocol
        assert "search" not in spec["method"] and "search" not in spec["protocol"]
        assert "search" not in spec["protocol"]["sources"]
    b = spec_of(cfg, "beam5")
    assert b["method"]["search"] == {
        "num_beams": 5,
        "length_penalty": 1.0,
        "early_stopping": False,
        "length_norm": "generated",
    }
    # describe() (what `vcdflow describe` / the sidecar show) carries it
    from vcdflow.runner import describe

    assert describe(job(cfg, "beam5"))["run"]["method"]["search"]["num_beams"] == 5


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "entry, needle",
    [
        (
            {"method": "greedy", "num_beams": 3, "do_sample": True},
            "config methods.x.num_beams: 3 beams is beam search, a greedy mode, but do_sample: true",
        ),
        (
            {"method": "sample", "num_beams": 2},
            "config methods.x.num_beams: 2 beams is beam search, a greedy mode, but do_sample: true",
        ),
        (
            {"method": "vcd", "num_beams": 4, "do_sample": True},
            "config methods.x.num_beams: 4 beams is beam search",
        ),
        (
            {"method": "opera", "num_beams": 5},
            "config methods.x.num_beams: method 'opera' sets its beams with parameter 'num_beams'",
        ),
        (
            {"method": "contrastive_search", "num_beams": 2},
            "config methods.x.num_beams: method 'contrastive_search' is its own search: num_beams must be 1",
        ),
        (
            {"method": "text_cd", "num_beams": 2, "params": {"variant": "li"}},
            "config methods.x.num_beams: method 'text_cd' variant 'li' sets its beams with parameter 'num_beams'",
        ),
        (
            {"method": "greedy", "num_beams": "5"},
            "config methods.x.num_beams: num_beams must be a positive integer, got '5'",
        ),
        (
            {"method": "greedy", "num_beams": 0},
            "config methods.x.num_beams: num_beams must be a positive integer, got 0",
        ),
        (
            {"method": "greedy", "num_beams": True},
            "config methods.x.num_beams: num_beams must be a positive integer, got True",
        ),
        (
            {"method": "greedy", "num_beams": 2, "length_penalty": "long"},
            "config methods.x.length_penalty: length_penalty must be a number, got 'long'",
        ),
        (
            {"method": "greedy", "num_beams": 2, "early_stopping": "sometimes"},
            "config methods.x.early_stopping: early_stopping must be True, False or 'never', got 'sometimes'",
        ),
        (
            {"method": "greedy", "num_beams": 2, "length_norm": "all"},
            "config methods.x.length_norm: length_norm must be one of generated, total, total_bos, got 'all'",
        ),
        (
            {"method": "greedy", "length_penalty": 2.0},
            "config methods.x.length_penalty: only used by beam search, and this run has one beam",
        ),
    ],
    ids=[
        "sample+beams",
        "method-sample",
        "vcd-sample",
        "opera",
        "contrastive_search",
        "text_cd-li",
        "str",
        "zero",
        "bool",
        "length_penalty",
        "early_stopping",
        "length_norm",
        "no-beams",
    ],
)
def test_bad_search_settings_fail_naming_label_and_key(entry, needle):
    cfg = make_config({"greedy": {"method": "greedy"}, "x": entry})
    with pytest.raises(runs.ConfigError) as err:
        runs.validate_config(cfg)
    text = str(err.value)
    assert needle in text and "\n" not in text, text


def test_self_searching_methods_keep_their_own_beams():
    """OPERA / text_cd li run their own search (its beams a parameter): no run-level search recorded;
    text_cd's obrien variant takes the generic beams."""
    cfg = make_config(
        {
            "opera": {"method": "opera", "params": {"num_beams": 3}},
            "text_cd_obrien": {"method": "text_cd", "num_beams": 2},
        }
    )
    runs.validate_config(cfg)
    assert "search" not in spec_of(cfg, "opera")["method"]
    assert spec_of(cfg, "text_cd_obrien")["method"]["search"]["num_beams"] == 2


# --------------------------------------------------------------------------- protocols


CHAIR = {"chair": {"instances": "i.json", "captions": "c.json", "images": "img", "synonyms": "s.txt"}}


def test_protocols_that_fix_beams_show_up_in_the_run_record():
    cfg = make_config(
        {
            "vti": {"method": "vti"},
            "vti_sample": {"method": "vti", "do_sample": True},
            "vti2": {"method": "vti", "num_beams": 2},
            "dola": {"method": "dola"},
        },
        extra_benchmarks=CHAIR,
    )
    runs.validate_config(cfg)
    # VTI's official run: 5 beams (shengliu66/VTI experiments/eval/run_mmhal_vti.py:120), 4.31's length
    vti = spec_of(cfg, "vti", "vti")
    assert vti["method"]["search"] == {
        "num_beams": 5,
        "length_penalty": 1.0,
        "early_stopping": False,
        "length_norm": "total",
    }
    assert vti["protocol"]["search"] == {"num_beams": 5, "length_norm": "total"}
    assert "run_mmhal_vti.py:120" in vti["protocol"]["sources"]["search"]
    # the paper's value wins under its protocol, the config's under unified; sampling has no beams
    assert spec_of(cfg, "vti2", "vti")["method"]["search"]["num_beams"] == 5
    assert spec_of(cfg, "vti2")["method"]["search"] == {
        "num_beams": 2,
        "length_penalty": 1.0,
        "early_stopping": False,
        "length_norm": "generated",
    }
    assert "search" not in spec_of(cfg, "vti")["method"]
    smp = spec_of(cfg, "vti_sample", "vti")
    assert (
        smp["method"]["mode"] == "sample"
        and "search" not in smp["method"]
        and "search" not in smp["protocol"]
    )
    # DoLa in HALC's own harness: 3 beams on CHAIR (-b 3 -> dola_beam_search, no relative-top filter), 1 on POPE
    chair = spec_of(cfg, "dola", "halc", benchmark="chair", split="all")
    assert chair["method"]["search"]["num_beams"] == 3 and chair["method"]["search"]["length_norm"] == "total"
    assert chair["method"]["params"]["relative_top"] == 0.0
    assert "caption_generation.py:111" in chair["protocol"]["sources"]["search"]
    pope = spec_of(cfg, "dola", "halc")
    assert "search" not in pope["method"] and pope["method"]["params"]["relative_top"] == 0.1
    # ... and in the VASparse fork (the dola protocol, -b 1): DoLa-greedy
    assert "search" not in spec_of(cfg, "dola", "dola", benchmark="chair", split="all")["method"]
    # a beam baseline under OPERA's harness takes its transformers-4.29 length normalisation
    beam = spec_of(
        make_config({"beam5": {"method": "greedy", "num_beams": 5}}, protocol="opera"), "beam5", "opera"
    )
    assert beam["method"]["search"]["length_norm"] == "total"
    # the report's protocol differences list the beams
    rows = runs.protocol_differences(["vti"])["vti"]
    assert any(r["field"] == "search" and (r["a"] or {}).get("num_beams") == 5 for r in rows)


def test_vti_under_its_protocol_decodes_with_five_beams(world, tmp_path):
    """The protocol's beams reach the engine: VTI (text directions, random) under protocol vti
    through the runner = generate(method="vti", num_beams=5, length_norm="total") written out."""
    import torch

    from vcdflow.decoding import generate
    from vcdflow.runner import load_items
    from vcdflow.steering_fit import save_directions

    vlm = world["vlm"]
    ad = vlm.adapter
    L, D = len(ad.decoder_layers()), int(ad.text_config.hidden_size)
    path = save_directions(
        {"text": torch.randn(L, D, generator=torch.Generator().manual_seed(0))}, tmp_path / "vti.pt"
    )
    cfg = make_config(
        {"vti": {"method": "vti"}}, questions=world["questions"], images=world["images"], model=world["model"]
    )
    cfg["benchmarks"]["pope"]["max_new_tokens_cap"] = 4
    run = job(cfg, "vti", "vti")
    assert run["method"]["search"]["num_beams"] == 5 and run["method"]["params"]["alpha_text"] == 0.9
    # what the workflow's input attacher sets; the text part only (the paper's alpha_image needs a
    # fitted visual direction per vision token)
    run["method"]["params"].update(directions=str(path), alpha_image=0.0)
    items = load_items(run["benchmark"])[:3]
    seen = []

    def spy(vlm_, requests, **kw):
        seen.append((list(requests), kw))
        return generate(vlm_, requests, **kw)

    recs = decode_batch(vlm, run, items, generate_fn=spy)
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs]
    reqs, kw = seen[-1]
    params = {"directions": str(path), "alpha_image": 0.0, "alpha_text": 0.9}
    direct = generate(
        vlm,
        reqs,
        method="vti",
        params=params,
        max_new_tokens=4,
        seed=0,
        batch_size=len(reqs),
        num_beams=5,
        length_norm="total",
    )
    assert [r["answer"] for r in recs] == [o.text for o in direct]
    assert kw["num_beams"] == 5 and kw["length_norm"] == "total"


def test_every_protocol_search_is_valid_for_its_method():
    """Each protocol's search entries are arguments generate accepts, and no protocol fixes beams
    for a method that refuses them (asked through the method's own search hook)."""
    from vcdflow.decoding import METHODS
    from vcdflow.decoding.beams import check_beam_args
    from vcdflow.protocols import PROTOCOLS

    n = 0
    for name, proto in PROTOCOLS.items():
        for layer in [
            proto.common,
            *proto.benchmark.values(),
            *proto.family.values(),
            *proto.family_benchmark.values(),
        ]:
            for method, entry in (layer.get("search") or {}).items():
                assert entry.source, (name, method)
                check_beam_args(**{**runs.SEARCH_DEFAULTS, **entry.value})
                if method != "*" and entry.value.get("num_beams", 1) > 1:
                    n += 1
                    m = METHODS[method]
                    if hasattr(m, "search"):
                        m.search(
                            None,
                            m.resolve({}),
                            None,
                            {**runs.SEARCH_DEFAULTS, **entry.value, "mode": "greedy"},
                        )
    assert n >= 2  # VTI's 5 beams, DoLa's 3 under HALC


# --------------------------------------------------------------------------- the workflow


def test_tiny_workflow_decodes_and_scores_a_beam_label(world, tmp_path):
    from PIL import Image

    from vcdflow.decoding import Request, generate
    from vcdflow.io import read_jsonl

    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "beams.yaml").read_text())
    cfg["models"]["demo"]["path"] = str(world["model"])
    cfg["benchmarks"]["pope"].update(questions=world["questions"], images=world["images"])
    config = tmp_path / "beams.yaml"
    config.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(config),
        "--directory",
        str(work),
        "--cores",
        "2",
        "--quiet",
        "rules",
        "--",
        "results/metrics.csv",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, f"snakemake failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    base = work / "results/pope/random/demo/unified"
    beam = read_jsonl(base / "beam3/greedy/seed0.jsonl")
    greedy = read_jsonl(base / "greedy/greedy/seed0.jsonl")
    side = json.loads((base / "beam3/greedy/seed0.meta.json").read_text())
    gside = json.loads((base / "greedy/greedy/seed0.meta.json").read_text())
    assert side["run"]["method"]["search"] == {
        "num_beams": 3,
        "length_penalty": 1.0,
        "early_stopping": False,
        "length_norm": "generated",
    }
    assert "search" not in gside["run"]["method"] and side["config_hash"] != gside["config_hash"]
    # the workflow's beam records = generate(num_beams=3) on the same requests
    system = side["run"]["protocol"]["system"]
    cap = int(cfg["benchmarks"]["pope"]["max_new_tokens_cap"])
    prompt = cfg["benchmarks"]["pope"]["prompt"]
    vlm = world["vlm"]
    vlm.adapter.chat_template = side["run"]["protocol"]["chat_template"]
    imgs = Path(world["images"])
    reqs = [
        Request(
            image=Image.open(imgs / r["image"]).convert("RGB"),
            prompt=r["prompt"],
            item_id=r["item_id"],
            system=system,
        )
        for r in beam
    ]
    assert all(r["prompt"].endswith(prompt.replace("{question}", "")) for r in beam)
    direct = generate(
        vlm, reqs, method="greedy", max_new_tokens=cap, seed=0, batch_size=len(reqs), num_beams=3
    )
    assert [r["answer"] for r in beam] == [o.text for o in direct] and len(beam) == 6
    assert [r["item_id"] for r in greedy] == [r["item_id"] for r in beam]
    import csv

    with open(work / "results" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"accuracy", "f1"} <= {
        r["metric"] for r in rows if r["method"] == "beam3" and r["benchmark"] == "pope"
    }
