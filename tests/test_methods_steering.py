"""Steering: the engine capabilities E14 (per-row MLP-output steering), E14v (vision-layer
steering), E16 (residual probe), E15 (VTI's fitted directions) each against a plain computation,
and the methods ``vista`` and ``vti`` against the references in tests/reference_steering.py on
the tiny model of every family they support and on the demo LLaVA; seeding and batch-size
invariance."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from reference_methods import assert_same_as_reference, build_vlms, forward, image, inputs
from reference_steering import (VTILayerRef, layer_outputs_last, no_image, ref_vista, ref_vti, text_layers,
                                vision_layers_ref, wrapped_mlps)
from vcdflow.decoding import Request, generate
from vcdflow.decoding.hooks import Rows
from vcdflow.decoding.steering import (ActivationSteering, drop_image, residual_probe, steer, vision_layers,
                                       vision_probe)
from vcdflow.decoding.types import Branch

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("steering"))


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=image(1, 80, 100), prompt="Is there a dog?", item_id="b"),
    Request(image=image(3, 120, 70), prompt="what is this red dog on the table with a cat?", item_id="c",
            system="You are an expert."),
]


# --- E14 / E16: capabilities against plain computations ----------------------------------------------
def test_steer_formula():
    """steer() = ‖x‖·normalize(normalize(x) + λ·g·normalize(v)), g = 1 + max(0, cos(x, −v)), per row."""
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 8, generator=g), torch.randn(8, generator=g)
    for gate in (False, True):
        got = steer(x, v, 0.7, gate)
        for i in range(3):
            for t in range(4):
                xi = x[i, t]
                c = float(torch.dot(xi, -v) / (xi.norm() * v.norm()))
                gg = 1 + max(0.0, c) if gate else 1.0
                u = xi / xi.norm() + 0.7 * gg * v / v.norm()
                assert torch.allclose(got[i, t], u / u.norm() * xi.norm(), atol=1e-6)
    assert torch.allclose(steer(x, v, 0.0), x, atol=1e-6)
    assert torch.allclose(steer(x, v, 0.3).norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # norm preserved


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_probe_matches_layer_outputs(vlms, family):
    """E16: batched left-padded probe of image rows and their text-only versions = each row's
    layer-module outputs at its last position in a plain batch-1 forward; drop_image = the prompt
    without its image tokens."""
    vlm = vlms[family]
    ad = vlm.adapter
    encs = [ad.encode(Branch(prompt=r.prompt, image=r.image, system=r.system)) for r in REQS]
    rows = encs + [drop_image(ad, e) for e in encs]
    got = residual_probe(ad, rows, chunk=4)
    assert len(got) == 6 and got[0].shape == (len(ad.decoder_layers()), ad.text_config.hidden_size)
    for k, r in enumerate(REQS):
        inp = inputs(vlm, r.prompt, r.image, r.system)
        assert encs[k].input_ids.tolist() == inp["input_ids"][0].tolist()
        assert torch.allclose(got[k], layer_outputs_last(vlm, inp), atol=1e-4)
        neg = no_image(vlm, inp)
        assert rows[3 + k].input_ids.tolist() == neg["input_ids"][0].tolist()
        assert torch.allclose(got[3 + k], layer_outputs_last(vlm, neg), atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "instructblip", "demo"])
def test_vision_probe_matches_hidden_states(vlms, family):
    """E16 (vision): per image the stacked per-token outputs = the tower's own hidden_states."""
    vlm = vlms[family]
    ad = vlm.adapter
    encs = [ad.encode(Branch(prompt=r.prompt, image=r.image)) for r in REQS]
    got = vision_probe(ad, encs, chunk=2)
    tower = vlm.model.vision_model if family == "instructblip" else vlm.model.model.vision_tower
    for k, e in enumerate(encs):
        with torch.inference_mode():
            hs = tower(pixel_values=e.pixel_values, output_hidden_states=True).hidden_states
        want = torch.stack([h[0] for h in hs])
        assert got[k].shape == want.shape and torch.allclose(got[k], want, atol=1e-5)


def test_vision_layers_refuses_qwen(vlms):
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        vision_layers(vlms["qwen2_5_vl"].adapter)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_steering_matches_wrapped_mlps(vlms, family):
    """E14: steering only branch 1's rows (branch 0 untouched) through the hooks, in one batched
    left-padded forward, = a batch-1 forward of each row with its MLPs wrapped (steered) or not."""
    vlm = vlms[family]
    ad = vlm.adapter
    L, D = len(ad.decoder_layers()), ad.text_config.hidden_size
    vec = {l: torch.randn(D, generator=torch.Generator().manual_seed(l)) for l in range(L)}
    encs = [ad.encode(Branch(prompt=r.prompt, image=r.image, system=r.system)) for r in REQS[:2]]
    hooks = ActivationSteering(vectors=vec, lam=0.8, branches=(1,))
    hooks.start(ad, [[e] for e in encs], [[], []])
    try:
        ids, mask = ad.collate(encs)
        with torch.inference_mode():
            emb = ad.prefill_embeds(ids, encs)
            pos, _ = ad.prefill_positions(ids, mask, encs)
            hooks.before_forward("prefill", Rows(request=[0, 1], branch=[0, 1]))
            logits, _ = ad.forward(emb, mask, pos, None)
    finally:
        hooks.finish()
    for k, r in enumerate(REQS[:2]):
        inp = inputs(vlm, r.prompt, r.image, r.system)
        with torch.inference_mode(), wrapped_mlps(text_layers(vlm), lambda i: _Steer(vec[i], 0.8) if k == 1 else None):
            want = forward(vlm, inp, []).logits[0, -1].float()
        assert torch.allclose(logits[k], want, atol=1e-4), (family, k)
    # the hooks are gone
    with torch.inference_mode():
        plain = forward(vlm, inputs(vlm, REQS[1].prompt, REQS[1].image, REQS[1].system), []).logits[0, -1].float()
    assert not torch.allclose(plain, logits[1], atol=1e-3)


class _Steer(torch.nn.Module):
    """Plain ‖x‖·normalize(normalize(x) + λ·normalize(v)) (no gate)."""

    def __init__(self, v, lam):
        super().__init__()
        self.v, self.lam = v, lam

    def forward(self, x):
        return F.normalize(F.normalize(x, dim=-1) + self.lam * F.normalize(self.v, dim=-1), dim=-1) * x.norm(dim=-1, keepdim=True)


# --- vista ------------------------------------------------------------------------------------------
VISTA_PARAMS = [None, {"lam": 0.6, "logits_alpha": 0.5}]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pi", [0, 1])
def test_vista_greedy_matches_reference(vlms, family, pi):
    vlm = vlms[family]
    params = VISTA_PARAMS[pi]
    if pi == 1:
        L = len(vlm.adapter.decoder_layers())
        params = {**params, "logits_layers": [0, L - 1], "layers": [L - 1, L] if L > 1 else None}
    free = generate(vlm, REQS[:1], method="vista", params=params, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    outs = generate(vlm, REQS, method="vista", params=params, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16)
    assert outs[0].meta["finish_reason"] == "eos"
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert o.error is None, o.error
        ref = ref_vista(vlm, r, params, max_new_tokens=N_NEW, eos=eos, index=i)
        assert_same_as_reference(o, ref, eos, f"vista/{family}/{r.item_id}")


def test_vista_steers_and_augments(vlms):
    """λ = 0 and SLA off is plain greedy; each part alone changes the scores (the test would fail
    if either were a no-op)."""
    vlm = vlms["llava"]
    g = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    off = generate(vlm, REQS, method="vista", params={"lam": 0.0, "logits_aug": False}, max_new_tokens=N_NEW,
                   eos_token_id=[])
    assert [o.token_ids for o in g] == [o.token_ids for o in off]
    for params in ({"lam": 2.0, "logits_aug": False}, {"lam": 0.0, "logits_alpha": 0.9}):
        o = generate(vlm, REQS, method="vista", params=params, max_new_tokens=N_NEW, eos_token_id=[])
        assert [x.token_ids for x in o] != [x.token_ids for x in g], params


def test_vista_sampling_seed_and_batch(vlms):
    vlm = vlms["demo"]
    reqs = REQS * 6
    kw = dict(method="vista", params={"lam": 0.3}, do_sample=True, max_new_tokens=N_NEW, eos_token_id=[])
    a = generate(vlm, reqs, seed=3, batch_size=16, **kw)
    b = generate(vlm, reqs, seed=3, batch_size=1, **kw)
    c = generate(vlm, reqs, seed=4, batch_size=16, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]
    ref = ref_vista(vlm, REQS[0], {"lam": 0.3}, do_sample=True, max_new_tokens=N_NEW, seed=3, index=0)
    assert a[0].token_ids == ref.tokens


def test_vista_bad_params(vlms):
    vlm = vlms["llava"]
    with pytest.raises(ValueError, match="logits_layers"):
        generate(vlm, REQS[:1], method="vista", params={"logits_layers": [0, 9]}, max_new_tokens=2)
    with pytest.raises(ValueError, match="'lam'"):
        generate(vlm, REQS[:1], method="vista", params={"lam": -1}, max_new_tokens=2)
    with pytest.raises(ValueError, match="'layers'"):
        generate(vlm, REQS[:1], method="vista", params={"layers": [0, 7]}, max_new_tokens=2)
