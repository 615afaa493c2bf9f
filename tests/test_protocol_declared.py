"""What the paper protocols declare where their official code differs from a plain reading of the
paper (beams, PAI's attention schedule, InstructBLIP's LAVIS repetition penalty and prompt length),
each value with the official file:line its source cites; and ``vcdflow protocol show``.

The official values below are written out from the official repositories at the commits the
protocol files pin (LALBJ/PAI 9bbd8bd, BillChan226/HALC 12ea8b5, mengchuang123/VASparse-github
4929816, shikiw/OPERA 61426ef)."""

from __future__ import annotations

import pytest

from vcdflow.protocols import get_protocol


def resolved(protocol, method, family, benchmark):
    return get_protocol(protocol).resolve(method, family, benchmark)


def test_pai_declares_the_official_attention_schedule():
    # LALBJ/PAI attention.py:90,125 (use_cfg from llama_modify) + CFG.py:30-33,48-49 (reset after step 1)
    for bench in ("pope", "chair"):
        r = resolved("pai", "pai", "llava", bench)
        assert r.params["attn_schedule"] == "official"
        assert "attention.py:90,125" in r.sources["params"] and "CFG.py:30-33,48-49" in r.sources["params"]
    # unified: the method's default, the same official schedule
    from vcdflow.decoding import METHODS

    assert METHODS["pai"].defaults["attn_schedule"] == "official"
    assert "attn_schedule" not in resolved("unified", "pai", "llava", "pope").params


def test_halc_runs_one_beam_on_pope_three_on_chair():
    # BillChan226/HALC run_scripts/pope_eval.py:98 (-b default 1) -> :499 halc_params["beam_size"]
    pope = resolved("halc", "halc", "llava", "pope")
    assert pope.params["beam_size"] == 1
    assert "BillChan226/HALC run_scripts/pope_eval.py:98" in pope.sources["params"]
    # run_scripts/caption_generation.py:111 (-b 3): the method's default beam_size 3
    from vcdflow.decoding import METHODS

    chair = resolved("halc", "halc", "instructblip", "chair")
    assert chair.params.get("beam_size", METHODS["halc"].defaults["beam_size"]) == 3


def test_vasparse_paper_protocol_runs_three_beams_script_protocol_one():
    r = resolved("vasparse", "vasparse", "llava", "chair")
    assert dict(r.search) == {"num_beams": 3, "length_norm": "generated"}
    assert "arXiv 2501.06553" in r.sources["search"]
    assert "transformers-4.36.2/src/transformers/generation/utils.py:7248,7323" in r.sources["search"]
    script = resolved("vasparse_script", "vasparse", "llava", "chair")
    assert not script.search                                   # one beam: caption_generation_patch_vasparse.py:157
    assert "caption_generation_patch_vasparse.py:157" in script.sources["do_sample"]
    # the script protocol differs from the paper's in the beams only
    da, db = r.as_dict(), script.as_dict()
    assert {k for k in da.keys() | db.keys() if da.get(k) != db.get(k)} == {"protocol", "search", "sources"}
    from vcdflow.protocols import PAPER_OF

    assert PAPER_OF["vasparse"] == "vasparse"
