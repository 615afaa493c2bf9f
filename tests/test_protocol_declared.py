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
    assert not script.search  # one beam: caption_generation_patch_vasparse.py:157
    assert "caption_generation_patch_vasparse.py:157" in script.sources["do_sample"]
    # the script protocol differs from the paper's in the beams only
    da, db = r.as_dict(), script.as_dict()
    assert {k for k in da.keys() | db.keys() if da.get(k) != db.get(k)} == {"protocol", "search", "sources"}
    from vcdflow.protocols import PAPER_OF

    assert PAPER_OF["vasparse"] == "vasparse"


# --- vcdflow protocol show ------------------------------------------------------------------------
def show(capsys, *argv):
    from vcdflow.cli import main

    rc = main(["protocol", "show", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_protocol_show_prints_every_resolved_field_with_its_source(capsys):
    import json
    from dataclasses import fields

    from vcdflow.protocols import Resolved

    rc, out, _ = show(
        capsys, "halc", "--family", "instructblip", "--family", "llava", "--benchmark", "pope", "--json"
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["family"], r["benchmark"], r["method"]) for r in rows] == [
        ("instructblip", "pope", "halc"),
        ("llava", "pope", "halc"),
    ]
    # read generically from the record: every field of Resolved but the parameters, each with a source
    assert {k.split(".")[0] for k in rows[0]["fields"]} == {f.name for f in fields(Resolved)} - {
        "protocol",
        "sources",
        "params",
    }
    assert all(v["source"] for row in rows for v in row["fields"].values())
    assert rows[0]["fields"]["max_new_tokens"] == {
        "value": 16,
        "source": "BillChan226/HALC run_scripts/pope_eval.py:105",
    }
    # the effective parameters: the protocol's override with its citation, the rest the method's defaults
    assert rows[0]["params"]["beam_size"]["value"] == 1
    assert "pope_eval.py:98" in rows[0]["params"]["beam_size"]["source"]
    assert rows[0]["params"]["k_candidates"] == {
        "value": 4,
        "source": "the method's default (vcdflow.decoding.methods.halc)",
    }
    # a record field (the benchmark data) is shown per declared key with that key's source
    rc, out, _ = show(capsys, "opera", "--family", "llava", "--benchmark", "pope", "--json")
    assert json.loads(out)["fields"]["data.pope_version"]["value"] == "e3e3926"
    assert "pope_eval.py" in json.loads(out)["fields"]["data.pope_version"]["source"]
    # the text form carries the same values and sources; default families = the ones the protocol ran
    rc, out, _ = show(capsys, "vasparse")
    assert rc == 0 and out.startswith("protocol vasparse: VASparse") and "== llava × chair" in out
    assert "== instructblip" not in out and "× pope" not in out
    assert (
        '  search = {"num_beams": 3, "length_norm": "generated"}\n      source: VASparse paper arXiv 2501.06553'
        in out
    )
    # another method under a protocol, and `paper` with --method
    rc, out, _ = show(
        capsys, "halc", "--method", "dola", "--benchmark", "chair", "--family", "llava", "--json"
    )
    assert json.loads(out)["fields"]["search"]["value"] == {"num_beams": 3, "length_norm": "total"}
    rc, out, _ = show(capsys, "paper", "--method", "pai", "--benchmark", "pope", "--json")
    row = json.loads(out)
    assert row["protocol"] == "pai" and row["params"]["attn_schedule"]["value"] == "official"
    from vcdflow.cli import main

    assert main(["protocol", "list"]) == 0
    assert "vasparse_script: VASparse's released script (-b 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["nope"], "vcdflow protocol show: NAME: unknown protocol 'nope'; valid protocols: avisc"),
        (
            ["opera", "--family", "llama"],
            "vcdflow protocol show: --family: unknown value 'llama'; valid: llava",
        ),
        (["opera", "--method", "x"], "vcdflow protocol show: --method: unknown method 'x'; valid:"),
        (["paper"], "vcdflow protocol show: NAME: 'paper' needs --method"),
    ],
)
def test_protocol_show_bad_input_is_one_line(capsys, argv, msg):
    rc, out, err = show(capsys, *argv)
    assert rc == 2 and out == "" and err.startswith(msg) and err.count("\n") == 1


# --- InstructBLIP: LAVIS's repetition penalty ------------------------------------------------------
LAVIS = {"repetition_penalty": 1.5, "repetition_context": "generated"}


@pytest.mark.parametrize(
    "protocol,method,line",
    [
        # shikiw/OPERA minigpt4/models/blip2_vicuna_instruct.py:252 (default), :379-390 (generate call)
        ("opera", "opera", "shikiw/OPERA minigpt4/models/blip2_vicuna_instruct.py:252,379-390"),
        ("opera", "greedy", "shikiw/OPERA minigpt4/models/blip2_vicuna_instruct.py:252,379-390"),
        # BillChan226/HALC and the VASparse fork: :331 (default), :485-496 (generate call)
        ("halc", "dola", "BillChan226/HALC minigpt4/models/blip2_vicuna_instruct.py:331,485-496"),
        ("halc", "halc", "BillChan226/HALC minigpt4/models/blip2_vicuna_instruct.py:331,485-496"),
        (
            "dola",
            "dola",
            "mengchuang123/VASparse-github minigpt4/models/blip2_vicuna_instruct.py:331,485-496",
        ),
    ],
)
def test_instructblip_runs_lavis_repetition_penalty(protocol, method, line):
    for bench in ("pope", "chair"):
        ib = resolved(protocol, method, "instructblip", bench)
        assert {k: ib.params[k] for k in LAVIS} == LAVIS, (protocol, method, bench)
        assert line in ib.sources["params"]
        llava = resolved(protocol, method, "llava", bench)  # LLaVA-1.5's harness passes none
        assert llava.params.get("repetition_penalty", 1.0) == 1.0
    if method == "opera":  # 4.29's total length with input_ids = one BOS
        assert resolved("opera", "opera", "instructblip", "chair").params["length_norm"] == "total_bos"


def test_lavis_penalty_beam_lengths_and_the_methods_it_does_not_reach():
    # beam5 (greedy, 5 beams) under OPERA on InstructBLIP: total length of BOS + generated
    r = resolved("opera", "greedy", "instructblip", "chair")
    assert (
        r.search["length_norm"] == "total_bos"
        and resolved("opera", "greedy", "llava", "chair").search["length_norm"] == "total"
    )
    assert "transformers-4.29.2/src/transformers/generation/utils.py:548-550,584-594" in r.sources["search"]
    # DoLa on CHAIR in HALC's harness: 3 beams, one BOS in the total length
    assert dict(resolved("halc", "dola", "instructblip", "chair").search) == {
        "num_beams": 3,
        "length_norm": "total_bos",
    }
    assert dict(resolved("halc", "dola", "llava", "chair").search) == {"num_beams": 3, "length_norm": "total"}
    assert not resolved("halc", "dola", "instructblip", "pope").search
    # SID (argmax before any processor, SID vcd_sample.py:180,190-191) and ONLY (its InstructBLIP
    # script passes repetition_penalty=1, pope_eval_instructblip.py:254) are not affected
    for protocol, method in (("sid", "sid"), ("only", "only")):
        assert "repetition_penalty" not in resolved(protocol, method, "instructblip", "chair").params
    # HALC's loop applies it at its three processor sites
    assert "utils.py:4662" in resolved("halc", "halc", "instructblip", "chair").sources["params"]
