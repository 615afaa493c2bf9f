"""Multi-image branches (``Branch.image`` a list) against the Hugging Face model called directly
on the same multi-image processor output (batch 1, no cache), and CARVE's code-faithful variants
(``variant="code"``: original + refined image in one prompt; ``"code_v4"``: all-step maps) against
the plain references in tests/reference_multi_image.py on the tiny LLaVA, Qwen2.5-VL and the demo
LLaVA; InstructBLIP refuses a multi-image branch naming its family; seeding and batch-size
invariance; bad input."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import reference_multi_image as rm
from reference_methods import assert_same_as_reference, build_vlms, image
from vcdflow.decoding import Branch, Request, generate
from vcdflow.decoding.methods.base import Method

FAMILIES = ["llava", "qwen2_5_vl", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("multi_image"))


REQS = [
    Request(
        image=image(1, 80, 100),
        prompt="Is there a cup in the image?",
        item_id="a",
        contrast_image=image(7, 64, 48),
    ),
    Request(
        image=image(2, 64, 64),
        prompt="Is there a dog?",
        item_id="b",
        system="You are an expert.",
        contrast_image=image(5, 90, 60),
    ),
    Request(
        image=image(3, 120, 70),
        prompt="what is this red dog on the table with a cat?",
        item_id="c",
        contrast_image=image(4, 50, 90),
    ),
]


@dataclass(frozen=True)
class TwoImages(Method):
    """Test method: one branch holding the request's image and its contrast image."""

    name = "two_images"

    def branches(self, request, ctx):
        return [
            Branch(
                prompt=request.prompt, image=[request.image, request.contrast_image], system=request.system
            )
        ]

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None


def _engine_prefill(ad, branches):
    encs = [ad.encode(b) for b in branches]
    ids, mask = ad.collate(encs)
    pos, _ = ad.prefill_positions(ids, mask, encs)
    logits, _ = ad.forward(ad.prefill_embeds(ids, encs), mask, pos, None)
    return encs, logits


# --- the multi-image seam against the HF model ------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_multi_image_prefill_equals_hf_direct(vlms, family):
    """The adapter's encoding of a two-image branch = the processor's (ids, pixels, grids); its
    prefill logits = the HF model called directly on that processor output; batched with a
    single-image and a text-only row (left padding, features regrouped per row) nothing changes."""
    vlm = vlms[family]
    ad = vlm.adapter
    for r in REQS:
        inp = rm.mi_inputs(vlm, r.prompt, [r.image, r.contrast_image], r.system)
        (enc,), logits = _engine_prefill(
            ad, [Branch(prompt=r.prompt, image=[r.image, r.contrast_image], system=r.system)]
        )
        assert enc.input_ids.tolist() == inp["input_ids"][0].tolist()
        n_img = int((enc.input_ids == ad.image_token_id).sum())
        one = rm.mi_inputs(vlm, r.prompt, [r.image], r.system)
        assert n_img > int((one["input_ids"][0] == ad.image_token_id).sum()) > 0  # both images are in
        assert torch.equal(enc.pixel_values.float(), inp["pixel_values"].float())
        if family == "qwen2_5_vl":
            assert torch.equal(enc.extras["image_grid_thw"], inp["image_grid_thw"])
            assert enc.extras["image_grid_thw"].shape[0] == 2
        want = rm.hf_logits(vlm, inp)
        assert torch.allclose(logits[0], want, atol=1e-4, rtol=1e-4), float((logits[0] - want).abs().max())
        assert torch.allclose(rm.mi_logits(vlm, inp, []), want, atol=1e-4, rtol=1e-4)
    # a batch mixing two-image, one-image and text-only rows
    r0, r1 = REQS[0], REQS[2]
    mixed = [
        Branch(prompt=r0.prompt, image=[r0.image, r0.contrast_image]),
        Branch(prompt=r1.prompt, image=r1.image),
        Branch(prompt=r1.prompt),
        Branch(prompt=r1.prompt, image=[r1.contrast_image, r1.image]),
    ]
    _, batched = _engine_prefill(ad, mixed)
    for k, b in enumerate(mixed):
        _, alone = _engine_prefill(ad, [b])
        assert torch.allclose(batched[k], alone[0], atol=1e-4, rtol=1e-4), (family, k)
    # image order matters (the second image is not dropped or merged)
    assert not torch.allclose(
        batched[3], _engine_prefill(ad, [Branch(prompt=r1.prompt, image=[r1.image, r1.contrast_image])])[1][0]
    )


#: a fourth request with the first one's two images: its two-image prefix is shared with request a
SHARED = REQS + [
    Request(image=REQS[0].image, contrast_image=REQS[0].contrast_image, prompt="what is this?", item_id="d")
]


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_image_greedy_matches_hf_direct(vlms, family):
    """generate() with a two-image branch (batch 4, KV cache, shared two-image prefix) = full-recompute
    greedy of the HF model on the processor output, and = the embedding-level reference."""
    vlm = vlms[family]
    m = TwoImages()
    free = generate(vlm, REQS[:1], method=m, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(vlm, SHARED, method=m, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16)
    assert outs[0].meta["finish_reason"] == "eos"
    for r, o in zip(SHARED, outs):
        assert o.error is None, o.error
        inp = rm.mi_inputs(vlm, r.prompt, [r.image, r.contrast_image], r.system)
        assert o.input_ids == inp["input_ids"][0].tolist()
        ref = rm.greedy(lambda gen: rm.mi_logits(vlm, inp, gen), N_NEW, eos)
        assert_same_as_reference(o, ref, eos, f"two_images/{family}/{r.item_id}")
        if not any(t == vlm.adapter.image_token_id for t in ref.tokens):  # HF would read it as an image
            hf = rm.greedy(lambda gen: rm.hf_logits(vlm, inp, gen), N_NEW, eos)
            assert_same_as_reference(o, hf, eos, f"two_images/{family}/{r.item_id} (HF direct)")
    one = generate(
        vlm, SHARED, method=m, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=1, share_prefix=False
    )
    assert [o.token_ids for o in one] == [o.token_ids for o in outs]


def test_multi_image_instructblip_refused(vlms):
    vlm = vlms["instructblip"]
    out = generate(vlm, REQS[:1], method=TwoImages(), max_new_tokens=2)[0]
    assert out.error == (
        "the instructblip family takes one image per prompt (one Q-Former query set): a branch "
        "with 2 images (multi-image) is not supported"
    )
    # a one-element list is the single image
    r = REQS[0]
    a = vlm.adapter.encode(Branch(prompt=r.prompt, image=[r.image]))
    b = vlm.adapter.encode(Branch(prompt=r.prompt, image=r.image))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)


# --- CARVE code-faithful variants ------------------------------------------------------------------
def carve_params(vlm, variant):
    p = {"variant": variant}
    if variant == "code_v4":
        p["probe_tokens"] = 4
    if vlm.family == "qwen2_5_vl":
        p.update(layers=[1, 0, 7], version="v2")
    return p


CASES = [(v, f) for v in ("code", "code_v4") for f in FAMILIES]


@pytest.mark.parametrize("variant,family", CASES)
def test_carve_code_variants_match_reference(vlms, variant, family):
    vlm = vlms[family]
    params = carve_params(vlm, variant)
    free = generate(vlm, REQS[:1], method="carve", params=params, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(
        vlm, REQS, method="carve", params=params, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16
    )
    if variant == "code":  # code_v4: the EOS id also ends the probes, so the maps (and the answer) change
        assert outs[0].meta["finish_reason"] == "eos"
    for r, o in zip(REQS, outs):
        assert o.error is None, o.error
        ref = rm.ref_carve(vlm, r, params, max_new_tokens=N_NEW, eos=eos, probe_eos=eos)
        assert o.meta["carve_bbox"] == ref.meta["carve_bbox"], (o.meta["carve_bbox"], ref.meta["carve_bbox"])
        assert o.meta["carve_variant"] == variant
        if variant == "code_v4":
            assert o.meta["carve_steps"] == ref.meta["carve_steps"]
        inp = rm.mi_inputs(vlm, r.prompt, [r.image, ref.meta["refined"]], r.system)
        assert o.input_ids == inp["input_ids"][0].tolist()  # the two-image final prompt
        assert_same_as_reference(o, ref, eos, f"carve/{variant}/{family}/{r.item_id}")


def test_carve_v4_one_step_is_the_first_step_map(vlms):
    """code_v4 with one probe step fuses step 0 alone (weight 1): the same mask as ``code``'s
    step-0 map (there from ``Runner.image_attention``, here from the attention capture); with more probe
    tokens every step is captured."""
    vlm = vlms["llava"]
    one = generate(
        vlm,
        REQS,
        method="carve",
        params={"variant": "code_v4", "probe_tokens": 1},
        max_new_tokens=2,
        eos_token_id=[],
    )
    first = generate(vlm, REQS, method="carve", params={"variant": "code"}, max_new_tokens=2, eos_token_id=[])
    assert [o.meta["carve_bbox"] for o in one] == [o.meta["carve_bbox"] for o in first]
    assert all(o.meta["carve_steps"] == [1, 1] for o in one)
    many = generate(
        vlm,
        REQS,
        method="carve",
        params={"variant": "code_v4", "probe_tokens": 6},
        max_new_tokens=2,
        eos_token_id=[],
    )
    assert all(o.meta["carve_steps"] == [6, 6] for o in many)


@pytest.mark.parametrize("family", FAMILIES)
def test_carve_variants_sampling_seed_and_batch_size(vlms, family):
    vlm = vlms[family]
    for variant in ("code", "code_v4"):
        kw = dict(
            method="carve",
            params=carve_params(vlm, variant),
            do_sample=True,
            temperature=0.9,
            top_p=0.95,
            max_new_tokens=N_NEW,
            eos_token_id=[],
        )
        a = generate(vlm, REQS, seed=4, batch_size=16, **kw)
        b = generate(vlm, REQS, seed=4, batch_size=1, **kw)
        c = generate(vlm, REQS, seed=5, batch_size=16, **kw)
        assert all(o.error is None for o in a), [o.error for o in a]
        assert [o.token_ids for o in a] == [o.token_ids for o in b], (family, variant)
        assert [o.meta for o in a] == [o.meta for o in b]
        assert [o.token_ids for o in a] != [o.token_ids for o in c], (family, variant)


def test_carve_variant_bad_input(vlms):
    vlm = vlms["llava"]
    with pytest.raises(
        ValueError, match="parameter 'variant' of method 'carve' must be one of paper, code, code_v4"
    ):
        generate(vlm, REQS[:1], method="carve", params={"variant": "v4"})
    with pytest.raises(ValueError, match="parameter 'probe_tokens' of method 'carve' must be >= 1"):
        generate(vlm, REQS[:1], method="carve", params={"variant": "code_v4", "probe_tokens": 0})
    with pytest.raises(ValueError, match="the code's v4 is variant='code_v4'"):
        generate(vlm, REQS[:1], method="carve", params={"version": "v4"})
    out = generate(
        vlms["instructblip"], REQS[:1], method="carve", params={"variant": "code"}, max_new_tokens=2
    )[0]
    assert out.error.startswith("method 'carve' needs a spatial grid of image tokens")
    out = generate(
        vlm, REQS[:1], method="carve", params={"variant": "code_v4", "layers": [9]}, max_new_tokens=2
    )[0]
    assert out.error == "method 'carve': none of the layers [9] exists (the model has 2 layers)"


@pytest.mark.parametrize("maps,family", [("t_end", "llava"), ("t_full", "qwen2_5_vl")])
def test_carve_paper_pass_with_step_maps_matches_reference(vlms, maps, family):
    """The map setting apart from the final pass: Algorithm 1's refined image alone with the
    paper's t_end / T_full maps (``carve_table1`` names the column) against the batch-1 no-cache
    reference; on Qwen with CARVE's 448² budget on the refined image (``max_pixels``)."""
    vlm = vlms[family]
    params = {"variant": "paper", "maps": maps, "probe_tokens": 4}
    if family == "qwen2_5_vl":
        params.update(layers=[1, 0, 7], version="v2", max_pixels=56 * 56 * 2)
    outs = generate(
        vlm, REQS, method="carve", params=params, max_new_tokens=N_NEW, eos_token_id=[], batch_size=16
    )
    for r, o in zip(REQS, outs):
        assert o.error is None, o.error
        ref = rm.ref_carve(vlm, r, params, max_new_tokens=N_NEW)
        assert (
            o.meta["carve_bbox"] == ref.meta["carve_bbox"]
            and o.meta["carve_steps"] == ref.meta["carve_steps"]
        )
        assert (o.meta["carve_maps"], o.meta["carve_table1"]) == (
            maps,
            {"t_end": "t_end", "t_full": "T_full"}[maps],
        )
        inp = rm.mi_inputs(vlm, r.prompt, [ref.meta["refined"]], r.system)
        assert o.input_ids == inp["input_ids"][0].tolist()  # the refined image alone
        assert_same_as_reference(o, ref, [], f"carve/paper/{maps}/{family}/{r.item_id}")


def test_carve_protocol_defaults_to_the_headline_column(vlms):
    """Under CARVE's protocol ``carve`` runs t_end maps (Table 1's headline) and Qwen at 448²;
    the code variants keep their own maps; t_end differs from t_start's mask on the tiny model."""
    from vcdflow.protocols import get_protocol, preprocess_image

    proto = get_protocol("carve")
    qwen = proto.resolve(method="carve", family="qwen2_5_vl", benchmark="pope")
    assert qwen.params["paper_maps"] == "t_end" and qwen.params["max_pixels"] == 256 * 28 * 28
    assert (
        qwen.image_preprocess == "qwen_max_pixels_448"
        and "pipeline.py:46-51" in qwen.sources["image_preprocess"]
    )
    assert (
        proto.resolve(method="greedy", family="qwen2_5_vl", benchmark="pope").image_preprocess
        == "qwen_max_pixels_448"
    )
    from PIL import Image

    assert preprocess_image(Image.new("RGB", (640, 480)), "qwen_max_pixels_448").size == (
        504,
        364,
    )  # 18×13 = 234 merged tokens
    vlm = vlms["llava"]
    p = dict(proto.resolve(method="carve", family="llava", benchmark="pope").params, probe_tokens=4)

    def run(**kw):
        return generate(vlm, REQS, method="carve", params={**p, **kw}, max_new_tokens=2, eos_token_id=[])

    end, start, v4 = run(), run(maps="t_start"), run(variant="code_v4")
    assert [o.meta["carve_maps"] for o in end + start + v4] == ["t_end"] * 3 + ["t_start"] * 3 + [
        "t_full"
    ] * 3
    assert [o.meta["carve_bbox"] for o in end] != [o.meta["carve_bbox"] for o in start]
    assert v4[0].meta["carve_table1"] is None
