"""Engine capabilities of vcdflow.decoding.beams, each against a plain computation:

* Beam search: with plain scores (the greedy method) the engine's beams equal Hugging Face's
  own ``model.generate(num_beams=k, do_sample=False)`` on the tiny model of every family and the
  demo LLaVA, with EOS hits, several length penalties and every ``early_stopping`` value; the
  ``"total"`` length normalisation against a literal batch-1 port of transformers 4.29's
  ``BeamHypotheses`` (prompt + generated length);
* beams over a 2-branch method (each beam carries both branches) against the same port on the
  combined scores — the row re-indexing protocol (``Choice``: rows repeated, reordered, dropped).
"""

from __future__ import annotations

import pytest
import torch

from reference_beams import hf_inputs, ref_beam_search
from reference_methods import build_vlms, image
from vcdflow.decoding import Request, generate

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 6


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("beams"))


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(
        image=image(3, 120, 70),
        prompt="what is this red dog on the table with a cat?",
        item_id="c",
        system="You are an expert.",
    ),
]


def _eos_for(vlm, req):
    """An EOS id the beams actually meet: the third token of a free beam decode."""
    free = generate(vlm, [req], method="greedy", max_new_tokens=N_NEW, eos_token_id=[], num_beams=3)[0]
    return [free.token_ids[2]]


def hf_beams(vlm, req, eos, **kw):
    inp = hf_inputs(vlm, req)
    n = inp["input_ids"].shape[1]
    with torch.inference_mode():
        out = vlm.model.generate(
            **inp,
            do_sample=False,
            max_new_tokens=N_NEW,
            eos_token_id=eos,
            pad_token_id=vlm.adapter.pad_token_id,
            num_return_sequences=1,
            **kw,
        )
    toks = out[0, n:].tolist()
    if eos[0] in toks:
        return toks[: toks.index(eos[0])], "eos"
    return toks, "length"


@pytest.mark.parametrize("family", FAMILIES)
def test_beams_equal_hf_generate(vlms, family):
    vlm = vlms[family]
    reasons = set()
    for req in REQS:
        eos = _eos_for(vlm, req)
        for kw in (
            {"num_beams": 3},
            {"num_beams": 2, "length_penalty": 0.0},
            {"num_beams": 4, "length_penalty": 2.0, "early_stopping": True},
            {"num_beams": 3, "length_penalty": -1.0, "early_stopping": "never"},
        ):
            want = hf_beams(vlm, req, eos, **kw)
            o = generate(vlm, [req, REQS[0]], method="greedy", max_new_tokens=N_NEW, eos_token_id=eos, **kw)[
                0
            ]
            assert o.error is None, o.error
            assert (o.token_ids, o.meta["finish_reason"]) == want, (family, req.item_id, kw)
            reasons.add(want[1])
    assert reasons == {"eos", "length"}, reasons  # both ways of finishing were exercised


@pytest.mark.parametrize("family", ["llava", "demo"])
def test_total_length_norm_matches_a_429_port(vlms, family):
    """length_norm="total": hypotheses scored Σ log p / (prompt + generated)^lp (transformers
    4.29's ``BeamHypotheses.add`` with the prompt ids in ``hyp``); a separate batch-1 port."""
    vlm = vlms[family]
    for req in REQS:
        eos = _eos_for(vlm, req)
        for lp in (1.0, 3.0):
            want = ref_beam_search(vlm, req, 3, N_NEW, eos, length_penalty=lp, length_norm="total")
            o = generate(
                vlm,
                [req],
                max_new_tokens=N_NEW,
                eos_token_id=eos,
                num_beams=3,
                length_penalty=lp,
                length_norm="total",
            )[0]
            assert (o.token_ids, o.meta["finish_reason"]) == want
            gen = ref_beam_search(vlm, req, 3, N_NEW, eos, length_penalty=lp, length_norm="generated")
            o2 = generate(vlm, [req], max_new_tokens=N_NEW, eos_token_id=eos, num_beams=3, length_penalty=lp)[
                0
            ]
            assert (o2.token_ids, o2.meta["finish_reason"]) == gen


class _LavisPenalty:
    """LAVIS's InstructBLIP ``generate`` → the LLM's ``generate(inputs_embeds=…,
    repetition_penalty=θ)`` in transformers 4.29: ``input_ids`` start as one BOS, so the penalty sees
    BOS + the generated ids, never the prompt — written as a HF logits processor over the ids after
    the prompt (``n``: prompt length)."""

    def __init__(self, theta, n, bos):
        from transformers import RepetitionPenaltyLogitsProcessor

        self.proc, self.n, self.bos = RepetitionPenaltyLogitsProcessor(theta), n, bos

    def __call__(self, input_ids, scores):
        bos = torch.full((input_ids.shape[0], 1), self.bos, dtype=input_ids.dtype)
        return self.proc(torch.cat([bos, input_ids[:, self.n :]], 1), scores)


@pytest.mark.parametrize("family", ["llava", "instructblip"])
def test_repetition_penalty_equals_hf_generate(vlms, family):
    """The greedy method's ``repetition_penalty`` (θ = 1.5, LAVIS's default) equals transformers'
    own ``generate``: greedy (processor on the logits) and 3 beams (processor on each beam's
    log-probs over its own ids); ``repetition_context: prompt`` = ``generate(repetition_penalty=θ)``
    over the prompt ids, ``generated`` = the LAVIS semantics (BOS + generated ids). The penalty
    changes the output somewhere (it is not a no-op here)."""
    from transformers import LogitsProcessorList

    vlm = vlms[family]
    bos = vlm.adapter.tokenizer.bos_token_id
    changed = False
    for req in REQS:
        n = hf_inputs(vlm, req)["input_ids"].shape[1]
        plain = generate(vlm, [req], max_new_tokens=N_NEW, eos_token_id=[])[0].token_ids
        for beams in (1, 3):
            for context in ("prompt", "generated"):
                kw = (
                    {"repetition_penalty": 1.5}
                    if context == "prompt"
                    else {"logits_processor": LogitsProcessorList([_LavisPenalty(1.5, n, bos)])}
                )
                want = hf_beams(vlm, req, [vlm.adapter.eos_token_ids[0]], num_beams=beams, **kw)[0]
                got = generate(
                    vlm,
                    [req, REQS[0]],
                    params={"repetition_penalty": 1.5, "repetition_context": context},
                    max_new_tokens=N_NEW,
                    eos_token_id=[],
                    num_beams=beams,
                )[0]
                assert got.error is None, got.error
                assert got.token_ids == want[:N_NEW], (family, req.item_id, beams, context)
                changed |= beams == 1 and got.token_ids != plain
    assert changed


@pytest.mark.parametrize("family", ["instructblip"])
def test_total_bos_length_norm_matches_a_429_port(vlms, family):
    """length_norm="total_bos": Σ log p / (1 + generated)^lp — 4.29's ``BeamHypotheses`` when
    ``generate`` got ``inputs_embeds`` only (one BOS in ``input_ids``); a separate batch-1 port,
    and different from "total" somewhere."""
    vlm = vlms[family]
    differs = False
    for req in REQS:
        eos = _eos_for(vlm, req)
        for lp in (1.0, 3.0):
            want = ref_beam_search(vlm, req, 3, N_NEW, eos, length_penalty=lp, length_norm="total_bos")
            o = generate(
                vlm,
                [req],
                max_new_tokens=N_NEW,
                eos_token_id=eos,
                num_beams=3,
                length_penalty=lp,
                length_norm="total_bos",
            )[0]
            assert (o.token_ids, o.meta["finish_reason"]) == want
            total = ref_beam_search(vlm, req, 3, N_NEW, eos, length_penalty=lp, length_norm="total")
            differs |= total != want
    assert differs


def test_beams_carry_every_branch(vlms):
    """A 2-branch method with beams: each beam's score is combine() of both branches; equals the
    plain port run on the combined scores."""
    vlm = vlms["llava"]
    req = Request(
        image=image(2, 64, 64), prompt="Is there a dog?", item_id="b", contrast_prompt="Is there a cat?"
    )
    want = ref_beam_search(vlm, req, 3, N_NEW, [], contrast={"alpha": 1.0, "beta": 0.1})
    outs = generate(
        vlm,
        [REQS[0], req],
        method="contrast",
        params={"alpha": 1.0, "beta": 0.1},
        max_new_tokens=N_NEW,
        eos_token_id=[],
        num_beams=3,
    )
    assert (outs[1].token_ids, outs[1].meta["finish_reason"]) == want


def test_bad_beam_arguments(vlms):
    vlm = vlms["demo"]
    with pytest.raises(ValueError, match="num_beams"):
        generate(vlm, REQS[:1], num_beams=0)
    with pytest.raises(ValueError, match="length_norm"):
        generate(vlm, REQS[:1], num_beams=2, length_norm="prompt")
    with pytest.raises(ValueError, match="early_stopping"):
        generate(vlm, REQS[:1], num_beams=2, early_stopping="sometimes")
    with pytest.raises(ValueError, match="greedy mode"):
        generate(vlm, REQS[:1], method="vcd", num_beams=2, do_sample=True)


def test_beams_with_forward_hooks(vlms):
    """Beams over a method whose scores come from its forward hooks (early-exit logits of the
    penultimate decoder layer, vcdflow.decoding.hooks.LayerCapture): the captures follow every
    beam re-ordering (``select``); equals the port fed the same early-exit scores, recomputed."""
    from dataclasses import dataclass
    from typing import ClassVar

    from reference_methods import forward, inputs
    from vcdflow.decoding.hooks import LayerCapture
    from vcdflow.decoding.methods.base import Method

    @dataclass(frozen=True)
    class Exit(Method):
        name: ClassVar[str] = "test_beam_exit"
        requires_image: ClassVar[bool] = False

        def forward_hooks(self, adapter, params):
            return LayerCapture(layers=[-2])

        def combine(self, logits, step, state):
            ad = state.contexts[0].adapter
            h = state.hooks.last[-2][state.rows[:, 0]]
            return ad.lm_head()(ad.final_norm()(h)).float()

        def plausibility(self, logits, step, state):
            return None

    for fam in ("llava", "qwen2_5_vl"):
        vlm = vlms[fam]
        ad = vlm.adapter
        for req in REQS:
            inp = inputs(vlm, req.prompt, req.image, req.system)

            def early(gen, inp=inp):
                got = {}
                h = ad.decoder_layers()[-2].register_forward_hook(
                    lambda m, a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o)
                )
                try:
                    forward(vlm, inp, gen)
                finally:
                    h.remove()
                return ad.lm_head()(ad.final_norm()(got["h"][0, -1])).float()

            want = ref_beam_search(vlm, req, 3, N_NEW, [], step_scores=early)
            o = generate(
                vlm, [REQS[1], req], method=Exit(), max_new_tokens=N_NEW, eos_token_id=[], num_beams=3
            )[1]
            assert (o.token_ids, o.meta["finish_reason"]) == want, (fam, req.item_id)
