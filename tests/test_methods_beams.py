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
    free = generate(
        vlm, REQS[:1], method="contrastive_search", params=p, max_new_tokens=N_NEW, eos_token_id=[]
    )[0]
    eos = [free.token_ids[2]]
    outs = generate(vlm, REQS, method="contrastive_search", params=p, max_new_tokens=N_NEW, eos_token_id=eos)
    assert outs[0].meta["finish_reason"] == "eos"
    for r, o in zip(REQS, outs):
        assert o.error is None, o.error
        toks, why, margins = ref_contrastive_search(vlm, r, 0.6, 3, N_NEW, eos)
        same_tokens(
            o.token_ids + ([eos[0]] if o.meta["finish_reason"] == "eos" else []),
            toks + ([eos[0]] if why == "eos" else []),
            margins,
            f"{family}/{r.item_id}",
        )
    one = [
        generate(vlm, [r], method="contrastive_search", params=p, max_new_tokens=N_NEW, eos_token_id=eos)[0]
        for r in REQS
    ]
    assert [o.token_ids for o in one] == [o.token_ids for o in outs]


def test_contrastive_search_alpha_zero_is_greedy(vlms):
    vlm = vlms["llava"]
    g = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    c = generate(
        vlm,
        REQS,
        method="contrastive_search",
        params={"penalty_alpha": 0.0},
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
    assert [o.token_ids for o in g] == [o.token_ids for o in c]
    penal = generate(
        vlm,
        REQS,
        method="contrastive_search",
        params={"penalty_alpha": 0.9, "top_k": 6},
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
    assert [o.token_ids for o in penal] != [o.token_ids for o in g]  # the penalty does bite


def test_contrastive_search_bad_params(vlms):
    with pytest.raises(ValueError, match="penalty_alpha"):
        generate(vlms["demo"], REQS[:1], method="contrastive_search", params={"penalty_alpha": 1.5})
    with pytest.raises(ValueError, match="top_k"):
        generate(vlms["demo"], REQS[:1], method="contrastive_search", params={"top_k": 0})


def test_contrastive_search_shared_prefix_equals_unshared(vlms):
    """Questions of one image: the context H built from the shared prefix + suffix states equals
    the unshared prefill's."""
    for fam in ("llava", "qwen2_5_vl", "demo"):
        vlm = vlms[fam]
        reqs = [
            Request(image=REQS[0].image, prompt=q, item_id=str(i))
            for i, q in enumerate(["Is there a cup?", "Is there a dog in the image?", "what is this?"])
        ]
        kw = dict(
            method="contrastive_search",
            params={"penalty_alpha": 0.6, "top_k": 3},
            max_new_tokens=N_NEW,
            eos_token_id=[],
        )
        a = generate(vlm, reqs, share_prefix=True, **kw)
        b = generate(vlm, reqs, share_prefix=False, **kw)
        assert [o.token_ids for o in a] == [o.token_ids for o in b], fam


# --- text_cd (an amateur model) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def amateurs(tmp_path_factory, vlms):
    """Per family a second random model with the same tokenizer (another seed; the demo amateur
    is smaller), saved and loaded through load_vlm by the method's ``amateur`` parameter."""
    from tiny_models import build_tiny_instructblip, build_tiny_llava, build_tiny_qwen2_5_vl
    from vcdflow.models import load_vlm
    from vcdflow.models.demo import DemoModelConfig, build_demo_vlm

    root = tmp_path_factory.mktemp("amateurs")
    out = {}
    for fam, b in (
        ("llava", build_tiny_llava),
        ("qwen2_5_vl", build_tiny_qwen2_5_vl),
        ("instructblip", build_tiny_instructblip),
    ):
        out[fam] = str(b(root / fam, seed=1))
    model, processor = build_demo_vlm(
        DemoModelConfig(text_hidden=64, text_layers=1, vision_hidden=48), seed=1
    )
    model.save_pretrained(root / "demo")
    processor.save_pretrained(root / "demo")
    out["demo"] = str(root / "demo")
    return {f: (p, load_vlm(p)) for f, p in out.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_text_cd_obrien_matches_reference(vlms, amateurs, family):
    from reference_beams import ref_obrien

    vlm = vlms[family]
    path, ama = amateurs[family]
    for ignore in (False, True):
        p = {"amateur": path, "ignore_prefix": ignore}
        free = generate(vlm, REQS[:1], method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=[])[0]
        assert free.error is None, free.error
        eos = [free.token_ids[2]]
        outs = generate(vlm, REQS, method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=eos)
        assert outs[0].meta["finish_reason"] == "eos"
        for r, o in zip(REQS, outs):
            assert o.error is None, o.error
            toks, why, margins = ref_obrien(vlm, ama, r, 0.1, 0.5, N_NEW, eos, ignore_prefix=ignore)
            same_tokens(
                o.token_ids + ([eos[0]] if o.meta["finish_reason"] == "eos" else []),
                toks + ([eos[0]] if why == "eos" else []),
                margins,
                f"{family}/{r.item_id}/{ignore}",
            )
        one = [
            generate(vlm, [r], method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=eos)[0]
            for r in REQS
        ]
        assert [o.token_ids for o in one] == [o.token_ids for o in outs]
    plain = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    cd = generate(
        vlm,
        REQS,
        method="text_cd",
        params={"amateur": path, "beta": 3.0, "alpha": 1e-4},
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
    assert [o.token_ids for o in plain] != [o.token_ids for o in cd]  # the amateur does bite


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "demo"])
def test_text_cd_li_beams_match_reference(vlms, amateurs, family):
    from reference_beams import amateur_logits_fn, ref_beam_search
    from reference_methods import inputs, last_logits

    vlm = vlms[family]
    path, ama = amateurs[family]
    p = {"amateur": path, "variant": "li", "num_beams": 3, "st_coef": 1.0, "student_temperature": 0.5}
    free = generate(vlm, REQS[:1], method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(vlm, REQS, method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=eos)
    V = min(vlm.adapter.lm_head().weight.shape[0], ama.adapter.lm_head().weight.shape[0])
    for r, o in zip(REQS, outs):
        assert o.error is None, o.error
        inp = inputs(vlm, r.prompt, r.image, r.system)
        li = {"alpha": 0.1, "st_coef": 1.0, "tau": 0.5, "amateur": amateur_logits_fn(ama, r, True)}
        want = ref_beam_search(
            vlm,
            r,
            3,
            N_NEW,
            eos,
            length_norm="total",
            li=li,
            step_scores=lambda gen, inp=inp: last_logits(vlm, inp, gen)[:V],
        )
        assert (o.token_ids, o.meta["finish_reason"]) == want, (family, r.item_id)


def test_text_cd_li_pool_is_two_k_with_several_eos(vlms, amateurs):
    """Li's candidate pool is 2·K whatever the number of EOS ids (transformers 5 would keep 3·K
    with two): engine = reference with two EOS ids."""
    from reference_beams import amateur_logits_fn, ref_beam_search
    from reference_methods import inputs, last_logits

    vlm = vlms["llava"]
    path, ama = amateurs["llava"]
    p = {"amateur": path, "variant": "li", "num_beams": 3, "st_coef": 1.0, "student_temperature": 0.5}
    free = generate(vlm, REQS[:1], method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2], free.token_ids[3]]
    V = min(vlm.adapter.lm_head().weight.shape[0], ama.adapter.lm_head().weight.shape[0])
    for r, o in zip(
        REQS, generate(vlm, REQS, method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=eos)
    ):
        inp = inputs(vlm, r.prompt, r.image, r.system)
        li = {"alpha": 0.1, "st_coef": 1.0, "tau": 0.5, "amateur": amateur_logits_fn(ama, r, True)}
        want = ref_beam_search(
            vlm,
            r,
            3,
            N_NEW,
            eos,
            length_norm="total",
            li=li,
            step_scores=lambda gen, inp=inp: last_logits(vlm, inp, gen)[:V],
        )
        assert (o.token_ids, o.meta["finish_reason"]) == want, r.item_id


def test_text_cd_errors(vlms, amateurs, tmp_path):
    vlm = vlms["llava"]
    o = generate(vlm, REQS[:1], method="text_cd", max_new_tokens=2)[0]
    assert "needs parameter 'amateur'" in o.error
    o = generate(
        vlm, REQS[:1], method="text_cd", params={"amateur": str(tmp_path / "nope")}, max_new_tokens=2
    )[0]
    assert "no model directory" in o.error
    o = generate(
        vlm, REQS[:1], method="text_cd", params={"amateur": amateurs["qwen2_5_vl"][0]}, max_new_tokens=2
    )[0]
    assert "tokenizers differ" in o.error
    with pytest.raises(ValueError, match="variant"):
        generate(vlm, REQS[:1], method="text_cd", params={"variant": "both"})
    o = generate(
        vlm,
        REQS[:1],
        method="text_cd",
        params={"amateur": amateurs["llava"][0], "variant": "li"},
        do_sample=True,
        max_new_tokens=2,
    )[0]
    assert "do_sample=False" in o.error


# --- OPERA -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_opera_matches_reference(vlms, family):
    """OPERA's beams (candidate look-ahead, last-layer attention penalty) against a full-recompute
    port; 12 tokens so that the column-product penalty (window > 10) is used, not only the image
    bonus; a small σ·window keeps the products in range on random weights."""
    from reference_beams import ref_opera

    vlm = vlms[family]
    p = {"num_beams": 3, "num_attn_candidates": 3, "scale_factor": 50.0}
    n_new = 12
    outs = generate(vlm, REQS[:2], method="opera", params=p, max_new_tokens=n_new, eos_token_id=[])
    for r, o in zip(REQS[:2], outs):
        assert o.error is None, o.error
        want, back = ref_opera(vlm, r, 3, 3, 50.0, 1.0, n_new, [])
        assert (o.token_ids, o.meta["finish_reason"]) == want, (family, r.item_id)
        assert o.meta["opera_rollbacks"] == back == []


@pytest.mark.parametrize("family", ["instructblip"])
def test_opera_repetition_penalty_and_bos_length_match_reference(vlms, family):
    """OPERA's InstructBLIP setting under protocol opera (LAVIS generate: θ = 1.5 over one BOS and the
    generated ids, 4.29's total length with one prompt id) against the port: the penalty on each
    beam's log-probs over its own ids, the normalisation 1 + generated; and it changes the output."""
    from reference_beams import ref_opera
    from vcdflow.protocols import get_protocol

    vlm = vlms[family]
    declared = dict(get_protocol("opera").resolve("opera", "instructblip", "chair").params)
    assert {k: declared[k] for k in ("repetition_penalty", "repetition_context", "length_norm")} == {
        "repetition_penalty": 1.5,
        "repetition_context": "generated",
        "length_norm": "total_bos",
    }
    p = {"num_beams": 3, "num_attn_candidates": 3, **declared}
    bos = vlm.adapter.tokenizer.bos_token_id
    outs = generate(vlm, REQS[:2], method="opera", params=p, max_new_tokens=12, eos_token_id=[])
    plain = generate(
        vlm,
        REQS[:2],
        method="opera",
        params={**p, "repetition_penalty": 1.0},
        max_new_tokens=12,
        eos_token_id=[],
    )
    for r, o in zip(REQS[:2], outs):
        want, _ = ref_opera(
            vlm,
            r,
            3,
            3,
            50.0,
            1.0,
            12,
            [],
            theta=1.5,
            prefix=[bos],
            prompt_len=1,
            fp16=declared.get("penalty_dtype") == "float16",
        )
        assert (o.token_ids, o.meta["finish_reason"]) == want, (family, r.item_id)
    assert [o.token_ids for o in outs] != [o.token_ids for o in plain]


def test_opera_eos_penalty_and_batching(vlms):
    """EOS hits end hypotheses as in the port; the penalty weight changes the output (α = 0 is a
    beam search over the top-N_can candidates only, not plain beams); batch 1 = batch 3."""
    from reference_beams import ref_opera

    vlm = vlms["llava"]
    p = {"num_beams": 3, "num_attn_candidates": 3}
    free = generate(vlm, REQS[:1], method="opera", params=p, max_new_tokens=6, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(vlm, REQS, method="opera", params=p, max_new_tokens=6, eos_token_id=eos)
    assert outs[0].meta["finish_reason"] == "eos"
    for r, o in zip(REQS, outs):
        assert (o.token_ids, o.meta["finish_reason"]) == ref_opera(vlm, r, 3, 3, 50.0, 1.0, 6, eos)[0]
    one = [generate(vlm, [r], method="opera", params=p, max_new_tokens=6, eos_token_id=eos)[0] for r in REQS]
    assert [o.token_ids for o in one] == [o.token_ids for o in outs]
    kw = dict(method="opera", max_new_tokens=12, eos_token_id=[])
    a0 = generate(vlm, REQS, params={**p, "penalty_weights": 0.0}, **kw)
    a1 = generate(vlm, REQS, params=p, **kw)
    beams = generate(
        vlm, REQS, method="greedy", num_beams=3, length_norm="total", max_new_tokens=12, eos_token_id=[]
    )
    assert [o.token_ids for o in a0] != [o.token_ids for o in a1]
    assert [o.token_ids for o in a0] != [o.token_ids for o in beams]


@pytest.mark.parametrize("family", ["llava", "demo"])
def test_opera_retrospection_matches_reference(vlms, family):
    """Rollback: with a low threshold it fires (the request's generated columns masked out,
    the restored beams re-fed from the prompt, the step re-chosen with the earlier choices banned)
    while another request shares the batch; tokens and the positions rolled back to equal the
    full-recompute port's."""
    from reference_beams import ref_opera

    vlm = vlms[family]
    n_new = 14
    fired = 0
    # σ = 1: on random weights the newest column then wins, so the location reaches 10
    for thr in (0, 1):
        p = {"num_beams": 2, "num_attn_candidates": 2, "threshold": thr, "scale_factor": 1.0}
        outs = generate(
            vlm, [REQS[0], REQS[2]], method="opera", params=p, max_new_tokens=n_new, eos_token_id=[]
        )
        r, o = (REQS[0], outs[0]) if thr == 0 else (REQS[2], outs[1])
        assert o.error is None, o.error
        want, back = ref_opera(vlm, r, 2, 2, 1.0, 1.0, n_new, [], threshold=thr)
        assert (o.token_ids, o.meta["finish_reason"]) == want, (family, r.item_id, thr)
        assert o.meta["opera_rollbacks"] == back, (family, r.item_id, thr)
        fired += len(back)
    assert fired > 0  # the rollback path was exercised


def test_text_cd_sampling_seeded_and_batch_invariant(vlms, amateurs):
    vlm = vlms["demo"]
    p = {"amateur": amateurs["demo"][0]}
    kw = dict(
        method="text_cd",
        params=p,
        do_sample=True,
        temperature=0.9,
        top_p=0.9,
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
    big = generate(vlm, REQS * 2, seed=5, batch_size=16, **kw)
    one = generate(vlm, REQS * 2, seed=5, batch_size=1, **kw)
    other = generate(vlm, REQS * 2, seed=6, batch_size=16, **kw)
    assert [o.token_ids for o in big] == [o.token_ids for o in one]
    assert [o.token_ids for o in big] != [o.token_ids for o in other]


def test_text_cd_shared_vocabulary_prefix(vlms, tmp_path):
    """Amateur vocabulary alignment: an amateur whose tokenizer has two more words (ids past the expert's
    vocabulary) is compared on the shared id prefix only; equals the reference, which cuts both
    logit vectors to min(V_e, V_a)."""
    from reference_beams import ref_obrien
    from vcdflow.models import load_vlm
    from vcdflow.models.demo import DemoModelConfig, build_demo_vlm

    vlm = vlms["demo"]
    model, processor = build_demo_vlm(
        DemoModelConfig(text_hidden=64, text_layers=1, vision_hidden=48, extra_words=("zebra", "kite")),
        seed=2,
    )
    model.save_pretrained(tmp_path / "big")
    processor.save_pretrained(tmp_path / "big")
    ama = load_vlm(tmp_path / "big")
    assert ama.adapter.lm_head().weight.shape[0] > vlm.adapter.lm_head().weight.shape[0]
    outs = generate(
        vlm,
        REQS,
        method="text_cd",
        params={"amateur": str(tmp_path / "big"), "beta": 1.0},
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
    for r, o in zip(REQS, outs):
        assert o.error is None, o.error
        toks, why, margins = ref_obrien(vlm, ama, r, 0.1, 1.0, N_NEW, [])
        same_tokens(o.token_ids, toks, margins, r.item_id)


def test_text_cd_li_greedy_matches_reference(vlms, amateurs):
    """Li et al. with num_beams = 1: their greedy_search, argmax z_e − st_coef·z_a/τ (raw logits,
    no EntrP head), the amateur seeing only the last prompt token."""
    from reference_beams import amateur_logits_fn
    from reference_methods import inputs, last_logits

    vlm = vlms["llava"]
    path, ama = amateurs["llava"]
    p = {"amateur": path, "variant": "li", "num_beams": 1, "st_coef": 1.0, "student_temperature": 0.5}
    outs = generate(vlm, REQS, method="text_cd", params=p, max_new_tokens=N_NEW, eos_token_id=[])
    for r, o in zip(REQS, outs):
        inp, am = inputs(vlm, r.prompt, r.image, r.system), amateur_logits_fn(ama, r, True)
        gen, margins = [], []
        with torch.no_grad():
            for _ in range(N_NEW):
                se, sa = last_logits(vlm, inp, gen), am(gen)
                V = min(se.shape[-1], sa.shape[-1])
                s = se[:V] - 1.0 * sa[:V] / 0.5
                top2 = torch.topk(s, 2).values
                margins.append(float(top2[0] - top2[1]))
                gen.append(int(s.argmax()))
        same_tokens(o.token_ids, gen, margins, r.item_id)


def test_opera_penalty_float16_is_the_references_regime():
    """The column scores as OPERA's fp16 code stores them: with σ = 400 on a 12-token window the
    long columns' products pass 65504 (φ = +inf) while float32 gives a finite φ; short columns
    are fp16 numbers ≤ 6.6e-3. φ and loc equal the separately written fp16 port's."""
    from reference_beams import _fp16_columns
    from vcdflow.decoding.methods.opera import opera_penalty

    g = torch.Generator().manual_seed(0)
    P, n, scale = 6, 12, 400.0
    att = torch.rand(4, P + n, P + n, generator=g).tril()  # [H, T, T] causal rows
    att = att / att.sum(-1, keepdim=True)
    A = att.max(0).values  # what the hooks keep per row
    hist = [(A[P + i, P : P + i + 1], A[P + i].sum(), A[P + i, :P].sum()) for i in range(n)]
    phi16, loc16, _ = opera_penalty(hist, scale, torch.float16)
    phi32, _, _ = opera_penalty(hist, scale, torch.float32)
    _, cols = _fp16_columns(att, P, scale)
    assert (phi16, loc16) == (max(cols), cols.index(max(cols)))
    assert phi16 == float("inf") and 0 < phi32 < float("inf")
    assert all(c == float("inf") or c <= 6.6e-3 for c in cols) and any(c != float("inf") for c in cols)


def test_opera_float16_penalty_matches_reference(vlms):
    """penalty_dtype float16 (the default under protocol: opera) against the fp16 port: at σ = 110
    some candidates' products overflow (eliminated) and the tokens leave float32's."""
    from reference_beams import ref_opera

    vlm = vlms["llava"]
    p = {"num_beams": 3, "num_attn_candidates": 3, "scale_factor": 110.0}
    r = REQS[2]
    f16 = generate(
        vlm, [r], method="opera", params={**p, "penalty_dtype": "float16"}, max_new_tokens=12, eos_token_id=[]
    )[0]
    f32 = generate(vlm, [r], method="opera", params=p, max_new_tokens=12, eos_token_id=[])[0]
    want, back = ref_opera(vlm, r, 3, 3, 110.0, 1.0, 12, [], fp16=True)
    assert (f16.token_ids, f16.meta["finish_reason"]) == want
    assert f16.token_ids != f32.token_ids
    from vcdflow.protocols import get_protocol

    res = get_protocol("opera").resolve(method="opera", family="llava", benchmark="chair")
    assert res.params["penalty_dtype"] == "float16" and "utils.py:3424-3428" in res.sources["params"]
