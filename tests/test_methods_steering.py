"""Steering: the engine capabilities per-row MLP-output steering, vision-layer
steering, the residual probe and VTI's fitted directions each against a plain computation,
and the methods ``vista`` and ``vti`` against the references in tests/reference_steering.py on
the tiny model of every family they support and on the demo LLaVA; seeding and batch-size
invariance."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from reference_methods import assert_same_as_reference, build_vlms, forward, image, inputs
from reference_steering import (
    VTILayerRef,
    grid_at,
    layer_outputs_last,
    no_image,
    qwen_direction_rows,
    qwen_proc_to_raster,
    qwen_raster_of_rows,
    qwen_visual,
    ref_vista,
    ref_vti,
    text_layers,
    vision_layers_ref,
    wrapped_mlps,
)
from vcdflow.decoding import Request, generate
from vcdflow.decoding.hooks import Rows
from vcdflow.decoding.steering import (
    ActivationSteering,
    drop_image,
    qwen_window_layout,
    residual_probe,
    steer,
    vision_layers,
    vision_probe,
)
from vcdflow.decoding.types import Branch

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("steering"))


@pytest.fixture(scope="module")
def qwen_dyn(vlms):
    """The tiny Qwen2.5-VL with a dynamic-resolution processor (56² to 112² pixels): the test images
    get different patch grids (4×4, 4×6, 8×6, 4×8 ...) and non-trivial window orders (2×2-unit
    windows). Same weights as vlms["qwen2_5_vl"]."""
    from transformers import Qwen2VLImageProcessorPil

    from vcdflow.models.adapters import adapter_for
    from vcdflow.models.loading import VLM, image_only_qwen_processor

    base = vlms["qwen2_5_vl"]
    ip0 = base.processor.image_processor
    ip = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56,
        max_pixels=112 * 112,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=ip0.image_mean,
        image_std=ip0.image_std,
    )
    proc = image_only_qwen_processor(
        base.processor.tokenizer, image_processor=ip, chat_template=base.processor.chat_template
    )
    return VLM(
        model=base.model,
        processor=proc,
        family="qwen2_5_vl",
        adapter=adapter_for("qwen2_5_vl", base.model, proc),
        device=base.device,
        dtype=base.dtype,
        source=base.source,
    )


def _vlm(vlms, qwen_dyn, family):
    """The model a VTI test runs on: Qwen2.5-VL with the dynamic-resolution processor."""
    return qwen_dyn if family == "qwen2_5_vl" else vlms[family]


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=image(1, 80, 100), prompt="Is there a dog?", item_id="b"),
    Request(
        image=image(3, 120, 70),
        prompt="what is this red dog on the table with a cat?",
        item_id="c",
        system="You are an expert.",
    ),
]


# --- steering / probe: capabilities against plain computations ----------------------------------------------
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
    """Residual probe: batched left-padded probe of image rows and their text-only versions = each row's
    layer-module outputs at its last position in a plain batch-1 forward; drop_image = the prompt
    without its image tokens."""
    vlm = vlms[family]
    ad = vlm.adapter
    encs = [ad.encode(Branch(prompt=r.prompt, image=r.image, system=r.system)) for r in REQS]
    rows = encs + [drop_image(ad, e) for e in encs]
    got = residual_probe(ad, rows, chunk=4)
    as_branches = residual_probe(
        ad,
        [Branch(prompt=r.prompt, image=r.image, system=r.system) for r in REQS]
        + [Branch(prompt=REQS[0].prompt, image=None)],
    )
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(as_branches, got[:3]))
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
    """Residual probe (vision): per image the stacked per-token outputs = the tower's own hidden_states."""
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
    # residual_probe(vision=True): (layers, vision) per row; a text-only row has no vision part
    rows = [encs[0], drop_image(ad, encs[1]), encs[2]]
    both = residual_probe(ad, rows, vision=True)
    assert both[1][1] is None
    for k, row in ((0, 0), (2, 2)):
        assert torch.allclose(both[k][1], got[row], atol=1e-5)
        assert torch.allclose(both[k][0], residual_probe(ad, [rows[k]])[0], atol=1e-4)


QWEN_IMAGES = [image(1, 80, 100), image(3, 120, 70), image(5, 64, 64), image(6, 84, 84)]


def test_qwen_window_layout_matches_tower(qwen_dyn):
    """qwen_window_layout: for several images of different grids packed into one tower call, each
    block row's (image, raster patch) = what the tower's own first-block input holds (matched row by
    row against patch_embed of the processor's patches)."""
    ad = qwen_dyn.adapter
    encs = [ad.encode(Branch(prompt="x", image=im)) for im in QWEN_IMAGES]
    grids = torch.cat([e.extras["image_grid_thw"] for e in encs])
    assert len({tuple(g) for g in grids.tolist()}) >= 3
    px = torch.cat([e.pixel_values for e in encs])
    img, ras = qwen_window_layout(grids, 2, qwen_dyn.model.config.vision_config.window_size, 14)
    want_img, want_ras = qwen_raster_of_rows(qwen_dyn, px, grids)
    assert torch.equal(img, want_img) and torch.equal(ras, want_ras)
    assert not torch.equal(ras[img == 0], qwen_proc_to_raster(grids[0]))  # windows: not the processor order
    assert vision_layers(ad) == list(qwen_visual(qwen_dyn).blocks)


def test_vision_probe_qwen_matches_hidden_states(qwen_dyn):
    """Residual probe (vision) on Qwen2.5-VL: per image (several grids in one chunk) = the tower's own
    hidden_states of that image alone, taken into raster order."""
    ad = qwen_dyn.adapter
    encs = [ad.encode(Branch(prompt="x", image=im)) for im in QWEN_IMAGES]
    got = vision_probe(ad, encs, chunk=4)
    vis = qwen_visual(qwen_dyn)
    for k, e in enumerate(encs):
        g = e.extras["image_grid_thw"]
        with torch.inference_mode():
            hs = torch.stack(list(vis(e.pixel_values, grid_thw=g, output_hidden_states=True).hidden_states))
        _, ras = qwen_raster_of_rows(qwen_dyn, e.pixel_values, g)
        want = hs[:, torch.argsort(ras)]
        assert (
            got[k].shape == want.shape == (len(vis.blocks) + 1, int(g[0, 1]) * int(g[0, 2]), want.shape[-1])
        )
        assert torch.allclose(got[k], want, atol=1e-5)


def test_vision_steering_qwen_matches_wrapped_mlps(qwen_dyn):
    """Vision-layer steering on Qwen2.5-VL: a patch-grid direction [H, W, D] per block, pushed through the hooks into
    a batch of images of different grids (one of them the direction's own grid, the others
    resampled bilinearly) = each image alone through the tower with its blocks' MLPs wrapped by
    the plain VTI layer and the direction resampled and put into window order by hand."""
    ad = qwen_dyn.adapter
    encs = [ad.encode(Branch(prompt="x", image=im)) for im in QWEN_IMAGES]
    assert encs[3].extras["image_grid_thw"][0].tolist() == [1, 6, 6]
    D = qwen_dyn.model.config.vision_config.hidden_size
    g = torch.Generator().manual_seed(7)
    vv = {l: torch.randn(6, 6, D, generator=g) for l in range(len(qwen_visual(qwen_dyn).blocks))}
    hooks = ActivationSteering(vision_vectors=vv, vision_lam=0.6)
    hooks.start(ad, [[e] for e in encs], [[] for _ in encs])
    try:
        with torch.inference_mode():
            got = ad.image_features(encs)
        states = vision_probe(ad, encs, chunk=4)  # the steered per-layer states, batched
    finally:
        hooks.finish()
    vis = qwen_visual(qwen_dyn)
    for k, e in enumerate(encs):
        px, grid = e.pixel_values, e.extras["image_grid_thw"]
        rows = {l: qwen_direction_rows(qwen_dyn, vv[l], px, grid) for l in vv}
        order = torch.argsort(qwen_raster_of_rows(qwen_dyn, px, grid)[1])
        with (
            torch.inference_mode(),
            wrapped_mlps(vision_layers_ref(qwen_dyn), lambda l: VTILayerRef(rows[l], 6.0)),
        ):
            want = ad.image_features([e])[0]
            hs = torch.stack(list(vis(px, grid_thw=grid, output_hidden_states=True).hidden_states))[:, order]
        with torch.inference_mode():
            plain = torch.stack(list(vis(px, grid_thw=grid, output_hidden_states=True).hidden_states))[
                :, order
            ]
        assert torch.allclose(got[k], want, atol=1e-6), (k, (got[k] - want).abs().max())
        assert torch.allclose(states[k], hs, atol=1e-5), (k, (states[k] - hs).abs().max())
        assert torch.equal(states[k][0], plain[0])  # the first block's input: not steered
        for l in range(1, hs.shape[0]):  # every block's output moved (the tiny tower's MLP outputs are small)
            assert float((states[k][l] - plain[l]).abs().max()) > 1e-4, (k, l)
        if k == 0:  # negative control: the direction in the processor's patch order (no window order) differs
            wrong = {l: grid_at(vv[l], *grid[0, 1:].tolist())[qwen_proc_to_raster(grid[0])] for l in vv}
            with (
                torch.inference_mode(),
                wrapped_mlps(vision_layers_ref(qwen_dyn), lambda l: VTILayerRef(wrong[l], 6.0)),
            ):
                bad = torch.stack(list(vis(px, grid_thw=grid, output_hidden_states=True).hidden_states))[
                    :, order
                ]
            assert float((bad[-1] - states[k][-1]).abs().max()) > 1e-4
    # the resampling itself: an equal grid is the direction, another grid = bilinear F.interpolate
    assert torch.equal(grid_at(vv[0], 6, 6), vv[0].reshape(36, D))
    # exact mode refuses a grid that differs; per-token [T, D] vectors are refused on this tower
    hooks = ActivationSteering(vision_vectors=vv, vision_lam=0.6, vision_resample="exact")
    hooks.start(ad, [], [])
    try:
        with torch.inference_mode(), pytest.raises(ValueError, match="6x6 patch grid, the image has 8x6"):
            ad.image_features(encs[:1])
        with torch.inference_mode():
            ad.image_features(encs[3:])  # its own grid: fine
    finally:
        hooks.finish()
    with pytest.raises(ValueError, match=r"patch grid \[H, W, D\]"):
        ActivationSteering(vision_vectors={0: torch.zeros(4, D)}, vision_lam=0.1).start(ad, [], [])


@pytest.mark.parametrize("family", FAMILIES)
def test_row_steering_matches_wrapped_mlps(vlms, family):
    """Steering only branch 1's rows (branch 0 untouched) through the hooks, in one batched
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
        with (
            torch.inference_mode(),
            wrapped_mlps(text_layers(vlm), lambda i: _Steer(vec[i], 0.8) if k == 1 else None),
        ):
            want = forward(vlm, inp, []).logits[0, -1].float()
        assert torch.allclose(logits[k], want, atol=1e-4), (family, k)
    # the hooks are gone
    with torch.inference_mode():
        plain = (
            forward(vlm, inputs(vlm, REQS[1].prompt, REQS[1].image, REQS[1].system), []).logits[0, -1].float()
        )
    assert not torch.allclose(plain, logits[1], atol=1e-3)


class _Steer(torch.nn.Module):
    """Plain ‖x‖·normalize(normalize(x) + λ·normalize(v)) (no gate)."""

    def __init__(self, v, lam):
        super().__init__()
        self.v, self.lam = v, lam

    def forward(self, x):
        return F.normalize(F.normalize(x, dim=-1) + self.lam * F.normalize(self.v, dim=-1), dim=-1) * x.norm(
            dim=-1, keepdim=True
        )


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
    outs = generate(
        vlm, REQS, method="vista", params=params, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16
    )
    assert outs[0].meta["finish_reason"] == "eos"
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert o.error is None, o.error
        ref = ref_vista(vlm, r, params, max_new_tokens=N_NEW, eos=eos, index=i)
        assert_same_as_reference(o, ref, eos, f"vista/{family}/{r.item_id}")


def test_vista_pca_artefact_matches_the_official_pca(vlms):
    """pca_artefact (the default under protocol: vista): the vector of the official rank-1 PCA of
    one sample (literally, in the reference: + e0 at layer 0, coordinate 0) — engine = reference,
    and the steered tokens leave those of v alone."""
    from vcdflow.protocols import get_protocol

    vlm = vlms["llava"]
    params = {"lam": 0.6, "pca_artefact": True}
    outs = generate(vlm, REQS, method="vista", params=params, max_new_tokens=N_NEW, eos_token_id=[])
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert_same_as_reference(
            o, ref_vista(vlm, r, params, max_new_tokens=N_NEW, index=i), [], f"vista/pca/{r.item_id}"
        )
    plain = generate(vlm, REQS, method="vista", params={"lam": 0.6}, max_new_tokens=N_NEW, eos_token_id=[])
    assert [o.token_ids for o in outs] != [o.token_ids for o in plain]
    res = get_protocol("vista").resolve(method="vista", family="llava", benchmark="pope")
    assert res.params["pca_artefact"] is True and "steering_vector.py:127-128" in res.sources["params"]


def test_vista_steers_and_augments(vlms):
    """λ = 0 and SLA off is plain greedy; each part alone changes the scores (the test would fail
    if either were a no-op)."""
    vlm = vlms["llava"]
    g = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    off = generate(
        vlm,
        REQS,
        method="vista",
        params={"lam": 0.0, "logits_aug": False},
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
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


# --- VTI's fitted directions ----------------------------------------------------------------------
from reference_steering import PCA, mask_patches_ref, ref_fit_vti  # noqa: E402
from vcdflow import steering_fit as SF  # noqa: E402


def test_pca_direction_matches_official():
    g = torch.Generator().manual_seed(1)
    for shape in ((5, 12), (4, 6, 10)):
        X = torch.randn(*shape, generator=g)
        pca = PCA(1).fit(X.clone())
        want = (pca.components_.sum(dim=1, keepdim=True) + pca.mean_).mean(0 if X.ndim == 2 else 1)
        got = SF.pca_direction(X)
        assert torch.allclose(got.reshape(want.shape), want, atol=1e-5), shape


def test_mask_patches_matches_official():
    img = torch.randn(3, 28, 42, generator=torch.Generator().manual_seed(2))
    idx = [0, 4, 5]
    got, want = SF.mask_patches(img, torch.tensor(idx), 14), mask_patches_ref(img, idx, 14)
    assert torch.equal(got, want) and not torch.equal(got, img)


WORDS = {
    "demo": ("a cup and a fork .", "a cup , a fork and a plate ."),
    "other": ("a cup and a dog .", "a cup , a dog and a cat ."),
}


@pytest.fixture(scope="module")
def fit_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("vti_fit")
    recs = {}
    for key, (clean, hall) in WORDS.items():
        rows = []
        for k in range(4):
            name = f"{key}_{k}.png"
            image(20 + k, 64 + 8 * k, 64).save(d / name)
            rows.append(
                {
                    "id": str(k),
                    "image": name,
                    "question": "describe this image in detail",
                    "value": " " + clean if k % 2 else clean,
                    "h_value": hall,
                }
            )
        (d / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        recs[key] = rows
    return d, recs


FIT = {"num_demos": 3, "num_trials": 3, "mask_ratio": 0.5, "seed": 5, "fit_alpha_image": 0.9}
#: Qwen2.5-VL's fit grid in these tests (84×84 px on the dynamic-resolution processor); the demo
#: images' native grids are 4×4 and 4×6, the decode images' 8×6 and 4×8: all resampled
QWEN_GRID = [6, 6]


def _fit(family):
    return {**FIT, "vision_grid": QWEN_GRID} if family == "qwen2_5_vl" else FIT


@pytest.fixture(scope="module")
def fitted(vlms, qwen_dyn, fit_sets):
    d, recs = fit_sets
    out = {}
    for fam in FAMILIES:
        vlm = _vlm(vlms, qwen_dyn, fam)
        demos = SF.load_demos(d / ("demo.jsonl" if fam == "demo" else "other.jsonl"))
        art = SF.fit_vti(vlm, demos, d, _fit(fam), model_name=fam)
        path = SF.save_directions(art, d / f"{fam}.pt")
        out[fam] = (art, path, demos)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_vti_matches_reference(vlms, qwen_dyn, fit_sets, fitted, family):
    """The fitted directions = a literal port of obtain_visual_vti / obtain_textual_vti on HF
    hidden_states (same demos, same mask draws), the textual fit run under the visual intervention;
    Qwen2.5-VL: the visual fit at the fit grid (images resized and cropped to it, the tower's
    states in raster order: reference_steering's own unpacking), direction [L_v, h, w, D]."""
    d, _ = fit_sets
    vlm = _vlm(vlms, qwen_dyn, family)
    art, path, demos = fitted[family]
    chosen = SF.select_demos(demos, FIT["num_demos"], FIT["seed"])
    import random

    random.seed(FIT["seed"])
    assert chosen == random.sample(demos, FIT["num_demos"])  # the official draw
    ref = ref_fit_vti(
        vlm,
        chosen,
        d,
        FIT["num_trials"],
        FIT["mask_ratio"],
        FIT["seed"],
        FIT["fit_alpha_image"],
        grid=QWEN_GRID,
    )
    L, D = len(vlm.adapter.decoder_layers()), vlm.adapter.text_config.hidden_size
    assert art["text"].shape == (L, D)
    assert torch.allclose(art["text"], ref["text"], atol=1e-4), (art["text"] - ref["text"]).abs().max()
    if family == "qwen2_5_vl":
        vc = vlm.model.config.vision_config
        assert art["vision"].shape == (vc.depth, *QWEN_GRID, vc.hidden_size)
        assert art["meta"]["vision_grid"] == QWEN_GRID
    assert art["vision"].shape == ref["vision"].shape
    assert torch.allclose(art["vision"], ref["vision"], atol=1e-4), (
        (art["vision"] - ref["vision"]).abs().max()
    )
    loaded = SF.load_directions(path)
    assert torch.equal(loaded["text"], art["text"]) and loaded["meta"]["fit_key"] == art["meta"]["fit_key"]
    assert loaded["meta"]["demo_ids"] == [r["id"] for r in chosen]


def test_fit_key_and_config():
    a = SF.fit_key("m", SF.fit_config({"num_demos": 3}), "x")
    assert a == SF.fit_key("m", SF.fit_config({"num_demos": 3}), "x") and len(a) == 12
    assert (
        a
        != SF.fit_key("m", SF.fit_config({"num_demos": 4}), "x")
        != SF.fit_key("m2", SF.fit_config({"num_demos": 3}), "x")
    )
    with pytest.raises(ValueError, match="'num_demo'"):
        SF.fit_config({"num_demo": 3})
    with pytest.raises(ValueError, match="num_demos=9"):
        SF.select_demos([{}] * 3, 9, 0)


def test_demo_fit_set(tmp_path):
    """Clean = canonical caption of the objects; hallucinated = + the most frequent absent
    same-group categories."""
    inst = {
        "categories": [
            {"id": 1, "name": "cup"},
            {"id": 2, "name": "plate"},
            {"id": 3, "name": "fork"},
            {"id": 4, "name": "apple"},
            {"id": 9, "name": "dog"},
        ],
        "images": [
            {"id": 1, "file_name": "a.png"},
            {"id": 2, "file_name": "b.png"},
            {"id": 3, "file_name": "c.png"},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 3},
            {"image_id": 1, "category_id": 9},
            {"image_id": 2, "category_id": 2},
            {"image_id": 2, "category_id": 3},
            {"image_id": 3, "category_id": 2},
        ],
    }
    p = tmp_path / "inst.json"
    p.write_text(json.dumps(inst))
    recs = SF.demo_fit_set(p, n_co=2)
    assert recs[0]["image"] == "a.png" and recs[0]["value"] == "a fork and a dog ."
    # image 2 (kitchen): its absent kitchen categories by frequency (cup and apple: never seen), then name
    assert recs[1]["value"] == "a plate and a fork ." and recs[1]["co_objects"] == ["apple", "cup"]
    assert recs[1]["h_value"] == "a cup , a plate , a fork and an apple ."
    assert len(SF.demo_fit_set(p, n=1)) == 1


# --- vti ---------------------------------------------------------------------------------------------
VTI_CASES = [(f, p) for f in ("llava", "instructblip", "demo", "qwen2_5_vl") for p in ("both", "text")]


@pytest.mark.parametrize("family,variant", VTI_CASES)
def test_vti_greedy_matches_reference(vlms, qwen_dyn, fitted, family, variant):
    """Qwen2.5-VL: the dynamic-resolution processor (decode images at 8×6 and 4×8 patch grids, the
    direction fitted at 6×6: resampled), the reference placing the direction by hand."""
    vlm = _vlm(vlms, qwen_dyn, family)
    art, path, _ = fitted[family]
    params = {"directions": str(path), "alpha_image": 3.0 if variant == "both" else 0.0, "alpha_text": 3.0}
    free = generate(vlm, REQS[:1], method="vti", params=params, max_new_tokens=N_NEW, eos_token_id=[])[0]
    eos = [free.token_ids[2]]
    for share in (True, False):
        outs = generate(
            vlm,
            REQS,
            method="vti",
            params=params,
            max_new_tokens=N_NEW,
            eos_token_id=eos,
            batch_size=16,
            share_prefix=share,
        )
        assert outs[0].meta["finish_reason"] == "eos"
        for i, (r, o) in enumerate(zip(REQS, outs)):
            assert o.error is None, o.error
            ref = ref_vti(vlm, r, art, params, max_new_tokens=N_NEW, eos=eos, index=i)
            assert_same_as_reference(o, ref, eos, f"vti/{family}/{variant}/{r.item_id}")


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_vti_steering_changes_the_output(vlms, qwen_dyn, fitted, family):
    """α = 0 is greedy; the textual and the visual part each change the greedy output."""
    vlm = _vlm(vlms, qwen_dyn, family)
    path = str(fitted[family][1])
    g = generate(vlm, REQS, method="greedy", max_new_tokens=N_NEW, eos_token_id=[])
    zero = generate(
        vlm,
        REQS,
        method="vti",
        params={"directions": path, "alpha_image": 0.0, "alpha_text": 0.0},
        max_new_tokens=N_NEW,
        eos_token_id=[],
    )
    assert [o.token_ids for o in g] == [o.token_ids for o in zero]
    for a in ({"alpha_image": 0.0, "alpha_text": 8.0}, {"alpha_image": 8.0, "alpha_text": 0.0}):
        if family == "qwen2_5_vl" and a["alpha_image"]:
            # the tiny Qwen tower's MLP outputs are small next to its residual stream: the visual part
            # moves the image features the decode sees (~1e-4) without flipping a token; check that
            from vcdflow.decoding.methods import METHODS

            encs = [vlm.adapter.encode(Branch(prompt=r.prompt, image=r.image)) for r in REQS]
            hooks = METHODS["vti"].forward_hooks(
                vlm.adapter, {**METHODS["vti"].defaults, "directions": path, **a}
            )
            hooks.start(vlm.adapter, [], [])
            try:
                with torch.inference_mode():
                    steered = vlm.adapter.image_features(encs)
            finally:
                hooks.finish()
            with torch.inference_mode():
                plain = vlm.adapter.image_features(encs)
            assert all(float((x - y).abs().max()) > 1e-5 for x, y in zip(steered, plain))
            continue
        o = generate(
            vlm, REQS, method="vti", params={"directions": path, **a}, max_new_tokens=N_NEW, eos_token_id=[]
        )
        assert [x.token_ids for x in o] != [x.token_ids for x in g], a


def test_vti_sampling_seed_and_batch(vlms, fitted):
    vlm = vlms["demo"]
    art, path, _ = fitted["demo"]
    reqs = REQS * 6
    kw = dict(
        method="vti", params={"directions": str(path)}, do_sample=True, max_new_tokens=N_NEW, eos_token_id=[]
    )
    a = generate(vlm, reqs, seed=3, batch_size=16, **kw)
    b = generate(vlm, reqs, seed=3, batch_size=1, **kw)
    c = generate(vlm, reqs, seed=4, batch_size=16, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]
    ref = ref_vti(
        vlm, REQS[0], art, {"directions": str(path)}, do_sample=True, max_new_tokens=N_NEW, seed=3, index=0
    )
    assert a[0].token_ids == ref.tokens


def test_vti_bad_input(vlms, fitted, tmp_path):
    kw = dict(method="vti", max_new_tokens=2)
    with pytest.raises(ValueError, match="'directions'"):
        generate(vlms["llava"], REQS[:1], **kw)
    with pytest.raises(ValueError, match="does not exist"):
        generate(vlms["llava"], REQS[:1], params={"directions": str(tmp_path / "nope.pt")}, **kw)
    # a per-token artefact on Qwen2.5-VL's packed tower, a patch-grid artefact on LLaVA's CLIP
    with pytest.raises(ValueError, match="qwen2_5_vl family needs a patch grid"):
        generate(
            vlms["qwen2_5_vl"],
            REQS[:1],
            params={"directions": str(fitted["llava"][1]), "alpha_text": 0},
            **kw,
        )
    with pytest.raises(ValueError, match="patch-grid direction is for qwen2_5_vl"):
        generate(
            vlms["llava"],
            REQS[:1],
            params={"directions": str(fitted["qwen2_5_vl"][1]), "alpha_text": 0},
            **kw,
        )
    with pytest.raises(ValueError, match="'vision_resample'"):
        generate(vlms["llava"], REQS[:1], params={"directions": "x", "vision_resample": "cubic"}, **kw)
    with pytest.raises(ValueError, match="decoder layers"):  # the demo model's artefact on tiny LLaVA
        generate(vlms["llava"], REQS[:1], params={"directions": str(fitted["demo"][1])}, **kw)
    with pytest.raises(ValueError, match="'alpha_text'"):
        generate(vlms["llava"], REQS[:1], params={"directions": "x", "alpha_text": -1}, **kw)


# --- steering through the engine: one branch of two steered -----------------------------------------------
from dataclasses import dataclass as _dc  # noqa: E402
from typing import ClassVar as _CV  # noqa: E402

from vcdflow.decoding.methods.base import Method as _Method  # noqa: E402


@_dc(frozen=True)
class SteerSecond(_Method):
    """Test method: branches [original, the same input]; only branch 1 is steered; score = its logits
    minus 0.5 × the unsteered original's."""

    name: _CV[str] = "test_steer_second"

    def branches(self, request, ctx):
        return [
            self.original(request),
            Branch(prompt=request.prompt, image=request.image, system=request.system, name="steered"),
        ]

    def forward_hooks(self, adapter, params):
        D = adapter.text_config.hidden_size
        vec = {
            l: torch.randn(D, generator=torch.Generator().manual_seed(10 + l))
            for l in range(len(adapter.decoder_layers()))
        }
        return ActivationSteering(vectors=vec, lam=1.5, branches=(1,))

    def combine(self, logits, step, state):
        return logits[..., 1, :] - 0.5 * logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None


@pytest.mark.parametrize("family", FAMILIES)
def test_branch_steering_through_the_engine(vlms, family):
    """Steering at every position of the decode (prefill and steps, rows retiring): equals a batch-1
    no-cache loop running the original plainly and the copy with wrapped MLPs. With shared prefixes
    the two branches would share one prefix row: the hooks refuse, naming share_prefix."""
    from reference_methods import Result
    from reference_steering import _pick

    vlm = vlms[family]
    m = SteerSecond()
    free = generate(vlm, REQS[:1], method=m, max_new_tokens=N_NEW, eos_token_id=[], share_prefix=False)[0]
    assert free.error is None, free.error
    eos = [free.token_ids[2]]
    outs = generate(vlm, REQS, method=m, max_new_tokens=N_NEW, eos_token_id=eos, share_prefix=False)
    hooks = m.forward_hooks(vlm.adapter, {})
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert o.error is None, o.error
        inp = inputs(vlm, r.prompt, r.image, r.system)
        res = Result()
        with torch.inference_mode():
            for _ in range(N_NEW):
                plain = forward(vlm, inp, res.tokens).logits[0, -1].float()
                with wrapped_mlps(text_layers(vlm), lambda l: _Steer(hooks.vectors[l], 1.5)):
                    steered = forward(vlm, inp, res.tokens).logits[0, -1].float()
                if not _pick(steered - 0.5 * plain, res, False, 1.0, None, 1.0, None, eos):
                    break
        assert_same_as_reference(o, res, eos, f"steer_second/{family}/{r.item_id}")
    shared = generate(vlm, REQS[:1], method=m, max_new_tokens=2, eos_token_id=[], share_prefix=True)[0]
    assert shared.error is not None and "share_prefix" in shared.error


@pytest.mark.parametrize("family", ["llava", "instructblip", "demo"])
def test_vision_steering_matches_wrapped_mlps(vlms, family):
    """Vision-layer steering: per-token vectors pushed into every vision layer's MLP output (hooks installed by
    start, as the engine does before prefill_embeds) = the tower with its MLPs wrapped."""
    vlm = vlms[family]
    ad = vlm.adapter
    encs = [ad.encode(Branch(prompt=r.prompt, image=r.image)) for r in REQS]
    shape = vision_probe(ad, encs[:1])[0].shape  # [L_v + 1, T, D]
    g = torch.Generator().manual_seed(7)
    vv = {l: torch.randn(shape[1], shape[2], generator=g) for l in range(shape[0] - 1)}
    hooks = ActivationSteering(vision_vectors=vv, vision_lam=0.6)
    hooks.start(ad, [[e] for e in encs], [[] for _ in encs])
    try:
        with torch.inference_mode():
            got = ad.image_features(encs)
    finally:
        hooks.finish()
    with torch.inference_mode(), wrapped_mlps(vision_layers_ref(vlm), lambda l: VTILayerRef(vv[l], 6.0)):
        want = ad.image_features(encs)  # VTILayerRef pushes 0.1·λ: λ 6 = 0.6
    with torch.inference_mode():
        plain = ad.image_features(encs)
    for a, b, c in zip(got, want, plain):
        assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)


def test_workflow_fit_settings_and_path():
    """The fit settings the workflow uses per model: the official LLaVA fit prompt is llava_v1 with
    its system text; Qwen2.5-VL fits no visual direction; the demo world fits on its train split;
    the file name changes with any fit setting."""
    from vcdflow.protocols._shared import LLAVA_V1_SYSTEM

    cfg = {"world": "real", "models": {"l": {"family": "llava"}, "q": {"family": "qwen2_5_vl"}}}
    s = SF.settings_for(cfg, "l")
    assert s["chat_template"] == "llava_v1" and s["system"] == LLAVA_V1_SYSTEM and s["vision"] is True
    q = SF.settings_for(cfg, "q")
    assert q["vision"] is True and q["vision_grid"] is None  # Qwen2.5-VL fits its visual part too
    # vision_grid (added later) left out of the key at its default: earlier fits keep their file names
    import hashlib

    old = {k: v for k, v in s.items() if k != "vision_grid"}
    blob = json.dumps({"model": "l", "fit": old, "demos": "x"}, sort_keys=True, default=str)
    assert SF.fit_key("l", s, "x") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert SF.fit_key("q", q, "x") != SF.fit_key("q", {**q, "vision_grid": [34, 46]}, "x")
    with pytest.raises(ValueError, match="'vision_grid'"):
        SF.settings_for({**cfg, "vti": {"fit": {"vision_grid": [3]}}}, "q")
    assert (
        SF.settings_for({**cfg, "world": "demo"}, "l")["chat_template"] is None
    )  # demo fit set: own template
    p = SF.directions_path(cfg, "l")
    assert p.startswith("results/vti/l/") and p.endswith(".pt") and p == SF.directions_path(cfg, "l")
    assert SF.directions_path({**cfg, "vti": {"fit": {"num_demos": 50}}}, "l") != p
    assert SF.directions_path({**cfg, "world": "demo"}, "l") != p
    with pytest.raises(ValueError, match="'mask'"):
        SF.settings_for({**cfg, "vti": {"fit": {"mask": 1}}}, "l")


def test_qwen_fit_grid(vlms, qwen_dyn, fit_sets):
    """Qwen2.5-VL's default fit grid = the processor's grid for a 640×480 image (smart_resize: the
    tiny 56²-pixel processor scales it by √(640·480/56²) and floors to 28 px: 28×56 px → 2×4; the
    56²–112² one: 84×112 px → 6×8); the fit patches the fit image without the processor's resize,
    so a grid outside the processor's pixel range works; an odd grid fails naming vision_grid."""
    assert SF.fit_grid(vlms["qwen2_5_vl"].adapter, SF.fit_config()) == (2, 4)
    assert SF.fit_grid(qwen_dyn.adapter, SF.fit_config()) == (6, 8)
    assert SF.fit_grid(qwen_dyn.adapter, SF.fit_config({"vision_grid": [6, 6]})) == (6, 6)
    d, _ = fit_sets
    demos = SF.load_demos(d / "other.jsonl")
    with pytest.raises(ValueError, match="'vision_grid' \\[5, 6\\]: rows and columns must be multiples"):
        SF.fit_vti(qwen_dyn, demos, d, {**FIT, "vision_grid": [5, 6]})
    art = SF.fit_vti(vlms["qwen2_5_vl"], demos, d, {**FIT, "num_trials": 1})  # default grid 2×4, below 56²
    assert art["vision"].shape[1:3] == (2, 4) and art["meta"]["vision_grid"] == [2, 4]


def test_visual_direction_chunking(vlms):
    """The running mean over the masked copies does not depend on the chunk size (3 demos: with 2 the
    centred PCA input is ±one vector and the sign convention is a tie)."""
    ad = vlms["demo"].adapter
    clean = [ad.encode(Branch(prompt=r.prompt, image=image(30 + k, 64, 64))) for k, r in enumerate(REQS)]
    with torch.inference_mode():
        a = SF.visual_direction(ad, clean, 5, 0.5, torch.Generator().manual_seed(1), chunk=2)
        b = SF.visual_direction(ad, clean, 5, 0.5, torch.Generator().manual_seed(1), chunk=16)
    assert torch.allclose(a, b, atol=1e-5)
