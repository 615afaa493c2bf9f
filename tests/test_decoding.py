"""The batched, cached engine against the plain reference decoder (tests/reference_decoder.py),
batch-size invariance, seeding, early stops and bad input — on a tiny random LLaVA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reference_decoder import ref_generate
from method_cases import COVERED_ELSEWHERE as _COVERED_ELSEWHERE, runtime_params
from tiny_models import build_tiny_llava
from vcdflow.decoding import METHODS, Request, generate
from vcdflow.models import load_vlm

N_NEW = 6
# parameters that make the tiny tests cheap or the contrast visible; everything else: defaults
PARAMS = {
    "m3id": {"lambda": 0.5},
    "code": {"description_max_new_tokens": 5},
    "selfaug": {"sas_max_new_tokens": 5},
}


def _img(seed, w, h):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def vlm(model_dir):
    torch.set_num_threads(1)
    return load_vlm(model_dir)


@pytest.fixture(scope="module")
def requests_():
    a, b, c = _img(1, 80, 100), _img(2, 64, 64), _img(3, 120, 70)
    return [
        Request(
            image=a,
            prompt="Is there a cup in the image?",
            item_id="a",
            contrast_prompt="Is there a dog in the image?",
            contrast_images=[b, c],
        ),
        Request(image=b, prompt="Describe", item_id="b", contrast_image=c, contrast_images=[a]),
        Request(
            image=c,
            prompt="what is this red dog doing on the table with a cat?",
            item_id="c",
            system="You are an expert.",
            contrast_image=a,
            contrast_prompt="what is this?",
            contrast_images=[a, b],
        ),
        Request(
            image=a,
            prompt="How many people?",
            item_id="d",
            contrast_prompt="How many cats?",
            contrast_images=[c, b],
        ),
    ]


def _seq(tokens, finish, eos):
    return list(tokens) + ([eos[0]] if finish == "eos" else [])


def assert_same_as_reference(out, ref, eos, what):
    eng = _seq(out.token_ids, out.meta["finish_reason"], eos)
    rf = _seq(ref.tokens, ref.finish, eos)
    for k, (x, y) in enumerate(zip(eng, rf)):
        if x != y:
            assert ref.margins[k] < 1e-4, (
                f"{what}: token {k} engine {x} vs reference {y}, margin {ref.margins[k]}"
            )
            return
    assert len(eng) == len(rf), f"{what}: engine {eng} vs reference {rf}"


def _eos_for(vlm, reqs, method):
    """An EOS that makes request 0 stop early: its 4th greedy token without EOS."""
    outs = generate(
        vlm, reqs, method=method, params=PARAMS.get(method), max_new_tokens=N_NEW, eos_token_id=[]
    )
    return [outs[0].token_ids[3]]


# the methods of tests/reference_methods.py are checked against that reference in
# tests/test_methods_controls.py and tests/test_methods_wave2.py
@pytest.mark.parametrize("method", sorted(m for m in METHODS if m not in _COVERED_ELSEWHERE))
def test_greedy_matches_reference(vlm, requests_, method):
    eos = _eos_for(vlm, requests_, method)
    outs = generate(
        vlm,
        requests_,
        method=method,
        params=PARAMS.get(method),
        max_new_tokens=N_NEW,
        eos_token_id=eos,
        batch_size=16,
    )
    assert [o.item_id for o in outs] == ["a", "b", "c", "d"]
    assert outs[0].meta["finish_reason"] == "eos" and len(outs[0].token_ids) <= 3
    for i, (r, o) in enumerate(zip(requests_, outs)):
        assert o.error is None, o.error
        ref = ref_generate(vlm, r, method, PARAMS.get(method), max_new_tokens=N_NEW, eos=eos, index=i)
        assert_same_as_reference(o, ref, eos, f"{method}/{r.item_id}")
        assert o.text == vlm.processor.tokenizer.decode(o.token_ids, skip_special_tokens=True).strip()
        for k, v in ref.meta.items():
            if k != "code_description" or v:
                assert o.meta[k] == v, (k, o.meta[k], v)


@pytest.mark.parametrize("method", ["vcd", "ritual", "selfaug", "m3id", "sample", "apc", "icd"])
def test_sampling_matches_reference(vlm, requests_, method):
    kw = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=30, seed=7, max_new_tokens=N_NEW)
    outs = generate(vlm, requests_, method=method, params=PARAMS.get(method), **kw)
    eos = [vlm.model.generation_config.eos_token_id]
    for i, (r, o) in enumerate(zip(requests_, outs)):
        ref = ref_generate(vlm, r, method, PARAMS.get(method), index=i, eos=eos, **kw)
        assert _seq(o.token_ids, o.meta["finish_reason"], eos) == _seq(ref.tokens, ref.finish, eos), method


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batch_size_does_not_change_outputs(vlm, model_dir, tmp_path_factory, requests_, method):
    params = runtime_params(method, vlm, model_dir, tmp_path_factory.getbasetemp(), PARAMS.get(method))
    # a greedy-only method refuses do_sample=True (it would be ignored): greedy only
    for do_sample in (False,) if METHODS[method].mode == "greedy" else (False, True):
        kw = dict(method=method, params=params, do_sample=do_sample, seed=3, max_new_tokens=N_NEW)
        big = generate(vlm, requests_, batch_size=16, **kw)
        one = generate(vlm, requests_, batch_size=1, **kw)
        two = generate(vlm, requests_[::-1], batch_size=2, **kw)[::-1]
        for x, y, z in zip(big, one, two):
            assert x.error is None
            assert x.token_ids == y.token_ids == z.token_ids, (method, do_sample, x.item_id)
            assert x.meta == y.meta == z.meta


def test_sampling_seeds(vlm, requests_):
    kw = dict(method="vcd", do_sample=True, max_new_tokens=N_NEW, eos_token_id=[])
    a = generate(vlm, requests_, seed=1, **kw)
    b = generate(vlm, requests_, seed=1, **kw)
    c = generate(vlm, requests_, seed=2, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]
    # the stream belongs to the item id, not to the position in the list
    d = generate(vlm, [requests_[2]], seed=1, **kw)
    assert d[0].token_ids == a[2].token_ids


def test_early_finish_and_mixed_lengths(vlm, requests_):
    """Request 0 stops at EOS after 2 tokens, the others run to max_new_tokens; outputs equal
    each request decoded alone."""
    free = generate(vlm, requests_, method="vcd", max_new_tokens=10, eos_token_id=[])
    eos = free[0].token_ids[2]
    assert eos not in free[0].token_ids[:2]
    outs = generate(vlm, requests_, method="vcd", max_new_tokens=10, eos_token_id=eos)
    assert outs[0].token_ids == free[0].token_ids[:2] and outs[0].meta["finish_reason"] == "eos"
    for o, f in zip(outs[1:], free[1:]):
        cut = f.token_ids.index(eos) if eos in f.token_ids else len(f.token_ids)
        assert o.token_ids == f.token_ids[:cut]
    alone = [generate(vlm, [r], method="vcd", max_new_tokens=10, eos_token_id=eos)[0] for r in requests_]
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]
    lengths = {len(o.input_ids) for o in outs}
    assert len(lengths) == 4  # four different prompt lengths share the batch


def test_vcd_legacy_contrasts_only_first_token(vlm, requests_):
    kw = dict(max_new_tokens=N_NEW, eos_token_id=[])
    legacy = generate(vlm, requests_, method="vcd_legacy", **kw)
    apc_only = generate(vlm, requests_, method="apc", **kw)
    vcd = generate(vlm, requests_, method="vcd", **kw)
    # after the first token, legacy = greedy with APC, continued from the contrasted first token
    for lg, v in zip(legacy, vcd):
        assert lg.token_ids[0] == v.token_ids[0]
    assert any(lg.token_ids != v.token_ids for lg, v in zip(legacy, vcd))
    assert [o.meta["mode"] for o in apc_only] == ["greedy"] * 4


def test_methods_record_their_choices(vlm, requests_):
    out = generate(vlm, requests_[:2], method="ritual", max_new_tokens=2)
    assert all(
        o.meta["ritual_transform"]
        in ("horizontal flip", "vertical flip", "rotation", "color jitter", "gaussian blur", "crop")
        for o in out
    )
    out = generate(vlm, requests_[:2], method="selfaug", params={"sas_max_new_tokens": 4}, max_new_tokens=2)
    for o in out:
        assert o.meta["selfaug_augmentation"] in (
            "vertical_flip",
            "horizontal_flip",
            "color_inversion",
            "random_crop",
            "random_mask",
            "noise",
        )
        assert o.meta["selfaug_parsed"] is False  # a random model does not answer "Choice: …"
        assert isinstance(o.meta["selfaug_reply"], str)
    out = generate(
        vlm, requests_[:1], method="selfaug", params={"augmentation": "vertical_flip"}, max_new_tokens=2
    )
    assert out[0].meta["selfaug_augmentation"] == "vertical_flip" and "selfaug_parsed" not in out[0].meta


def test_prompt_uses_chat_template(vlm, requests_):
    out = generate(vlm, [requests_[2]], method="icd", max_new_tokens=1)[0]
    text = vlm.processor.tokenizer.decode(out.input_ids)
    n_img = out.input_ids.count(vlm.model.config.image_token_id)
    assert n_img == 16  # (56 / 14)^2 patches
    assert (
        text.replace(" <image>" * n_img, "")
        == "you are an expert . user : \n what is this red dog <unk> on the table with a cat ? assistant :"
    )


# --- bad input -----------------------------------------------------------------------------------
def test_unknown_method(vlm, requests_):
    with pytest.raises(ValueError) as e:
        generate(vlm, requests_, method="vcdd")
    assert str(e.value) == ("unknown method 'vcdd'; valid methods: " + ", ".join(sorted(METHODS)))


def test_unknown_parameter(vlm, requests_):
    with pytest.raises(ValueError) as e:
        generate(vlm, requests_, method="vcd", params={"alpha": 1.0, "gamma": 0.1})
    assert (
        str(e.value)
        == "unknown parameter 'gamma' for method 'vcd'; valid parameters: alpha, beta, draw, noise_step"
    )


def test_bad_parameter_value(vlm, requests_):
    with pytest.raises(ValueError, match="noise_step"):
        generate(vlm, requests_, method="vcd", params={"noise_step": 1000})
    with pytest.raises(ValueError, match="top_p"):
        generate(vlm, requests_, method="vcd", top_p=0.0)


def test_bad_requests_fail_alone(vlm, requests_, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    reqs = [
        requests_[0],
        Request(image=None, prompt="Is there a cup?", item_id="noimg"),
        Request(image=str(broken), prompt="Is there a cup?", item_id="badimg"),
        Request(image=requests_[1].image, prompt="word " * 2100, item_id="long"),
        requests_[3],
    ]
    outs = generate(vlm, reqs, method="vcd", max_new_tokens=3)
    assert outs[1].error == "method 'vcd' needs an image (Request.image is None)"
    assert outs[2].error.startswith("bad image: cannot read image ") and "broken.png" in outs[2].error
    assert outs[3].error.startswith("prompt of ") and "exceeds the model's 2048 positions" in outs[3].error
    for o in (outs[1], outs[2], outs[3]):
        assert o.text == "" and o.token_ids == []
    alone = generate(vlm, [requests_[0], requests_[3]], method="vcd", max_new_tokens=3)
    assert outs[0].error is None and outs[0].token_ids == alone[0].token_ids
    assert outs[4].error is None and outs[4].token_ids == alone[1].token_ids
    # methods with extra needs
    out = generate(vlm, [Request(image=requests_[0].image, prompt="x", item_id="z")], method="convis")[0]
    assert out.error == "method 'convis' needs Request.contrast_images (the reconstructed images)"
    out = generate(vlm, [Request(image=requests_[0].image, prompt="x", item_id="z")], method="contrast")[0]
    assert out.error == "method 'contrast' needs Request.contrast_image and/or Request.contrast_prompt"
    # text-only decoding is fine for plain methods
    out = generate(vlm, [Request(prompt="Describe", item_id="t")], method="greedy", max_new_tokens=2)[0]
    assert out.error is None and len(out.token_ids) == 2


def test_random_draw_is_declared_truthfully(vlm, model_dir, tmp_path_factory, requests_):
    """A method that declares no random draw (decoded once for every seed in greedy mode, see
    vcdflow.config.seed_free) gives the same greedy output under two seeds; the ones that declare
    one change their branch inputs with the seed (checked on the noised/transformed input)."""
    free = [m for m in sorted(METHODS) if not METHODS[m].random_draw and METHODS[m].mode != "sample"]
    assert {"greedy", "icd", "m3id", "convis", "pba", "olm"} <= set(free)
    assert {"vcd", "vcd_legacy", "ritual", "selfaug"} <= {m for m in METHODS if METHODS[m].random_draw}
    for method in free:
        params = runtime_params(method, vlm, model_dir, tmp_path_factory.getbasetemp(), PARAMS.get(method))
        runs = [
            generate(
                vlm, requests_[:2], method=method, params=params, max_new_tokens=3, eos_token_id=[], seed=seed
            )
            for seed in (0, 1)
        ]
        assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]], method
        assert [o.meta for o in runs[0]] == [o.meta for o in runs[1]], method
    from vcdflow.decoding.types import BranchContext
    from vcdflow.decoding.sampling import make_generator

    for method in ("vcd", "ritual"):  # the contrast input itself depends on the seed
        m = METHODS[method]
        encs = []
        for seed in (0, 1):
            ctx = BranchContext(
                params=m.resolve(None),
                rng=make_generator(seed, "a", "branches"),
                adapter=vlm.adapter,
                do_sample=False,
            )
            branch = m.branches(requests_[0], ctx)[1]
            encs.append(vlm.adapter.encode(branch, ctx.rng).pixel_values)
        assert not torch.equal(encs[0], encs[1]), method


def test_every_method_has_a_reference():
    """Every registered method is checked against a plain reference: the generic one
    (tests/reference_decoder.py) or its own (method_cases.COVERED_ELSEWHERE)."""
    from reference_decoder import COVERED

    missing = sorted(set(METHODS) - set(COVERED) - _COVERED_ELSEWHERE)
    assert not missing, f"methods with no plain reference: {missing}"
    assert not set(COVERED) & _COVERED_ELSEWHERE
