"""A plain reference decoder, written separately from the engine, for testing it.

One request at a time, one branch at a time, no KV cache, no padding: every step recomputes the
whole sequence (prompt + generated tokens) from embeddings with the model's default positions.
Branch inputs are built here from the processor and the chat template directly; each method's
formula is written out again below in its most literal form. Shared with the engine are only
the *contract* pieces (how a request's random streams are seeded, the distortion functions
— tested on their own in test_decoding_parts.py — and the Self-Aug prompt text).

The LLaVA-style families are covered (``model.get_image_features`` + placeholder scatter): LLaVA-1.5
and LLaVA-NeXT (any-res tiles: the processor's ``image_sizes`` go to ``get_image_features``, and a
pixel operation acts on every tile as one image, the engine's documented per-tile semantics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vcdflow.decoding import METHODS
from vcdflow.decoding import distortions as D
from vcdflow.decoding.methods.selfaug import sas_prompt
from vcdflow.decoding.sampling import make_generator


@dataclass
class RefBranch:
    prompt: str
    image: object = None
    system: str | None = None
    pixel_op: object = None  # f(pixel_values [tiles,3,H,W]) -> pixel_values
    token_scale: torch.Tensor | None = None


@dataclass
class RefResult:
    tokens: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # top1 - top2 of the final scores per step
    finish: str = "length"
    meta: dict = field(default_factory=dict)


# --- inputs --------------------------------------------------------------------------------------#: the methods this reference implements (ref_branches / ref_combine below)
COVERED = (
    "greedy",
    "sample",
    "apc",
    "vcd",
    "contrast",
    "icd",
    "avisc",
    "vcd_legacy",
    "vdd",
    "convis",
    "ritual",
    "m3id",
    "selfaug",
    "code",
)


def build_text(processor, prompt, has_image, system):
    msgs = []
    if system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
    msgs.append({"role": "user", "content": content})
    return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def encode(vlm, br: RefBranch):
    text = build_text(vlm.processor, br.prompt, br.image is not None, br.system)
    if br.image is not None:
        enc = vlm.processor(text=[text], images=[br.image.convert("RGB")], return_tensors="pt")
        px = enc["pixel_values"].float()
        if br.pixel_op is not None:
            px = br.pixel_op(px.reshape(-1, *px.shape[-3:])).reshape(px.shape)
        px = {"pixel_values": px, **({"image_sizes": enc["image_sizes"]} if "image_sizes" in enc else {})}
    else:
        enc = vlm.processor(text=[text], return_tensors="pt")
        px = None
    return enc["input_ids"][0].tolist(), px


def clip_stats(vlm):
    ip = vlm.processor.image_processor
    return (torch.tensor(ip.image_mean).view(1, 3, 1, 1), torch.tensor(ip.image_std).view(1, 3, 1, 1))


def forward_last(vlm, prompt_ids, px, generated, token_scale=None, attentions=False):
    """Full recompute: logits (float32) of the last position, optionally the attentions."""
    model = vlm.model
    ids = torch.tensor([prompt_ids + generated])
    emb = model.get_input_embeddings()(ids)
    if px is not None:
        feats = model.get_image_features(**{**px, "pixel_values": px["pixel_values"].to(emb.dtype)})
        feats = getattr(feats, "pooler_output", feats)
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
        if token_scale is not None:
            feats = feats * token_scale.view(-1, 1).to(feats.dtype)
        img_pos = [i for i, t in enumerate(prompt_ids) if t == model.config.image_token_id]
        assert len(img_pos) == feats.shape[0]
        emb = emb.clone()
        emb[0, img_pos] = feats.to(emb.dtype)
    out = model(inputs_embeds=emb, use_cache=False, output_attentions=attentions)
    lg = out.logits[0, -1].float()
    return (lg, out.attentions) if attentions else lg


def ref_greedy_text(vlm, br: RefBranch, max_new_tokens, eos):
    ids, px = encode(vlm, br)
    gen = []
    for _ in range(max_new_tokens):
        t = int(forward_last(vlm, ids, px, gen).argmax())
        if t in eos:
            break
        gen.append(t)
    return vlm.processor.tokenizer.decode(gen, skip_special_tokens=True).strip()


# --- per-method branches --------------------------------------------------------------------------
def ref_branches(vlm, req, method, p, g, eos, meta):
    orig = RefBranch(req.prompt, req.image, req.system)
    mean, std = clip_stats(vlm)
    if method in ("greedy", "sample", "apc"):
        return [orig]
    if method == "contrast":
        return [
            orig,
            RefBranch(
                req.prompt if req.contrast_prompt is None else req.contrast_prompt,
                req.image if req.contrast_image is None else req.contrast_image,
                req.system,
            ),
        ]
    if method in ("vcd", "vcd_legacy"):
        T = int(p["noise_step"])
        betas = torch.sigmoid(torch.linspace(-6, 6, 1000, dtype=torch.float64)) * (0.005 - 0.00001) + 0.00001
        abar = torch.cumprod(1 - betas, 0)[T].item()

        def noisy(px):
            eps = torch.randn(px.shape, generator=g)
            return math.sqrt(abar) * px + math.sqrt(1 - abar) * eps

        return [orig, RefBranch(req.prompt, req.image, req.system, pixel_op=noisy)]
    if method == "icd":
        return [orig, RefBranch(req.prompt, req.image, p["instruction"])]
    if method == "ritual":
        name = D.RITUAL_TRANSFORMS[int(torch.randint(6, (1,), generator=g))]
        meta["ritual_transform"] = name
        return [orig, RefBranch(req.prompt, D.ritual_transform(req.image, name, g, 336), req.system)]
    if method == "m3id":
        return [orig, RefBranch(req.prompt, None, req.system)]
    if method == "vdd":
        return [
            orig,
            RefBranch(req.prompt, None, req.system),
            RefBranch("<unk>\n" + req.prompt, None, req.system),
        ]
    if method == "convis":
        return [orig] + [RefBranch(req.prompt, im, req.system) for im in req.contrast_images]
    if method == "code":
        desc = ref_greedy_text(
            vlm,
            RefBranch(p["description_prompt"], req.image, req.system),
            p["description_max_new_tokens"],
            eos,
        )
        meta["code_description"] = desc
        return [orig, RefBranch(desc + "\n" + req.prompt, None, req.system)]
    if method == "selfaug":
        reply = ref_greedy_text(
            vlm, RefBranch(sas_prompt(req.prompt), None, req.system), p["sas_max_new_tokens"], eos
        ).lower()
        after = reply.split("choice:", 1)[1] if "choice:" in reply else reply
        aug = "noise"
        for key, name in [
            ("crop", "random_crop"),
            ("horizontal", "horizontal_flip"),
            ("vertical", "vertical_flip"),
            ("inver", "color_inversion"),
            ("mask", "random_mask"),
        ]:
            if key in after:
                aug = name
                break
        meta["selfaug_augmentation"] = aug
        ops = {
            "vertical_flip": lambda x: torch.flip(x, dims=[2]),
            "horizontal_flip": lambda x: torch.flip(x, dims=[3]),
            "color_inversion": lambda x: ((1 - (x * std + mean).clamp(0, 1)) - mean) / std,
            "random_crop": lambda x: D.random_crop(x, p["crop_ratio"], g),
            "random_mask": lambda x: D.random_mask(x, p["mask_ratio"], g),
            "noise": lambda x: D.diffusion_noise(x, p["noise_step"], g),
        }
        return [orig, RefBranch(req.prompt, req.image, req.system, pixel_op=ops[aug])]
    if method == "avisc":
        ids, px = encode(vlm, orig)
        prev = vlm.model.config._attn_implementation
        vlm.model.set_attn_implementation("eager")
        try:
            _, atts = forward_last(vlm, ids, px, [], attentions=True)
        finally:
            vlm.model.set_attn_implementation(prev)
        img = [i for i, t in enumerate(ids) if t == vlm.model.config.image_token_id]
        per_layer = [a[0].mean(0)[-1, img] for a in atts]  # heads averaged, last query
        shares = torch.stack([x.sum() for x in per_layer])
        shares = shares / shares.sum()
        order = sorted(range(len(per_layer)), key=lambda i: -float(shares[i]))
        cum, k = 0.0, 0
        for i in order:  # count layers whose cumulative share stays below gamma, plus one
            cum += float(shares[i])
            if cum < p["layer_gamma"]:
                k += 1
        chosen = order[: k + 1]
        w = torch.stack([per_layer[i] for i in chosen]).mean(0)
        mu = w.mean()
        sd = math.sqrt(float(((w - mu) ** 2).sum()) / (len(w) - 1))
        keep = torch.tensor([1.0 if float(x) >= float(mu) + p["lamb"] * sd else 0.0 for x in w])
        meta["avisc_blind_tokens"] = int(keep.sum())
        return [orig, RefBranch(req.prompt, req.image, req.system, token_scale=keep)]
    raise KeyError(method)


# --- per-method combination -----------------------------------------------------------------------
def ref_combine(method, p, ls, t):
    """ls: list of per-branch logits [V] (original first); t: 0-based step. → (scores, beta)."""
    l0 = ls[0]
    if method in ("greedy", "sample"):
        return l0, None
    if method == "apc":
        return l0, p["beta"]
    if method in ("vcd", "contrast", "icd", "avisc"):
        a = p["alpha"]
        return (1 + a) * l0 - a * ls[1], p["beta"]
    if method == "vcd_legacy":
        a = p["alpha"]
        if t == 0:
            return (1 + a) * l0 - a * ls[1], p["beta"]
        return (1 + a) * l0 - a * l0, p["beta"]  # the contrast branch reused the clean cache
    if method in ("vdd", "convis"):
        a = p["alpha"]
        mean_c = sum(ls[1:]) / len(ls[1:])
        return (1 + a) * l0 - a * mean_c, p["beta"]
    if method == "ritual":
        return l0 + p["alpha"] * ls[1], p["beta"]
    if method == "m3id":
        t0 = p["t_start"] if p["t_start"] is not None else (0 if p["variant"] == "logits" else 1)
        gamma = math.exp(-p["lambda"] * (t + t0))
        lc, lu = l0, ls[1]
        if p["variant"] == "logprob":
            lc, lu = torch.log_softmax(lc, -1), torch.log_softmax(lu, -1)
        return lc + (1 - gamma) / gamma * (lc - lu), p["beta"]
    if method == "selfaug":
        a = p["alpha"]
        probs = torch.softmax(l0, -1)
        ent = -sum(float(q) * math.log2(float(q)) for q in probs if q > 0)
        beta = 1 / (1 + math.exp(p["tau"] * ent)) if p["tau"] is not None else p["beta"]
        return (1 + a) * l0 - a * ls[1], beta
    if method == "code":
        pv, pd = torch.softmax(l0, -1), torch.softmax(ls[1], -1)
        d = 0.0
        for x, y in zip(pv.tolist(), pd.tolist()):
            d += 0.5 * math.log2(abs(x - y) ** p["alpha"] + 1) * (x + y)
        at = 1 - d
        return (1 + at) * l0 - at * ls[1], d
    raise KeyError(method)


def ref_warp_and_pick(scores, do_sample, temperature, top_k, top_p, gen):
    if not do_sample:
        return int(scores.argmax())
    s = scores / temperature
    if top_k:
        kth = torch.topk(s, top_k).values[-1]
        s = torch.where(s < kth, torch.tensor(-float("inf")), s)
    if top_p < 1.0:
        probs = torch.softmax(s, -1)
        order = torch.argsort(probs, descending=True)
        keep = torch.zeros_like(s, dtype=torch.bool)
        cum = 0.0
        for i in order.tolist():
            keep[i] = True
            cum += float(probs[i])
            if cum >= top_p:
                break
        s = torch.where(keep, s, torch.tensor(-float("inf")))
    probs = torch.softmax(s, -1)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.inference_mode()
def ref_generate(
    vlm,
    req,
    method,
    params=None,
    *,
    do_sample=False,
    temperature=1.0,
    top_p=1.0,
    top_k=None,
    max_new_tokens=8,
    seed=0,
    eos=None,
    index=0,
) -> RefResult:
    p = {**METHODS[method].defaults, **(params or {})}
    if method in ("greedy", "sample"):  # these two fix their own mode
        do_sample = method == "sample"
    key = req.item_id or f"#{index}"
    g = make_generator(seed, key, "branches")
    gs = make_generator(seed, key, "sample")
    if eos is None:
        eos = vlm.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    res = RefResult()
    branches = ref_branches(vlm, req, method, p, g, eos, res.meta)
    enc = [encode(vlm, b) for b in branches]
    for t in range(max_new_tokens):
        ls = [forward_last(vlm, ids, px, res.tokens, b.token_scale) for b, (ids, px) in zip(branches, enc)]
        scores, beta = ref_combine(method, p, ls, t)
        if beta is not None:
            cutoff = (math.log(beta) if beta > 0 else -math.inf) + float(ls[0].max())
            scores = torch.where(ls[0] < cutoff, torch.tensor(-float("inf")), scores)
        top2 = torch.topk(scores, 2).values
        res.margins.append(float(top2[0] - top2[1]))
        tok = ref_warp_and_pick(scores, do_sample, temperature, top_k, top_p, gs)
        if tok in eos:
            res.finish = "eos"
            break
        res.tokens.append(tok)
    return res
