"""Search methods — ``contrastive_search``, ``text_cd``, ``opera`` — against the plain references of
tests/reference_beams.py (batch 1, no KV cache, full recompute) on the tiny model of every family
and the demo LLaVA; batch-size invariance; parameter checks."""

from __future__ import annotations

import pytest
import torch

from reference_beams import ref_contrastive_search
from reference_methods import build_vlms, image
from vcdflow.decoding import Request, generate

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("mbeams"))


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=image(2, 64, 64), prompt="Is there a dog?", item_id="b", system="You are an expert."),
    Request(image=image(3, 120, 70), prompt="what is this red dog on the table with a cat?", item_id="c"),
]


def same_tokens(got, want, margins, what):
    """Token for token; where a token differs, the reference's score margin there is < 1e-4."""
    for k, (x, y) in enumerate(zip(got, want)):
        if x != y:
            assert margins[k] < 1e-4, f"{what}: token {k} engine {x} vs reference {y}, margin {margins[k]}"
            return
    assert len(got) == len(want), f"{what}: engine {got} vs reference {want}"


# --- contrastive search --------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_contrastive_search_matches_reference(vlms, family):
    vlm = vlms[family]
    p = {"penalty_alpha": 0.6, "top_k": 3}
    free = generate(vlm, REQS[:1], method="contrastive_search", params=p, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(vlm, REQS, method="contrastive_search", params=p, max_new_tokens=N_NEW, eos_token_id=eos)
    assert outs[0].meta["finish_reason"] == "eos"
    for r, o in zip(REQS, outs):
        assert o.error is None, o.error
        toks, why, margins = ref_contrastive_search(vlm, r, 0.6, 3, N_NEW, eos)
        same_tokens(o.token_ids + ([eos[0]] if o.meta["finish_reason"] == "eos" else []),
                    toks + ([eos[0]] if why == "eos" else []), margins, f"{family}/{r.item_id}")
    one = [generate(vlm, [r], method="contrastive_search", params=p, max_new_tokens=N_NEW, eos_token_id=eos)[0]
           for r in REQS]
    assert [o.token_ids for o in one] == [o.token_ids for o in outs]


def test_contrastive_search_alpha_zero_is_greedy(vlms):
    vlm = vlms["llava"]
    g = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    c = generate(vlm, REQS, method="contrastive_search", params={"penalty_alpha": 0.0}, max_new_tokens=N_NEW,
                 eos_token_id=[])
    assert [o.token_ids for o in g] == [o.token_ids for o in c]
    penal = generate(vlm, REQS, method="contrastive_search", params={"penalty_alpha": 0.9, "top_k": 6},
                     max_new_tokens=N_NEW, eos_token_id=[])
    assert [o.token_ids for o in penal] != [o.token_ids for o in g]   # the penalty does bite


def test_contrastive_search_bad_params(vlms):
    with pytest.raises(ValueError, match="penalty_alpha"):
        generate(vlms["demo"], REQS[:1], method="contrastive_search", params={"penalty_alpha": 1.5})
    with pytest.raises(ValueError, match="top_k"):
        generate(vlms["demo"], REQS[:1], method="contrastive_search", params={"top_k": 0})
