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
        sim = 1.0 + torch.max(torch.tensor([0.0]), F.cosine_similarity(x, -self.v[None, None, :], dim=-1)).unsqueeze(-1)
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
    return list(m.model.vision_tower.encoder.layers)


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
    drop = {vlm.adapter.image_token_id} | {getattr(cfg, a) for a in ("vision_start_token_id", "vision_end_token_id")
                                           if getattr(cfg, a, None) is not None}
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
def ref_vista(vlm, req, params=None, *, do_sample=False, temperature=1.0, top_p=1.0, top_k=None,
              max_new_tokens=5, seed=0, eos=(), index=0) -> Result:
    p = {**METHODS["vista"].defaults, **(params or {})}
    gs = make_generator(seed, req.item_id or f"#{index}", "sample")
    res = Result()
    inp = inputs(vlm, req.prompt, req.image, req.system)
    v = layer_outputs_last(vlm, inp) - layer_outputs_last(vlm, no_image(vlm, inp))   # obtain_vsv: pos - neg
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
                hs = out.hidden_states[1:]                               # decoder-layer outputs
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
def ref_vti(vlm, req, directions: dict, params=None, *, do_sample=False, temperature=1.0, top_p=1.0, top_k=None,
            max_new_tokens=5, seed=0, eos=(), index=0) -> Result:
    """VTI: ``directions["text"]`` [L, D] on the LM layers with λ = alpha_text,
    ``directions["vision"]`` [L_v, T, D] on the vision layers with λ = alpha_image (0: off)."""
    p = {**METHODS["vti"].defaults, **(params or {})}
    gs = make_generator(seed, req.item_id or f"#{index}", "sample")
    res = Result()
    inp = inputs(vlm, req.prompt, req.image, req.system)
    dt, dv = directions.get("text"), directions.get("vision")
    at, av = float(p["alpha_text"]), float(p["alpha_image"])
    with contextlib.ExitStack() as stack:
        if av != 0 and dv is not None:
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
        new_tensor[:, start_y:start_y + patch_size, start_x:start_x + patch_size] = mean_values.expand(
            -1, patch_size, patch_size)
    return new_tensor


def _tower(vlm):
    return vlm.model.vision_model if vlm.family == "instructblip" else vlm.model.model.vision_tower


@torch.inference_mode()
def ref_fit_vti(vlm, demos, image_dir, num_trials, mask_ratio, seed, fit_alpha_image, system=None, vision=True):
    """obtain_visual_vti then (with the visual intervention installed) obtain_textual_vti, on the
    given (already selected) demos; ``image_tensor`` from the processor, ``input_ids`` from the
    template + question + caption (``conv.get_prompt() + value``)."""
    import os

    from PIL import Image

    proc = vlm.processor
    patch = getattr(vlm.model.config.vision_config, "patch_size", 14)
    g = torch.Generator().manual_seed(seed)
    images, texts = [], []
    for d in demos:
        raw = Image.open(os.path.join(image_dir, d["image"])).convert("RGB")
        base = vlm.adapter.build_text(d["question"], True, system)
        pos = proc(text=[base + d["value"]], images=[raw], return_tensors="pt")
        neg = proc(text=[base + d["h_value"]], images=[raw], return_tensors="pt")
        image_tensor = pos["pixel_values"][0]
        trials = []
        for _ in range(num_trials if vision else 0):
            token_numbers = image_tensor.shape[-1] * image_tensor.shape[-2] / patch ** 2
            mask_index = torch.randperm(int(token_numbers), generator=g)[:int(mask_ratio * token_numbers)]
            trials.append(mask_patches_ref(image_tensor, mask_index.tolist(), patch_size=patch))
        images.append([trials, image_tensor])
        texts.append((neg, pos))
    vdir = None
    if vision:
        tower = _tower(vlm)
        h_all = []
        for trials, clean in images:
            hs = [tower(pixel_values=t.unsqueeze(0), output_hidden_states=True).hidden_states for t in trials]
            masked = torch.cat([torch.stack([h[k] for h in hs]).mean(0) for k in range(len(hs[0]))], dim=0)
            hc = tower(pixel_values=clean.unsqueeze(0), output_hidden_states=True).hidden_states
            h_all.append((masked, torch.cat([h for h in hc], dim=0)))
        n_layers, n_tokens, feat_dim = h_all[0][0].shape
        fit_data = torch.stack([m.reshape(n_tokens, -1) - c.reshape(n_tokens, -1) for m, c in h_all], dim=1)
        pca = PCA(n_components=1).fit(fit_data.float())
        vdir = (pca.components_.sum(dim=1, keepdim=True) + pca.mean_).mean(1).view(n_layers, n_tokens, -1)[1:]
    # textual, with the visual intervention on (run_mmhal_vti.py:67-72)
    make = (lambda i: VTILayerRef(vdir[i], fit_alpha_image)) if vdir is not None and fit_alpha_image else (lambda i: None)
    keep = ("input_ids", "pixel_values", "qformer_input_ids", "qformer_attention_mask", "image_grid_thw")
    stack = wrapped_mlps(vision_layers_ref(vlm), make) if vdir is not None else contextlib.nullcontext()
    with stack:
        hs_all = []
        for neg, pos in texts:
            style = []
            for enc in (neg, pos):
                h = _forward_hidden(vlm, {k: enc[k] for k in keep if k in enc}, []).hidden_states
                style.append(torch.cat([h[k][:, -1] for k in range(len(h))], dim=0))
            hs_all.append(tuple(style))
    fit = torch.stack([pos.view(-1) - neg.view(-1) for neg, pos in hs_all])
    pca = PCA(n_components=1).fit(fit.float())
    tdir = (pca.components_.sum(dim=1, keepdim=True) + pca.mean_).mean(0).view(*hs_all[0][0].shape)[1:]
    return {"text": tdir, "vision": vdir}
