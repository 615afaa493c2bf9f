"""cd_rethink controls — ``pba``, ``olm``, ``apc`` at β = 0.2 and ``vcd`` at cd_rethink's setting —
against the plain references (tests/reference_methods.py, tests/reference_decoder.py) on the tiny
model of every family and on the demo LLaVA; seeding and batch-size invariance."""

from __future__ import annotations

import pytest
import torch

import reference_decoder
from reference_methods import assert_same_as_reference, build_vlms, image, ref_generate
from vcdflow.decoding import METHODS, Request, generate

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("controls"))


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=image(2, 64, 64), prompt="Is there a dog?", item_id="b", system="You are an expert."),
    Request(image=image(3, 120, 70), prompt="what is this red dog on the table with a cat?", item_id="c"),
]


def _eos(vlm, method, params):
    """An EOS that stops request 0 early: its 3rd token decoded without EOS."""
    out = generate(vlm, REQS[:1], method=method, params=params, max_new_tokens=N_NEW, eos_token_id=[])[0]
    return [out.token_ids[2]]


def _check(vlm, method, params, what):
    eos = _eos(vlm, method, params)
    outs = generate(
        vlm, REQS, method=method, params=params, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16
    )
    assert outs[0].meta["finish_reason"] == "eos"
    refs = []
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert o.error is None, (what, o.error)
        ref = ref_generate(vlm, r, method, params, max_new_tokens=N_NEW, eos=eos, index=i)
        assert_same_as_reference(o, ref, eos, f"{what}/{r.item_id}")
        refs.append(ref)
    return outs, refs


@pytest.mark.parametrize("family", FAMILIES)
def test_pba_matches_reference(vlms, family):
    outs, _ = _check(vlms[family], "pba", None, f"pba/{family}")
    # the toy vocabularies lack "whenever"/"possible": they encode as <unk>
    text = vlms[family].adapter.tokenizer.decode(outs[0].input_ids).lower()
    assert "cup in the image ? answer yes " in text, text


@pytest.mark.parametrize("family", FAMILIES)
def test_olm_matches_reference(vlms, family):
    """Three settings: the official thresholds (never fire on random weights: p_yes + p_no is
    tiny), min_sum 0 (always fire: every token is "yes"), and a threshold between the observed
    sums, where the rule fires at some steps and not at others."""
    vlm = vlms[family]
    yes = vlm.adapter.tokenizer.encode("Yes", add_special_tokens=False)[0]
    outs, refs = _check(vlm, "olm", None, f"olm/{family}/official")
    assert not any(any(r.forced) for r in refs)
    _check(vlm, "olm", {"min_sum": 0.0, "max_diff": 1.0}, f"olm/{family}/always")
    outs = generate(
        vlm, REQS, method="olm", params={"min_sum": 0.0, "max_diff": 1.0}, max_new_tokens=3, eos_token_id=[]
    )
    assert all(o.token_ids == [yes] * 3 for o in outs)
    # a threshold between the requests' first-step p_yes + p_no: fires for one, not for another
    from reference_methods import inputs, last_logits

    no = vlm.adapter.tokenizer.encode("No", add_special_tokens=False)[0]
    s0 = []
    with torch.inference_mode():
        for r in REQS:
            p = torch.softmax(last_logits(vlm, inputs(vlm, r.prompt, r.image, r.system), []), -1)
            s0.append(float(p[yes] + p[no]))
    hi = sorted(s0)
    assert hi[-1] > hi[-2]
    mid = (hi[-1] + hi[-2]) / 2
    params = {"min_sum": mid, "max_diff": 1.0}
    outs, refs = _check(vlm, "olm", params, f"olm/{family}/mixed")
    fired = [f for r in refs for f in r.forced]
    assert any(fired) and not all(fired), fired


def test_olm_needs_single_token_words(vlms):
    out = generate(vlms["llava"], REQS[:1], method="olm", params={"yes_word": "yes yes"}, max_new_tokens=2)[0]
    assert out.error.startswith("method 'olm': the answer word 'yes yes' is 2 tokens"), out.error


@pytest.mark.parametrize("family", ["llava", "demo"])
def test_cd_rethink_vcd_and_apc_settings(vlms, family):
    """VCD at cd_rethink's setting (noise step 900, β 0.2) and APC-only at β = 0.2 with direct
    sampling (T = 1) equal the first-wave reference decoder (LLaVA family)."""
    vlm = vlms[family]
    eos = [vlm.model.generation_config.eos_token_id]
    for method, params, kw in (
        ("vcd", {"noise_step": 900, "beta": 0.2}, {}),
        ("apc", {"beta": 0.2}, {"do_sample": True, "temperature": 1.0, "seed": 5}),
    ):
        outs = generate(vlm, REQS, method=method, params=params, max_new_tokens=N_NEW, **kw)
        for i, (r, o) in enumerate(zip(REQS, outs)):
            ref = reference_decoder.ref_generate(
                vlm, r, method, params, max_new_tokens=N_NEW, eos=eos, index=i, **kw
            )
            assert o.token_ids == ref.tokens, (method, family, r.item_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_seed_and_batch_size(vlms, family):
    vlm = vlms[family]
    for method, params in (("pba", None), ("olm", None)):
        kw = dict(
            method=method,
            params=params,
            do_sample=True,
            temperature=0.9,
            top_p=0.95,
            max_new_tokens=N_NEW,
            eos_token_id=[],
        )
        a = generate(vlm, REQS, seed=4, batch_size=16, **kw)
        b = generate(vlm, REQS, seed=4, batch_size=1, **kw)
        c = generate(vlm, REQS, seed=5, batch_size=16, **kw)
        assert [o.token_ids for o in a] == [o.token_ids for o in b], (family, method)
        assert [o.token_ids for o in a] != [o.token_ids for o in c], (family, method)


def test_sampling_matches_reference(vlms):
    vlm = vlms["llava"]
    kw = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=30, seed=7, max_new_tokens=N_NEW)
    for method, params in (("pba", None), ("olm", {"min_sum": 0.03})):
        outs = generate(vlm, REQS, method=method, params=params, eos_token_id=[], **kw)
        for i, (r, o) in enumerate(zip(REQS, outs)):
            ref = ref_generate(vlm, r, method, params, index=i, **kw)
            assert o.token_ids == ref.tokens, (method, r.item_id)


def test_registered_with_docstrings():
    import sys

    for name in ("pba", "olm"):
        doc = sys.modules[type(METHODS[name]).__module__].__doc__
        assert "cd_rethink" in doc and "official" in doc.lower()
