"""Plain references for the steering methods (``vista``, ``vti``), written apart from the engine and
from ``vcdflow.decoding.steering``.

As in ``reference_methods.py``: one request at a time, no KV cache, no padding, every step
recomputes the whole sequence through the Hugging Face model's ``forward``. The steering is done
the official way — each layer's ``mlp`` is *replaced* by ``nn.Sequential(mlp, SteerLayer)``
(``LzVv123456/VISTA:llm_layers.py:132-150``, ``shengliu66/VTI:vti_utils/llm_layers.py:115-121``)
and restored afterwards — with the two official layer formulas written out below. VISTA's vector
is taken like the official ``ForwardTracer`` (forward hooks on the layer modules, last position);
SLA reads ``output_hidden_states`` as the official ``llava_llama.py:95-103`` does.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from reference_decoder import ref_warp_and_pick
from reference_methods import Result, forward, inputs
from vcdflow.decoding import METHODS
from vcdflow.decoding.sampling import make_generator

#: methods this module covers (tests/test_methods_steering.py): tests/test_decoding.py's generic
#: reference test should skip them (``vti`` also needs a ``directions`` file, which the generic
#: batch-size test does not give; test_methods_steering checks batch 1 vs 16 for both)
COVERED = ("vista", "vti")


class VSVLayerRef(nn.Module):
    """VISTA's ``VSVLayer`` (non-simple mode) for one vector: the cosine gate, then the push."""

    def __init__(self, v, lam):
        super().__init__()
        self.v, self.lam = v, lam

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        n = torch.norm(x, p=2, dim=-1, keepdim=True)
        sim = 1.0 + torch.max(
            torch.tensor([0.0]), F.cosine_similarity(x, -self.v[None, None, :], dim=-1)
        ).unsqueeze(-1)
        y = self.lam * sim * F.normalize(self.v, dim=-1).repeat(1, x.shape[1], 1)
        return (F.normalize(F.normalize(x, p=2, dim=-1) + y, p=2, dim=-1) * n).to(dtype)


class VTILayerRef(nn.Module):
    """VTI's ``VTILayer`` for one direction d (``[D]`` or per token ``[T, D]``): no gate, 0.1·λ."""

    def __init__(self, d, lam):
        super().__init__()
        self.d, self.lam = d, lam

    def forward(self, x):
        dtype = x.dtype
        n = torch.norm(x.float(), dim=-1).unsqueeze(-1)
        y = self.lam * F.normalize(self.d, dim=-1)
        return (F.normalize(F.normalize(x.float(), dim=-1) + 0.1 * y, dim=-1) * n).to(dtype)


def text_layers(vlm):
    return list(vlm.adapter.text_model().layers)


def vision_layers_ref(vlm):
    m = vlm.model
    if vlm.family == "instructblip":
        return list(m.vision_model.encoder.layers)
    if vlm.family == "qwen2_5_vl":
        return list(m.model.visual.blocks)
    return list(m.model.vision_tower.encoder.layers)


# --- Qwen2.5-VL's packed tower, written apart from vcdflow.decoding.steering -------------------------
def qwen_visual(vlm):
    return vlm.model.model.visual


def qwen_proc_to_raster(grid, merge=2) -> torch.Tensor:
    """Processor row n of one image → its raster index i·w + j (the processor flattens the patches
    as ``(t, h/m, w/m, m, m)``: merge units row-major, the m×m patches of a unit row-major)."""
    _, h, w = [int(x) for x in grid]
    n = torch.arange(h * w)
    unit, sub = n // (merge * merge), n % (merge * merge)
    bh, bw = unit // (w // merge), unit % (w // merge)
    i, j = sub // merge, sub % merge
    return (bh * merge + i) * w + bw * merge + j


@torch.inference_mode()
def qwen_window_rows(vlm, pixel_values, grid_thw) -> torch.Tensor:
    """For the tower's packed block sequence (window order), the processor row each row holds —
    found empirically: the first block's input (HF ``hidden_states[0]``) row by row against
    ``patch_embed`` of the processor rows (random images: every row distinct)."""
    vis = qwen_visual(vlm)
    emb = vis.patch_embed(pixel_values).float()
    hs0 = vis(pixel_values, grid_thw=grid_thw, output_hidden_states=True).hidden_states[0].float()
    perm = torch.cdist(hs0, emb).argmin(1)
    assert sorted(perm.tolist()) == list(range(emb.shape[0])), (
        "window rows do not match the patches one to one"
    )
    return perm


def qwen_raster_of_rows(vlm, pixel_values, grid_thw):
    """(image [N], raster [N]) of every packed row, via :func:`qwen_window_rows`."""
    img, ras = [], []
    for k, g in enumerate(grid_thw.tolist()):
        img.append(torch.full((int(g[1]) * int(g[2]),), k))
        ras.append(qwen_proc_to_raster(g))
    img, ras = torch.cat(img), torch.cat(ras)
    perm = qwen_window_rows(vlm, pixel_values, grid_thw)
    return img[perm], ras[perm]


def grid_at(d, h, w):
    """[H, W, D] → raster rows [h·w, D] (bilinear, align_corners False, unless the grid is equal)."""
    H, W, D = d.shape
    if (H, W) == (h, w):
        return d.reshape(h * w, D)
    return (
        F.interpolate(d.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        .permute(1, 2, 0)
        .reshape(h * w, D)
    )


def qwen_direction_rows(vlm, d, pixel_values, grid_thw):
    """A patch-grid direction [H, W, D] as the packed block rows of one image (window order)."""
    _, h, w = [int(x) for x in grid_thw[0]]
    _, ras = qwen_raster_of_rows(vlm, pixel_values, grid_thw)
    return grid_at(d, h, w)[ras]


def qwen_unflatten(rows, grid, p=14, m=2, tp=2):
    """Processor rows [h·w, C·tp·p·p] of one image → its normalised image [C, h·p, w·p] (frame 0)."""
    _, h, w = [int(x) for x in grid]
    c = rows.shape[1] // (tp * p * p)
    x = rows.reshape(h // m, w // m, m, m, c, tp, p, p)[:, :, :, :, :, 0]  # [hm, wm, m, m, c, p, p]
    return x.permute(4, 0, 2, 5, 1, 3, 6).reshape(c, h * p, w * p)


def qwen_flatten(img, grid, p=14, m=2, tp=2):
    """The inverse of :func:`qwen_unflatten` (the frame repeated tp times)."""
    _, h, w = [int(x) for x in grid]
    c = img.shape[0]
    x = img.reshape(c, h // m, m, p, w // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)  # [hm, wm, m, m, c, p, p]
    x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, tp, -1, -1)
    return x.reshape(h * w, c * tp * p * p)


def qwen_fit_image(img, grid, p=14):
    """Cover (w·p, h·p) px (bicubic), centre crop."""
    from PIL import Image

    W, H = grid[1] * p, grid[0] * p
    s = max(W / img.width, H / img.height)
    w, h = max(W, round(img.width * s)), max(H, round(img.height * s))
    im = img.resize((w, h), Image.BICUBIC)
    return im.crop(((w - W) // 2, (h - H) // 2, (w - W) // 2 + W, (h - H) // 2 + H))


@contextlib.contextmanager
def wrapped_mlps(layers, make):
    """Replace ``layer.mlp`` by ``Sequential(mlp, make(i))`` for each layer i where make gives a
    module (None: untouched); restore on exit."""
    old = []
    try:
        for i, layer in enumerate(layers):
            extra = make(i)
            if extra is not None:
                old.append((layer, layer.mlp))
                layer.mlp = nn.Sequential(layer.mlp, extra)
        yield
    finally:
        for layer, mlp in old:
            layer.mlp = mlp


def layer_outputs_last(vlm, inp) -> torch.Tensor:
    """[L, D]: every decoder layer module's output at the last position (forward hooks)."""
    got = {}
    hs = []
    for i, layer in enumerate(text_layers(vlm)):

        def hook(mod, a, out, _i=i):
            got[_i] = (out[0] if isinstance(out, tuple) else out)[0, -1].float()

        hs.append(layer.register_forward_hook(hook))
    try:
        forward(vlm, inp, [])
    finally:
        for h in hs:
            h.remove()
    return torch.stack([got[i] for i in range(len(hs))])


def no_image(vlm, inp) -> dict:
    """The prompt ids without the image's tokens (placeholders; Qwen2.5-VL's vision markers)."""
    cfg = vlm.model.config
    drop = {vlm.adapter.image_token_id} | {
        getattr(cfg, a)
        for a in ("vision_start_token_id", "vision_end_token_id")
        if getattr(cfg, a, None) is not None
    }
    ids = [t for t in inp["input_ids"][0].tolist() if t not in drop]
    return {"input_ids": torch.tensor([ids])}


def _pick(scores, res, do_sample, temperature, top_k, top_p, gs, eos):
    top2 = torch.topk(scores, 2).values
    res.margins.append(float(top2[0] - top2[1]) if torch.isfinite(top2[1]) else math.inf)
    tok = ref_warp_and_pick(scores, do_sample, temperature, top_k, top_p, gs)
    if tok in eos:
        res.finish = "eos"
        return False
    res.tokens.append(tok)
    return True


@torch.inference_mode()
def ref_vista(
    vlm,
    req,
    params=None,
    *,
    do_sample=False,
    temperature=1.0,
    top_p=1.0,
    top_k=None,
    max_new_tokens=5,
    seed=0,
    eos=(),
    index=0,
) -> Result:
    p = {**METHODS["vista"].defaults, **(params or {})}
    gs = make_generator(seed, req.item_id or f"#{index}", "sample")
    res = Result()
    inp = inputs(vlm, req.prompt, req.image, req.system)
    v = layer_outputs_last(vlm, inp) - layer_outputs_last(vlm, no_image(vlm, inp))  # obtain_vsv: pos - neg
    if p["pca_artefact"]:  # VISTA steering_vector.py:123-128 + myutils.py PCA / svd_flip, on the CPU
        X = v.reshape(1, -1).float().cpu()
        mean = X.mean(0, keepdim=True)
        U, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)
        signs = torch.sign(U[torch.argmax(torch.abs(U), 0), torch.arange(U.shape[1])])
        Vh = Vh * signs.view(-1, 1)
        v = (Vh[:1].sum(dim=0, keepdim=True) + mean).mean(0).view(v.shape).to(v.dtype)
    L = v.shape[0]
    s, e = p["layers"] or (0, L)
    if p["logits_layers"] is None:
        window = list(range(max(L - 7, 0), max(L - 2, 0) + 1))
    else:
        window = list(range(p["logits_layers"][0], p["logits_layers"][1] + 1))
    with wrapped_mlps(text_layers(vlm), lambda i: VSVLayerRef(v[i], p["lam"]) if s <= i < e else None):
        for _ in range(max_new_tokens):
            if p["logits_aug"]:
                m = vlm.model
                lm = m.language_model if vlm.family == "instructblip" else m
                out = _forward_hidden(vlm, inp, res.tokens)
                hs = out.hidden_states[1:]  # decoder-layer outputs
                head = lm.get_output_embeddings()
                aug = torch.stack([head(hs[i][0, -1]).float() for i in window]).mean(0)
                a = p["logits_alpha"]
                scores = a * aug + (1 - a) * out.logits[0, -1].float()
            else:
                scores = forward(vlm, inp, res.tokens).logits[0, -1].float()
            if not _pick(scores, res, do_sample, temperature, top_k, top_p, gs, eos):
                break
    return res


def _forward_hidden(vlm, inp, generated):
    """``reference_methods.forward`` with ``output_hidden_states``."""
    return forward(vlm, inp, generated, hidden=True)


@torch.inference_mode()
def ref_vti(
    vlm,
    req,
    directions: dict,
    params=None,
    *,
    do_sample=False,
    temperature=1.0,
    top_p=1.0,
    top_k=None,
    max_new_tokens=5,
    seed=0,
    eos=(),
    index=0,
) -> Result:
    """VTI: ``directions["text"]`` [L, D] on the LM layers with λ = alpha_text,
    ``directions["vision"]`` [L_v, T, D] on the vision layers with λ = alpha_image (0: off)."""
    p = {**METHODS["vti"].defaults, **(params or {})}
    gs = make_generator(seed, req.item_id or f"#{index}", "sample")
    res = Result()
    inp = inputs(vlm, req.prompt, req.image, req.system)
    dt, dv = directions.get("text"), directions.get("vision")
    at, av = float(p["alpha_text"]), float(p["alpha_image"])
    with contextlib.ExitStack() as stack:
        if av != 0 and dv is not None and vlm.family == "qwen2_5_vl":
            rows = [
                qwen_direction_rows(vlm, dv[i], inp["pixel_values"], inp["image_grid_thw"])
                for i in range(len(dv))
            ]
            stack.enter_context(wrapped_mlps(vision_layers_ref(vlm), lambda i: VTILayerRef(rows[i], av)))
        elif av != 0 and dv is not None:
            stack.enter_context(wrapped_mlps(vision_layers_ref(vlm), lambda i: VTILayerRef(dv[i], av)))
        if at != 0 and dt is not None:
            stack.enter_context(wrapped_mlps(text_layers(vlm), lambda i: VTILayerRef(dt[i], at)))
        for _ in range(max_new_tokens):
            scores = forward(vlm, inp, res.tokens).logits[0, -1].float()
            if not _pick(scores, res, do_sample, temperature, top_k, top_p, gs, eos):
                break
    return res


# --- VTI's fit, literally (vti_utils/pca.py, vti_utils/utils.py) ------------------------------------
def svd_flip(u, v):
    max_abs_cols = torch.argmax(torch.abs(u), 1)
    max_abs_cols = max_abs_cols.unsqueeze(-1)
    signs = torch.sign(torch.gather(u, 1, max_abs_cols))
    u *= signs
    v *= signs.view(v.shape[0], -1, 1)
    return u, v


class PCA:
    """``vti_utils/pca.py`` (fit only)."""

    def __init__(self, n_components):
        self.n_components = n_components

    def fit(self, X):
        if X.ndim == 2:
            n, d = X.size()
            X = X.unsqueeze(0)
        elif X.ndim == 3:
            _, n, d = X.size()
        d = min(self.n_components, d)
        self.mean_ = X.mean(1, keepdim=True)
        Z = X - self.mean_
        U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
        U, Vt = svd_flip(U, Vh)
        self.components_ = Vt[:, :d]
        return self


def mask_patches_ref(tensor, indices, patch_size=14):
    new_tensor = tensor.clone()
    mean_values = tensor.mean(dim=(1, 2), keepdim=True)
    patches_per_row = tensor.shape[2] // patch_size
    for index in indices:
        row = index // patches_per_row
        col = index % patches_per_row
        start_x = col * patch_size
        start_y = row * patch_size
        new_tensor[:, start_y : start_y + patch_size, start_x : start_x + patch_size] = mean_values.expand(
            -1, patch_size, patch_size
        )
    return new_tensor


def _tower(vlm):
    if vlm.family == "qwen2_5_vl":
        return qwen_visual(vlm)
    return vlm.model.vision_model if vlm.family == "instructblip" else vlm.model.model.vision_tower


@torch.inference_mode()
def ref_fit_vti(
    vlm, demos, image_dir, num_trials, mask_ratio, seed, fit_alpha_image, system=None, vision=True, grid=None
):
    """obtain_visual_vti then (with the visual intervention installed) obtain_textual_vti, on the
    given (already selected) demos; ``image_tensor`` from the processor, ``input_ids`` from the
    template + question + caption (``conv.get_prompt() + value``)."""
    import os

    from PIL import Image

    proc = vlm.processor
    patch = getattr(vlm.model.config.vision_config, "patch_size", 14)
    g = torch.Generator().manual_seed(seed)
    qwen = vlm.family == "qwen2_5_vl"
    images, texts, grids = [], [], []
    for d in demos:
        raw = Image.open(os.path.join(image_dir, d["image"])).convert("RGB")
        base = vlm.adapter.build_text(d["question"], True, system)
        pos = proc(text=[base + d["value"]], images=[raw], return_tensors="pt")
        neg = proc(text=[base + d["h_value"]], images=[raw], return_tensors="pt")
        if qwen:  # the visual fit at the fit grid: resize + centre crop, then the processor
            vis = proc(
                text=[base + d["value"]],
                images=[qwen_fit_image(raw, grid)],
                do_resize=False,
                return_tensors="pt",
            )
            thw = vis["image_grid_thw"]
            assert thw[0].tolist() == [1, *grid], thw
            grids.append(thw)
            image_tensor = qwen_unflatten(vis["pixel_values"], thw[0])
        else:
            image_tensor = pos["pixel_values"][0]
        trials = []
        for _ in range(num_trials if vision else 0):
            token_numbers = image_tensor.shape[-1] * image_tensor.shape[-2] / patch**2  # raster patch index
            mask_index = torch.randperm(int(token_numbers), generator=g)[: int(mask_ratio * token_numbers)]
            trials.append(mask_patches_ref(image_tensor, mask_index.tolist(), patch_size=patch))
        images.append([trials, image_tensor])
        texts.append((neg, pos))
    vdir = None
    if vision:
        tower = _tower(vlm)

        order = {}  # Qwen2.5-VL: window order → raster order, found on the clean image (masked
        #              patches are all equal, so they cannot be matched row by row)

        def states(t, k):
            if not qwen:
                return torch.cat(
                    list(tower(pixel_values=t.unsqueeze(0), output_hidden_states=True).hidden_states)
                )
            px = qwen_flatten(t, grids[k][0])
            if k not in order:
                order[k] = torch.argsort(
                    qwen_raster_of_rows(vlm, qwen_flatten(images[k][1], grids[k][0]), grids[k])[1]
                )
            hs = torch.stack(list(tower(px, grid_thw=grids[k], output_hidden_states=True).hidden_states))
            return hs[:, order[k]]

        h_all = []
        for k, (trials, clean) in enumerate(images):
            masked = torch.stack([states(t, k) for t in trials]).mean(0)
            h_all.append((masked, states(clean, k)))
        n_layers, n_tokens, feat_dim = h_all[0][0].shape
        fit_data = torch.stack([m.reshape(n_tokens, -1) - c.reshape(n_tokens, -1) for m, c in h_all], dim=1)
        pca = PCA(n_components=1).fit(fit_data.float())
        vdir = (pca.components_.sum(dim=1, keepdim=True) + pca.mean_).mean(1).view(n_layers, n_tokens, -1)[1:]
        if qwen:
            vdir = vdir.reshape(n_layers - 1, grid[0], grid[1], -1)
    # textual, with the visual intervention on (run_mmhal_vti.py:67-72)
    keep = ("input_ids", "pixel_values", "qformer_input_ids", "qformer_attention_mask", "image_grid_thw")

    def stack_for(enc):
        if vdir is None or not fit_alpha_image:
            return contextlib.nullcontext()
        if qwen:
            rows = [
                qwen_direction_rows(vlm, vdir[i], enc["pixel_values"], enc["image_grid_thw"])
                for i in range(len(vdir))
            ]
            return wrapped_mlps(vision_layers_ref(vlm), lambda i: VTILayerRef(rows[i], fit_alpha_image))
        return wrapped_mlps(vision_layers_ref(vlm), lambda i: VTILayerRef(vdir[i], fit_alpha_image))

    hs_all = []
    for neg, pos in texts:
        style = []
        for enc in (neg, pos):
            with stack_for(enc):
                h = _forward_hidden(vlm, {k: enc[k] for k in keep if k in enc}, []).hidden_states
            style.append(torch.cat([h[k][:, -1] for k in range(len(h))], dim=0))
        hs_all.append(tuple(style))
    fit = torch.stack([pos.view(-1) - neg.view(-1) for neg, pos in hs_all])
    pca = PCA(n_components=1).fit(fit.float())
    tdir = (pca.components_.sum(dim=1, keepdim=True) + pca.mean_).mean(0).view(*hs_all[0][0].shape)[1:]
    return {"text": tdir, "vision": vdir}
