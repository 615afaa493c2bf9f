"""Plain references for the cd_rethink controls and the second-wave methods (pba, olm, debias,
carve, iava, cid, lqcd), written separately from the engine and from the method files.

One request at a time, one branch at a time, no KV cache, no padding, no batching: every step
recomputes the whole sequence through the Hugging Face model's own ``forward`` (which builds
the image embeddings and, for Qwen2.5-VL, the 3-D rope positions itself). Inputs are built
from the processor and the chat template directly (LLaVA / Qwen2.5-VL: ``reference_decoder``'s
``build_text``; InstructBLIP has no chat template: the text is ``"{system} {prompt}"``).
Embeddings are built here: the model's own ``get_image_features`` scattered into the prompt's
image placeholders only, scaled per token for IAVA's contrast input; Qwen2.5-VL's 3-D rope
positions are written out for one still image. Attention probes are the same full forward in
eager mode with ``output_attentions=True``. Each method's formula is written out literally below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from reference_decoder import build_text, ref_warp_and_pick
from vcdflow.decoding import METHODS
from vcdflow.decoding.sampling import make_generator


#: methods this module covers (tests/test_methods_controls.py, tests/test_methods_wave2.py); the
#: first-wave reference (reference_decoder.py) covers the others
COVERED = ("pba", "olm", "debias", "carve", "iava", "cid", "lqcd")


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # top1 - top2 of the final scores per step
    finish: str = "length"
    meta: dict = field(default_factory=dict)
    forced: list[bool] = field(default_factory=list)  # OLM: the rule fired at that step


# --- inputs and forwards ---------------------------------------------------------------------------
def family(vlm) -> str:
    return vlm.family


def inputs(vlm, prompt: str, image, system: str | None) -> dict:
    proc = vlm.processor
    if family(vlm) == "instructblip":
        text = f"{system} {prompt}" if system else prompt
        if image is None:
            return {"input_ids": proc.tokenizer(text, return_tensors="pt")["input_ids"]}
        enc = proc(images=[image.convert("RGB")], text=[text], return_tensors="pt")
        return {
            k: enc[k] for k in ("input_ids", "pixel_values", "qformer_input_ids", "qformer_attention_mask")
        }
    text = build_text(proc, prompt, image is not None, system)
    if image is None:
        return {"input_ids": proc(text=[text], return_tensors="pt")["input_ids"]}
    enc = proc(text=[text], images=[image.convert("RGB")], return_tensors="pt")
    keep = ["input_ids", "pixel_values"] + (["image_grid_thw"] if family(vlm) == "qwen2_5_vl" else [])
    return {k: enc[k] for k in keep}


def _image_features(vlm, inp: dict) -> torch.Tensor:
    """The model's own projected image features for the prompt's image → [n_image_tokens, D]."""
    m = vlm.model
    if family(vlm) == "instructblip":
        res = m.get_image_features(
            pixel_values=inp["pixel_values"],
            qformer_input_ids=inp["qformer_input_ids"],
            qformer_attention_mask=inp["qformer_attention_mask"],
        )
        res = res[0] if isinstance(res, tuple) else res
    elif family(vlm) == "qwen2_5_vl":
        res = m.get_image_features(pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
    else:
        res = m.get_image_features(pixel_values=inp["pixel_values"])
    f = getattr(res, "pooler_output", res)
    f = f[0] if isinstance(f, (list, tuple)) else f
    return f.reshape(-1, f.shape[-1])


def qwen_positions(ids: list[int], image_token_id: int, grids) -> torch.Tensor:
    """Qwen2.5-VL's 3-D rope positions for a prompt with still images (merged grids ``grids``, in
    order), written out: text t → (c, c, c) and c += 1; an h×w image's merged tokens →
    (c, c + row, c + col), then c += max(h, w)."""
    out, c, i, g = [], 0, 0, 0
    while i < len(ids):
        if ids[i] == image_token_id:
            h, w = grids[g]
            g += 1
            out += [(c, c + r, c + q) for r in range(h) for q in range(w)]
            i += h * w
            c += max(h, w)
        else:
            out.append((c, c, c))
            c += 1
            i += 1
    assert g == len(grids)
    return torch.tensor(out).T.unsqueeze(1)  # [3, 1, L]


def forward(vlm, inp: dict, generated: list[int], scale=None, attentions: bool = False, hidden: bool = False):
    """Full recompute of prompt + generated tokens from embeddings: image features go only into
    the prompt's image placeholders (a generated placeholder id is an ordinary token)."""
    m = vlm.model
    prompt = inp["input_ids"][0].tolist()
    ids = torch.tensor([prompt + list(generated)])
    lm = m.language_model if family(vlm) == "instructblip" else m
    emb = lm.get_input_embeddings()(ids)
    kw: dict = {}
    if "pixel_values" in inp:
        feats = _image_features(vlm, inp)
        if scale is not None:
            feats = feats * scale.view(-1, 1).to(feats.dtype)
        img = [i for i, t in enumerate(prompt) if t == vlm.adapter.image_token_id]
        assert len(img) == feats.shape[0], (len(img), feats.shape)
        emb = emb.clone()
        emb[0, img] = feats.to(emb.dtype)
        if family(vlm) == "qwen2_5_vl":
            _, gh, gw = inp["image_grid_thw"][0].tolist()
            pos = qwen_positions(prompt, vlm.adapter.image_token_id, [(gh // 2, gw // 2)])
            n = len(generated)
            last = int(pos.max())
            gen = torch.arange(last + 1, last + 1 + n).view(1, 1, n).expand(3, 1, n)
            kw["position_ids"] = torch.cat([pos, gen], dim=-1)
    out = lm(
        inputs_embeds=emb,
        attention_mask=torch.ones_like(ids),
        use_cache=False,
        output_attentions=attentions,
        output_hidden_states=hidden,
        **kw,
    )
    return out


def last_logits(vlm, inp: dict, generated: list[int], scale=None) -> torch.Tensor:
    return forward(vlm, inp, generated, scale).logits[0, -1].float()


def image_attention_ref(vlm, inp: dict) -> torch.Tensor:
    """[n_layers, n_image_tokens]: last query row over the image positions, heads averaged."""
    m = vlm.model
    prev = m.config._attn_implementation
    m.set_attn_implementation("eager")
    try:
        atts = forward(vlm, inp, [], attentions=True).attentions
    finally:
        m.set_attn_implementation(prev)
    pos = [i for i, t in enumerate(inp["input_ids"][0].tolist()) if t == vlm.adapter.image_token_id]
    return torch.stack([a[0, :, -1, pos].float().mean(0) for a in atts])


def top_dict(scores: torch.Tensor, tokenizer, k: int) -> dict:
    probs = torch.softmax(scores, -1)
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))[:k]
    d: dict = {}
    for i in order:
        word = tokenizer.decode([i]).lower().strip()
        d.setdefault(word, float(probs[i]))
    return {w: float(f"{v:.4g}") for w, v in d.items()}


def apc_mask(scores: torch.Tensor, l0: torch.Tensor, beta) -> torch.Tensor:
    if beta is None:
        return scores
    cutoff = (math.log(beta) if beta > 0 else -math.inf) + float(l0.max())
    return torch.where(l0 < cutoff, torch.tensor(-float("inf")), scores)


# --- CARVE's image rewrite, literally ------------------------------------------------------------
def carve_refined(vlm, req, p) -> tuple[Image.Image, list, list]:
    from scipy import ndimage

    g_inp = inputs(vlm, f"{p['general_instruction']} {p['suffix']}", req.image, req.system)
    q_inp = inputs(vlm, req.prompt, req.image, req.system)
    ag, aq = image_attention_ref(vlm, g_inp), image_attention_ref(vlm, q_inp)
    W, H = req.image.size
    n = aq.shape[1]
    if family(vlm) == "qwen2_5_vl":
        _, gh, gw = q_inp["image_grid_thw"][0].tolist()
        shape = (gh // 2, gw // 2)
    else:
        shape = (int(round(n**0.5)),) * 2
    assert shape[0] * shape[1] == n and n not in (576, 1024, 1600, 1681, 256)
    S = np.zeros((H, W))
    n_layers = aq.shape[0]
    layers = (
        p["layers"]
        if p["layers"] is not None
        else ([x for x in range(20, 26) if x < n_layers] or list(range(max(0, n_layers - 6), n_layers)))
    )
    for layer in layers:
        if layer >= n_layers:
            continue
        c = (aq[layer] / (ag[layer] + p["lam"])).numpy().astype(np.float32).reshape(shape)
        S += np.asarray(Image.fromarray(c, mode="F").resize((W, H), Image.BILINEAR))
    thr = np.percentile(S, 100 * (1 - p["top_percent"]))
    binary = S >= thr
    lab, num = ndimage.label(binary)
    # v3: rank regions by their summed S; v2: by their size (pixel count)
    sums = [
        (float(S[lab == r].sum()) if p["version"] == "v3" else float((lab == r).sum()), r)
        for r in range(1, num + 1)
    ]
    sums.sort(key=lambda x: -x[0])
    keep = [r for _, r in sums[: max(p["min_keep_regions"], int(num * p["top_percent"]))]]
    mask = np.isin(lab, keep)
    arr = np.array(req.image.convert("RGB")) * mask[..., None]
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    crop = Image.fromarray(arr.astype(np.uint8)).crop(box)
    s = max(W / crop.size[0], H / crop.size[1])
    used = [x for x in layers if x < n_layers]
    return crop.resize((int(crop.size[0] * s), int(crop.size[1] * s)), Image.LANCZOS), list(box), used


# --- branches and formulas ------------------------------------------------------------------------
def ref_branches(vlm, req, method, p, meta):
    """→ list of (prompt, image, system, image-token scale)."""
    orig = (req.prompt, req.image, req.system, None)
    if method == "pba":
        return [(req.prompt + p["suffix"], req.image, req.system, None)]
    if method == "olm":
        return [orig]
    if method == "debias":
        return [orig, (req.prompt, None, req.system, None), ("<unk>\n" + req.prompt, None, req.system, None)]
    if method == "cid":
        return [
            orig,
            (
                req.contrast_prompt if req.contrast_prompt is not None else req.prompt,
                req.contrast_image if req.contrast_image is not None else req.image,
                req.system,
                None,
            ),
        ]
    if method == "lqcd":
        lead = req.contrast_prompt if req.contrast_prompt is not None else req.prompt + " " + p["lead_text"]
        return [orig, (lead, req.image, req.system, None)]
    if method == "iava":
        ag = image_attention_ref(vlm, inputs(vlm, p["general_instruction"], req.image, req.system))
        aq = image_attention_ref(vlm, inputs(vlm, req.prompt, req.image, req.system))
        rows = list(range(ag.shape[0])) if p["layers"] is None else list(p["layers"])
        g = sum(ag[i] for i in rows) / len(rows)
        q = sum(aq[i] for i in rows) / len(rows)
        d = g / g.sum() - q / q.sum()
        mu = float(d.mean())
        sd = math.sqrt(sum((float(x) - mu) ** 2 for x in d) / (len(d) - 1))
        keep = torch.tensor([1.0 if float(x) >= mu + p["lamb"] * sd else 0.0 for x in d])
        meta["iava_irrelevant_tokens"] = int(keep.sum())
        if family(vlm) == "instructblip":
            meta["iava_approximate"] = True
        return [orig, (req.prompt, req.image, req.system, keep)]
    if method == "carve":
        assert p["version"] in ("v2", "v3")
        refined, box, used = carve_refined(vlm, req, p)
        meta["carve_bbox"] = box
        meta["carve_layers"] = used
        return [(req.prompt, refined, req.system, None)]
    raise KeyError(method)


def ref_scores(vlm, method, p, ls, t, res, temperature):
    l0 = ls[0]
    if method in ("pba", "carve"):
        return l0
    if method == "olm":
        tok = vlm.processor.tokenizer
        y = tok(p["yes_word"], add_special_tokens=False)["input_ids"]
        n = tok(p["no_word"], add_special_tokens=False)["input_ids"]
        assert len(y) == 1 and len(n) == 1
        probs = torch.softmax(l0, -1)
        py, pn = float(probs[y[0]]), float(probs[n[0]])
        fire = py + pn > p["min_sum"] and abs(py - pn) < p["max_diff"]
        res.forced.append(fire)
        if fire:
            s = torch.full_like(l0, -float("inf"))
            s[y[0]] = 0.0
            return s
        return l0
    if method == "debias":
        a = p["alpha"]
        s = apc_mask((1 + a) * l0 - a * (ls[1] + ls[2]) / 2, l0, p["beta"]) if p["contrast"] else l0
        if t == 0:
            T = temperature
            tok = vlm.processor.tokenizer
            res.meta["debias_top"] = {
                "naive": top_dict(s / T, tok, p["top_k"]),
                "none": top_dict(ls[1] / T, tok, p["top_k"]),
                "unk": top_dict(ls[2] / T, tok, p["top_k"]),
            }
        return s
    if method in ("iava", "lqcd"):
        a = p["alpha"]
        return apc_mask((1 + a) * l0 - a * ls[1], l0, p["beta"])
    if method == "cid":
        lam = p["lambda"]
        return apc_mask((1 + lam) * l0 - lam * ls[1], l0, p["beta"])
    raise KeyError(method)


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
    max_new_tokens=6,
    seed=0,
    eos=(),
    index=0,
) -> Result:
    p = {**METHODS[method].defaults, **(params or {})}
    key = req.item_id or f"#{index}"
    gs = make_generator(seed, key, "sample")
    res = Result()
    branches = ref_branches(vlm, req, method, p, res.meta)
    inps = [(inputs(vlm, pr, im, sy), sc) for pr, im, sy, sc in branches]
    for t in range(max_new_tokens):
        ls = [last_logits(vlm, inp, res.tokens, sc) for inp, sc in inps]
        scores = ref_scores(vlm, method, p, ls, t, res, temperature if do_sample else 1.0)
        top2 = torch.topk(scores, 2).values
        res.margins.append(float(top2[0] - top2[1]) if torch.isfinite(top2[1]) else math.inf)
        tok = ref_warp_and_pick(scores, do_sample, temperature, top_k, top_p, gs)
        if tok in eos:
            res.finish = "eos"
            break
        res.tokens.append(tok)
    return res


# --- shared test fixtures (the tiny model of each family and the demo LLaVA) ------------------------
def image(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


_VLMS: dict = {}


def build_vlms(root) -> dict:
    """{"llava", "qwen2_5_vl", "instructblip", "demo"} → loaded VLMs (random weights, float32).
    Built once per test process (under the first caller's ``root``) and shared by both test files;
    the methods never modify a model."""
    from pathlib import Path

    if _VLMS:
        return _VLMS

    from tiny_models import build_tiny_instructblip, build_tiny_llava, build_tiny_qwen2_5_vl
    from vcdflow.models import load_vlm
    from vcdflow.models.demo import build_demo_vlm

    root = Path(root)
    out = {
        fam: load_vlm(b(root / fam))
        for fam, b in (
            ("llava", build_tiny_llava),
            ("qwen2_5_vl", build_tiny_qwen2_5_vl),
            ("instructblip", build_tiny_instructblip),
        )
    }
    model, processor = build_demo_vlm(seed=0)
    model.save_pretrained(root / "demo")
    processor.save_pretrained(root / "demo")
    out["demo"] = load_vlm(root / "demo")
    _VLMS.update(out)
    return _VLMS


def assert_same_as_reference(out, ref, eos, what):
    """Token for token; where a token differs, the reference's margin at that step is < 1e-4."""

    def seq(tokens, finish):
        return list(tokens) + ([eos[0]] if finish == "eos" else [])

    eng, rf = seq(out.token_ids, out.meta["finish_reason"]), seq(ref.tokens, ref.finish)
    for k, (x, y) in enumerate(zip(eng, rf)):
        if x != y:
            assert ref.margins[k] < 1e-4, (
                f"{what}: token {k} engine {x} vs reference {y}, margin {ref.margins[k]}"
            )
            return
    assert len(eng) == len(rf), f"{what}: engine {eng} vs reference {rf}"
