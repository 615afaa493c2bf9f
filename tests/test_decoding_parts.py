"""Unit tests of the decoding building blocks against hand-computed values and independent code:
distortions, plausibility rules, method formulas, parsing, seeding, parameter validation."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import convolve1d

from vcdflow.decoding import METHODS, State, request_seed
from vcdflow.decoding import distortions as D
from vcdflow.decoding.methods.avisc import blind_token_keep
from vcdflow.decoding.methods.code import code_divergence
from vcdflow.decoding.methods.m3id import M3ID
from vcdflow.decoding.methods.selfaug import parse_choice, sas_prompt
from vcdflow.decoding.plausibility import apc, sat_beta
from vcdflow.decoding.sampling import make_generator, warp

FIX = Path(__file__).parent / "fixtures" / "decoding"


def _img(seed=0, w=40, h=30):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


# --- VCD noise -----------------------------------------------------------------------------------
def test_noise_coefficients_match_spec():
    assert [round(v, 3) for v in D.noise_coefficients(500)] == [0.863, 0.505]
    assert [round(v, 3) for v in D.noise_coefficients(999)] == [0.285, 0.959]
    with pytest.raises(ValueError):
        D.noise_coefficients(1000)


def test_diffusion_noise_is_forward_process():
    x = torch.randn(1, 3, 8, 8)
    out = D.diffusion_noise(x, 500, make_generator(0, "i", "branches"))
    eps = torch.randn(x.shape, generator=make_generator(0, "i", "branches"))
    # independent schedule: betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    betas = [1 / (1 + math.exp(-(-6 + 12 * i / 999))) * (5e-3 - 1e-5) + 1e-5 for i in range(1000)]
    abar = math.prod(1 - b for b in betas[:501])
    assert torch.allclose(out, math.sqrt(abar) * x + math.sqrt(1 - abar) * eps, atol=1e-6)


# --- Self-Aug tensor augmentations ---------------------------------------------------------------
def test_flips_and_inversion():
    from transformers import CLIPImageProcessorPil

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=mean, image_std=std
    )
    img = _img(1, 32, 32)
    px = ip(img, return_tensors="pt")["pixel_values"].float()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    arr = np.asarray(img)
    for fn, flipped in ((D.hflip, arr[:, ::-1]), (D.vflip, arr[::-1])):
        want = ip(Image.fromarray(np.ascontiguousarray(flipped)), return_tensors="pt")["pixel_values"]
        assert torch.allclose(fn(px), want, atol=1e-5)
    inverted = ip(Image.fromarray(255 - arr), return_tensors="pt")["pixel_values"]
    assert torch.allclose(D.invert_colors(px, m, s), inverted, atol=1e-5)


def test_random_crop_and_mask():
    x = torch.arange(1, 1 + 3 * 8 * 10, dtype=torch.float32).view(1, 3, 8, 10)
    out = D.random_crop(x, 2.0, make_generator(0, "c", "b"))
    assert out.shape == x.shape
    windows = [
        torch.nn.functional.interpolate(
            x[..., i : i + 4, j : j + 4], size=(8, 10), mode="bilinear", align_corners=False, antialias=True
        )
        for i in range(5)
        for j in range(7)
    ]
    assert sum(torch.allclose(out, w) for w in windows) == 1  # a 4x4 window (min side 8 // 2), resized
    m = D.random_mask(x, 2.0, make_generator(0, "m", "b"))
    zero = m == 0
    assert int(zero.sum()) == 3 * 4 * 4
    assert torch.equal(m[~zero], x[~zero])
    rows = zero[0, 0].any(1).nonzero().flatten().tolist()
    cols = zero[0, 0].any(0).nonzero().flatten().tolist()
    assert rows == list(range(rows[0], rows[0] + 4)) and cols == list(range(cols[0], cols[0] + 4))


# --- RITUAL transforms ---------------------------------------------------------------------------
def test_ritual_transforms():
    img = _img(2, 40, 30)
    g = make_generator(0, "r", "b")
    assert np.array_equal(np.asarray(D.ritual_transform(img, "horizontal flip", g)), np.asarray(img)[:, ::-1])
    assert np.array_equal(np.asarray(D.ritual_transform(img, "vertical flip", g)), np.asarray(img)[::-1])
    assert D.ritual_transform(img, "rotation", g).size == img.size
    assert D.ritual_transform(img, "color jitter", g).size == img.size
    assert D.ritual_transform(img, "crop", g).size == (336, 336)
    with pytest.raises(ValueError, match="unknown RITUAL transform 'zoom'"):
        D.ritual_transform(img, "zoom", g)
    # a 180° rotation is a flip of both axes
    assert np.array_equal(np.asarray(D.rotate(img, g, degrees=0)), np.asarray(img))


def test_gaussian_blur_against_scipy():
    img = _img(3, 24, 20)
    out = np.asarray(D.gaussian_blur(img, make_generator(0, "g", "b"), kernel_size=13, sigma=(1.7, 1.7)))
    x = np.arange(-6, 7)
    w = np.exp(-(x**2) / (2 * 1.7**2))
    w /= w.sum()
    a = np.asarray(img, dtype=np.float64)
    want = convolve1d(convolve1d(a, w, axis=1, mode="mirror"), w, axis=0, mode="mirror")
    assert np.abs(out.astype(float) - np.round(want)).max() <= 1


def test_adjust_hue_and_jitter_identity():
    # saturated, bright colours survive the HSV round trip; hue moves by int(0.25 * 255) = 63
    cols = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]], dtype=np.uint8)
    img = Image.fromarray(cols)
    h0 = np.asarray(img.convert("HSV"))[..., 0].astype(int)
    h1 = np.asarray(D.adjust_hue(img, 0.25).convert("HSV"))[..., 0].astype(int)
    d = (h1 - (h0 + 63)) % 256
    assert np.minimum(d, 256 - d).max() <= 2
    # zero-strength jitter changes nothing but the HSV round trip of the hue step
    img = _img(4)
    same = D.color_jitter(img, make_generator(0, "j", "b"), brightness=0, contrast=0, saturation=0, hue=0)
    rt = np.asarray(img.convert("HSV").convert("RGB")).astype(int)
    assert np.abs(np.asarray(same).astype(int) - rt).max() <= 1


def test_ritual_draws_every_transform():
    seen = {
        D.RITUAL_TRANSFORMS[int(torch.randint(6, (1,), generator=make_generator(0, f"i{k}", "branches")))]
        for k in range(200)
    }
    assert seen == set(D.RITUAL_TRANSFORMS)


# --- plausibility --------------------------------------------------------------------------------
def test_apc_hand_example():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    scores = torch.tensor([[0.0, 5.0, 9.0, 1.0]])
    # β = 0.5: cutoff = 2 + ln 0.5 = 1.307 → only token 0 survives
    assert torch.isinf(apc(scores, logits, 0.5)).tolist() == [[False, True, True, True]]
    # β = 0.3: cutoff = 2 + ln 0.3 = 0.796 → tokens 0, 1
    assert torch.isinf(apc(scores, logits, 0.3)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(apc(scores, logits, 0.0)).any()
    per_row = apc(scores.repeat(2, 1), logits.repeat(2, 1), torch.tensor([0.5, 0.3]))
    assert torch.isinf(per_row).tolist() == [[False, True, True, True], [False, False, True, True]]


def test_sat_beta():
    uniform = torch.zeros(1, 8)  # H = 3 bits
    assert sat_beta(uniform, 0.5).item() == pytest.approx(1 / (1 + math.exp(1.5)))
    assert sat_beta(uniform, -1.0).item() == pytest.approx(1.0)
    assert sat_beta(uniform, -2.0).item() == pytest.approx(1.0)
    peaked = torch.tensor([[100.0, 0, 0, 0]])
    assert sat_beta(peaked, 0.5).item() == pytest.approx(0.5)
    half = torch.tensor([[0.0, 0.0, -1e4, -1e4]])  # H = 1 bit of log2(4) = 2
    assert sat_beta(half, -2.0).item() == pytest.approx(0.5**0.5)


def test_warp_top_k_top_p():
    s = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(warp(s, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(warp(s, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(warp(s, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(warp(s, top_p=0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(warp(s, top_p=0.9)).tolist() == [[False, False, False, True]]
    assert torch.allclose(warp(s, temperature=2.0), s / 2)


# --- method formulas -----------------------------------------------------------------------------
def _state(name, **kw):
    return State(params=METHODS[name].resolve(kw))


def test_vcd_and_ritual_combine():
    L = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]])
    assert METHODS["vcd"].combine(L, 0, _state("vcd")).tolist() == [[-1.0, 2.0, 5.0]]
    assert METHODS["ritual"].combine(L, 0, _state("ritual")).tolist() == [[10.0, 8.0, 6.0]]
    L3 = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [2.0, 0.0]]])
    assert METHODS["convis"].combine(L3, 0, _state("convis", alpha=0.5)).tolist() == [[1.0, 1.0]]
    assert METHODS["convis"].plausibility(L3, 0, _state("convis")) is None
    assert METHODS["vcd"].plausibility(L3, 0, _state("vcd")) == 0.1


def test_m3id_gamma_and_combine():
    p = METHODS["m3id"].resolve({})
    assert M3ID.gamma(0, p) == 1.0 and M3ID.gamma(10, p) == pytest.approx(math.exp(-0.2))
    p2 = METHODS["m3id"].resolve({"variant": "logprob"})
    assert M3ID.gamma(0, p2) == pytest.approx(math.exp(-0.02))
    L = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    out = METHODS["m3id"].combine(L, 10, State(params=p))
    c = (1 - math.exp(-0.2)) / math.exp(-0.2)
    assert out[0].tolist() == pytest.approx([2 + c * 1, 0 + c * -1])


def test_code_divergence_hand_values():
    a = 0.7
    same = torch.tensor([[[1.0, 2.0], [1.0, 2.0]]])
    assert code_divergence(same, a).item() == pytest.approx(0.0)
    disjoint = torch.tensor([[[50.0, -50.0], [-50.0, 50.0]]])
    assert code_divergence(disjoint, a).item() == pytest.approx(1.0)
    pv, pd = [0.8, 0.2], [0.5, 0.5]
    L = torch.log(torch.tensor([[pv, pd]]))
    want = 0.5 * sum(math.log2(abs(x - y) ** a + 1) * (x + y) for x, y in zip(pv, pd))
    assert code_divergence(L, a).item() == pytest.approx(want, rel=1e-5)
    st = _state("code")
    at = 1 - want
    assert METHODS["code"].combine(L, 0, st)[0].tolist() == pytest.approx(
        ((1 + at) * L[0, 0] - at * L[0, 1]).tolist(), rel=1e-5
    )
    assert METHODS["code"].plausibility(L, 0, st).item() == pytest.approx(want, rel=1e-5)


def test_avisc_blind_tokens_hand_example():
    att = torch.tensor(
        [
            [0.10, 0.30, 0.05, 0.05, 0.10],  # layer 0: share 0.6
            [0.06, 0.06, 0.06, 0.06, 0.06],  # layer 1: share 0.3
            [0.02, 0.02, 0.02, 0.02, 0.02],
        ]
    )  # layer 2: share 0.1
    keep, layers = blind_token_keep(att, 0.5, 1.0)
    assert layers == [0]  # cumsum [.6, .9, 1] < .5 → 0 layers, +1
    w = att[0]
    thr = w.mean() + w.std()  # 0.12 + 0.1037
    assert keep.tolist() == [float(v >= thr) for v in w] == [0.0, 1.0, 0.0, 0.0, 0.0]
    keep, layers = blind_token_keep(att, 0.95, 1.0)
    assert layers == [0, 1, 2]


def test_selfaug_parse_and_prompt():
    assert parse_choice("Reason: the question is about height. Choice: Vertical flip") == (
        "vertical_flip",
        True,
    )
    assert parse_choice("Reason: horizontal things. Choice: random crop") == ("random_crop", True)
    assert parse_choice("Choice: noise") == ("noise", True)
    assert parse_choice("Choice: something else") == ("noise", False)
    assert parse_choice("I would use a random mask here") == ("random_mask", False)
    assert parse_choice("") == ("noise", False)
    for name, flags in {
        "full": (True, True),
        "icl": (False, True),
        "reason": (True, False),
        "base": (False, False),
    }.items():
        template = (FIX / f"selfaug_prompt_{name}.txt").read_text(encoding="utf-8")
        assert sas_prompt("Is the cup red?", *flags) == template.format("Is the cup red?"), name


def test_selfaug_plausibility_uses_sat():
    L = torch.zeros(2, 2, 8)
    b = METHODS["selfaug"].plausibility(L, 0, _state("selfaug"))
    assert b.tolist() == pytest.approx([1 / (1 + math.exp(1.5))] * 2)
    assert METHODS["selfaug"].plausibility(L, 0, _state("selfaug", tau=None)) == 0.1


# --- seeding and parameters ----------------------------------------------------------------------
def test_request_seed_is_stable_sha256():
    d = hashlib.sha256("3\x1fpope/1\x1fsample".encode()).digest()
    assert request_seed(3, "pope/1", "sample") == int.from_bytes(d[:8], "little") & (2**63 - 1)
    assert request_seed(3, "pope/1", "sample") != request_seed(3, "pope/1", "branches")
    assert request_seed(3, "pope/1", "sample") != request_seed(4, "pope/1", "sample")


def test_parameter_resolution():
    assert METHODS["vcd"].resolve(None) == {
        "alpha": 1.0,
        "beta": 0.1,
        "noise_step": 500,
        "draw": "per_question",
    }
    assert METHODS["vcd"].resolve({"noise_step": 999})["noise_step"] == 999
    with pytest.raises(ValueError) as e:
        METHODS["ritual"].resolve({"alpha_pos": 3, "gamma": 1})
    assert str(e.value) == (
        "unknown parameters 'alpha_pos', 'gamma' for method 'ritual'; "
        "valid parameters: alpha, beta, crop_size, draw, transform"
    )
    with pytest.raises(ValueError) as e:
        METHODS["greedy"].resolve({"alpha": 1})
    assert str(e.value) == (
        "unknown parameter 'alpha' for method 'greedy'; valid parameters: repetition_context, "
        "repetition_penalty"
    )
    with pytest.raises(ValueError, match="'beta' of method 'vcd' must be in"):
        METHODS["vcd"].resolve({"beta": 2})
    with pytest.raises(ValueError, match="'variant' of method 'm3id'"):
        METHODS["m3id"].resolve({"variant": "probs"})
    assert METHODS["convis"].resolve({"beta": 0.1})["beta"] == 0.1


def test_every_method_is_documented():
    expected = {
        "greedy",
        "sample",
        "contrast",
        "vcd",
        "vcd_legacy",
        "icd",
        "ritual",
        "m3id",
        "vdd",
        "selfaug",
        "apc",
        "code",
        "avisc",
        "convis",
        "pba",
        "olm",
        "debias",
        "carve",
        "iava",
        "cid",
        "lqcd",
        # the second wave and the field's baselines
        "dola",
        "deco",
        "revisit",
        "pai",
        "sid",
        "only",
        "vasparse",
        "contrastive_search",
        "text_cd",
        "opera",
        "vista",
        "vti",
        "halc",
    }
    assert set(METHODS) == expected
    import importlib

    for name, m in METHODS.items():
        mod = importlib.import_module(type(m).__module__)
        doc = mod.__doc__ or ""
        assert f"``{name}``" in doc, name
        for k in m.defaults:
            assert f"``{k}``" in doc, (name, k)
