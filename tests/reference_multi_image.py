"""Plain references for the multi-image branch and the CARVE code-faithful variants
(``carve`` with ``variant="code"`` / ``"code_v4"``), written separately from the engine, the
adapters and the method file.

One request at a time, no KV cache, no padding, no batching, the whole sequence recomputed every
step. Multi-image inputs come straight from the processor: the messages hold one image part per
image and ``processor.apply_chat_template`` + ``processor(text=[text], images=[...])`` build the
ids and pixels (LLaVA: one ``<image>`` per image; Qwen2.5-VL: one vision block per image).

* :func:`hf_logits` — the Hugging Face model called directly on that processor output (the
  plain computation the multi-image seam is tested against): ``model(**inputs, use_cache=False)``.
* :func:`mi_logits` — the same from embeddings: the model's own ``get_image_features`` of all
  images, scattered in order into the prompt's placeholders only (a generated placeholder id stays
  an ordinary token), Qwen2.5-VL's 3-D rope positions written out for several still images.
* CARVE: the step-0 refined image is :func:`reference_methods.carve_refined`; the v4 maps are
  re-derived here from full-recompute greedy generations with eager attention (the code's
  ``carve/attention.py:21-79``), fused with weights t+1 (``:104-129``), masked and cropped as
  ``carve/masking.py`` does; the final pass is the two-image prompt [original, refined]
  (``carve/pipeline.py:152``).
"""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from reference_methods import Result, carve_refined, family, qwen_positions
from reference_methods import forward as single_forward
from reference_methods import inputs as single_inputs
from vcdflow.decoding import METHODS


# --- multi-image inputs ---------------------------------------------------------------------------
def mi_text(processor, prompt: str, n_images: int, system: str | None) -> str:
    msgs = []
    if system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    msgs.append({"role": "user", "content": content})
    return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def mi_inputs(vlm, prompt: str, images: list, system: str | None = None) -> dict:
    """The processor's output for one prompt holding ``images`` in order (all its tensors)."""
    text = mi_text(vlm.processor, prompt, len(images), system)
    enc = vlm.processor(text=[text], images=[im.convert("RGB") for im in images], return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


def hf_logits(vlm, inp: dict, generated: list[int] = ()) -> torch.Tensor:
    """Last-position logits of the HF model called directly on the processor output (+ generated
    ids appended; per-token extras padded with 0 = text)."""
    n = len(generated)
    kw = dict(inp)
    if n:
        gen = torch.tensor([list(generated)])
        kw["input_ids"] = torch.cat([inp["input_ids"], gen], 1)
        kw["attention_mask"] = torch.ones_like(kw["input_ids"])
        for k in ("mm_token_type_ids", "token_type_ids"):
            if k in kw:
                kw[k] = torch.cat([kw[k], kw[k].new_zeros((1, n))], 1)
    return vlm.model(**kw, use_cache=False).logits[0, -1].float()


def _features(vlm, inp: dict) -> torch.Tensor:
    m = vlm.model
    if family(vlm) == "qwen2_5_vl":
        res = m.get_image_features(pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
    else:
        res = m.get_image_features(pixel_values=inp["pixel_values"])
    f = getattr(res, "pooler_output", res)
    if isinstance(f, (list, tuple)):
        f = torch.cat([x.reshape(-1, x.shape[-1]) for x in f])
    return f.reshape(-1, f.shape[-1])


def mi_logits(vlm, inp: dict, generated: list[int]) -> torch.Tensor:
    m = vlm.model
    prompt = inp["input_ids"][0].tolist()
    ids = torch.tensor([prompt + list(generated)])
    emb = m.get_input_embeddings()(ids).clone()
    feats = _features(vlm, inp)
    img = [i for i, t in enumerate(prompt) if t == vlm.adapter.image_token_id]
    assert len(img) == feats.shape[0], (len(img), feats.shape)
    emb[0, img] = feats.to(emb.dtype)
    kw = {}
    if family(vlm) == "qwen2_5_vl":
        grids = [(h // 2, w // 2) for _, h, w in inp["image_grid_thw"].tolist()]
        pos = qwen_positions(prompt, vlm.adapter.image_token_id, grids)
        n, last = len(generated), int(pos.max())
        kw["position_ids"] = torch.cat(
            [pos, torch.arange(last + 1, last + 1 + n).view(1, 1, n).expand(3, 1, n)], -1
        )
    out = m(inputs_embeds=emb, attention_mask=torch.ones_like(ids), use_cache=False, **kw)
    return out.logits[0, -1].float()


@torch.inference_mode()
def greedy(logits_fn, max_new_tokens: int, eos=()) -> Result:
    res = Result()
    for _ in range(max_new_tokens):
        s = logits_fn(res.tokens)
        top2 = torch.topk(s, 2).values
        res.margins.append(float(top2[0] - top2[1]))
        tok = int(s.argmax())
        if tok in eos:
            res.finish = "eos"
            break
        res.tokens.append(tok)
    return res


# --- CARVE v4: all-step maps, literally ------------------------------------------------------------
def step_maps(vlm, prompt, image, system, max_new_tokens: int, eos) -> list[torch.Tensor]:
    """Greedy generation, full recompute, eager attention; per step (EOS step included) the
    head-mean attention of the last query over the prompt's image positions: [n_layers, n_img]."""
    inp = single_inputs(vlm, prompt, image, system)
    pos = [i for i, t in enumerate(inp["input_ids"][0].tolist()) if t == vlm.adapter.image_token_id]
    m = vlm.model
    prev = m.config._attn_implementation
    m.set_attn_implementation("eager")
    maps, gen = [], []
    try:
        for _ in range(max_new_tokens):
            out = single_forward(vlm, inp, gen, attentions=True)
            maps.append(torch.stack([a[0, :, -1, pos].float().mean(0) for a in out.attentions]))
            tok = int(out.logits[0, -1].argmax())
            if tok in eos:
                break
            gen.append(tok)
    finally:
        m.set_attn_implementation(prev)
    return maps


def _mask_crop(S: np.ndarray, image: Image.Image, p: dict):
    from scipy import ndimage

    W, H = image.size
    binary = S >= np.percentile(S, 100 * (1 - p["top_percent"]))
    lab, num = ndimage.label(binary)
    score = [
        (float(S[lab == r].sum()) if p["version"] == "v3" else float((lab == r).sum()), r)
        for r in range(1, num + 1)
    ]
    score.sort(key=lambda x: -x[0])
    keep = [r for _, r in score[: max(p["min_keep_regions"], int(num * p["top_percent"]))]]
    mask = np.isin(lab, keep)
    arr = np.array(image.convert("RGB")) * mask[..., None]
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    crop = Image.fromarray(arr.astype(np.uint8)).crop(box)
    s = max(W / crop.size[0], H / crop.size[1])
    return crop.resize((int(crop.size[0] * s), int(crop.size[1] * s)), Image.LANCZOS), list(box)


def carve_v4_refined(vlm, req, p, eos, setting="t_full"):
    """The refined image from the probes' step maps: ``setting`` t_full = every step weighted t+1
    (the code's v4), t_end = each probe's last step alone (the paper's t_end)."""
    g = step_maps(
        vlm, f"{p['general_instruction']} {p['suffix']}", req.image, req.system, p["probe_tokens"], eos
    )
    q = step_maps(vlm, req.prompt, req.image, req.system, p["probe_tokens"], eos)
    W, H = req.image.size
    n_layers = q[0].shape[0]
    layers = (
        p["layers"]
        if p["layers"] is not None
        else ([x for x in range(20, 26) if x < n_layers] or list(range(max(0, n_layers - 6), n_layers)))
    )
    n = q[0].shape[1]
    if family(vlm) == "qwen2_5_vl":
        _, gh, gw = single_inputs(vlm, req.prompt, req.image, req.system)["image_grid_thw"][0].tolist()
        shape = (gh // 2, gw // 2)
    else:
        shape = (int(round(n**0.5)),) * 2
    assert shape[0] * shape[1] == n
    S = np.zeros((H, W))
    pairs = (
        [(t + 1, q[t], g[t]) for t in range(min(len(q), len(g)))]
        if setting == "t_full"
        else [(1, q[-1], g[-1])]
    )
    for w, qt, gt in pairs:
        for layer in layers:
            if layer >= n_layers:
                continue
            c = (qt[layer] / (gt[layer] + p["lam"])).numpy().astype(np.float32).reshape(shape)
            S += w * np.asarray(Image.fromarray(c, mode="F").resize((W, H), Image.BILINEAR), dtype=np.float64)
    refined, box = _mask_crop(S, req.image, p)
    return refined, box, [len(q), len(g)]


@torch.inference_mode()
def ref_carve(vlm, req, params, *, max_new_tokens: int, eos=(), probe_eos=()) -> Result:
    """CARVE with ``variant`` code / code_v4 / paper: refined image, then greedy on the final
    prompt ([original, refined] for the code variants, [refined] for the paper's)."""
    p = {**METHODS["carve"].defaults, **(params or {})}
    meta: dict = {}
    setting = p["maps"] or {"paper": p["paper_maps"], "code": "t_start", "code_v4": "t_full"}[p["variant"]]
    if setting != "t_start":
        refined, box, steps = carve_v4_refined(vlm, req, p, probe_eos, setting)
        meta["carve_steps"] = steps
    else:
        refined, box, _ = carve_refined(vlm, req, p)
    if p["max_pixels"]:  # the code's processor budget (Qwen smart_resize, bicubic)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(
            refined.size[1], refined.size[0], factor=28, min_pixels=56 * 56, max_pixels=p["max_pixels"]
        )
        refined = refined if (w, h) == refined.size else refined.resize((w, h), Image.BICUBIC)
    meta["carve_bbox"] = box
    images = [refined] if p["variant"] == "paper" else [req.image, refined]
    inp = mi_inputs(vlm, req.prompt, images, req.system)
    res = greedy(lambda gen: mi_logits(vlm, inp, gen), max_new_tokens, eos)
    res.meta.update(meta)
    res.meta["refined"] = refined
    return res
