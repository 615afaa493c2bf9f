"""Plain references for the attention methods (pai, sid, only, vasparse), written separately from the engine,
from ``vcdflow.decoding.attention`` and from the method files.

One request at a time, one branch at a time, no KV cache, no padding, no batching: every step
recomputes the whole sequence (``reference_methods.forward``). The attention of the text decoder
is replaced by this module's own eager function (registered under its own name with
transformers' ``AttentionInterface``), which gets the layer index and the (rope-applied) q, k, v
and computes scores = q·kᵀ·scale + causal mask → the method's change → softmax → ·V literally.

Full recompute vs the official cached decode: a cached decode computes each position's states in
the forward where that position was the LAST query row (the prompt's last position at prefill,
each generated token at its step) and never recomputes them. A method that changes the last
query row's attention (PAI) therefore changes, under full recompute, every query row from the
last prompt position on; a method that picks keys from the last row's attention (SID) applies to
query row j the selection made from row max(j, P−1). The references below do exactly that.
"""

from __future__ import annotations

import contextlib
import math

import torch

from reference_decoder import ref_warp_and_pick
from reference_methods import Result, apc_mask, forward, inputs
from vcdflow.decoding import METHODS
from vcdflow.decoding.sampling import make_generator

#: methods this module covers (tests/test_methods_attention.py)
COVERED = ("pai", "sid", "only", "vasparse")

REF_NAME = "vcdflow_reference_attention"
_STATE: dict = {}


def text_model(vlm):
    m = vlm.model
    if vlm.family == "instructblip":
        return m.language_model.model
    return m.model.language_model


def _ref_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    fn = _STATE["fn"]
    n_rep = query.shape[1] // key.shape[1]
    k = torch.repeat_interleave(key, n_rep, dim=1)
    v = torch.repeat_interleave(value, n_rep, dim=1)
    q_len, k_len = query.shape[2], k.shape[2]
    causal = torch.full((q_len, k_len), float("-inf")).triu(1 + k_len - q_len)
    s = query @ k.transpose(-1, -2) * scaling + causal
    s = fn("scores", module.layer_idx, s, module, v)
    p = torch.softmax(s.float(), dim=-1).to(query.dtype)
    fn("probs", module.layer_idx, p, module, v)
    return (p @ v).transpose(1, 2).contiguous(), p


@contextlib.contextmanager
def ref_attention(vlm, fn):
    """Run the text decoder's attention through ``fn(kind, layer, tensor, module, v)``: kind
    "scores" (return the changed [1, H, Q, K] scores) or "probs" (observe)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(REF_NAME, _ref_fn)
    AttentionMaskInterface.register(REF_NAME, eager_mask)
    tm = text_model(vlm)
    prev = tm.config._attn_implementation
    tm.set_attn_implementation(REF_NAME)
    _STATE["fn"] = fn
    try:
        yield
    finally:
        tm.set_attn_implementation(prev)
        _STATE.pop("fn", None)


def image_positions(vlm, inp) -> list[int]:
    return [i for i, t in enumerate(inp["input_ids"][0].tolist()) if t == vlm.adapter.image_token_id]


def n_layers(vlm) -> int:
    return len(text_model(vlm).layers)


# --- PAI ----------------------------------------------------------------------------------------
def pai_logits(vlm, inp, generated, p):
    P = inp["input_ids"].shape[1]
    img = image_positions(vlm, inp)
    L = n_layers(vlm)
    layers = range(p["start_layer"], L if p["end_layer"] is None else min(p["end_layer"], L))

    # the first row whose forward is intervened: the prefill's last row, or (official schedule with
    # CFG on: LALBJ/PAI CFG.py:32-33,48-49) the first step's row; official with CFG on and γ = 1: none
    official_cfg = p["attn_schedule"] == "official" and p["use_cfg"]
    if official_cfg and p["gamma"] == 1:
        first = 10**9
    else:
        first = P if official_cfg else P - 1

    def fn(kind, layer, s, module, v):
        if kind != "scores" or layer not in layers:
            return s
        s = torch.maximum(s, torch.tensor(torch.finfo(s.dtype).min))
        s = s.clone()
        for j in range(first, s.shape[2]):  # every row that was some intervened forward's last row
            row = s[0, :, j, img]
            s[0, :, j, img] = row + p["alpha"] * row.abs()
        return s

    if not p["use_attn"]:
        return forward(vlm, inp, generated).logits[0, -1].float()
    with ref_attention(vlm, fn):
        return forward(vlm, inp, generated).logits[0, -1].float()


def pai_scores(vlm, req, p, generated):
    lc = pai_logits(vlm, inputs(vlm, req.prompt, req.image, req.system), generated, p)
    if not p["use_cfg"]:
        return lc, lc
    lu = forward(vlm, inputs(vlm, req.prompt, None, req.system), generated).logits[0, -1].float()
    lpc, lpu = torch.log_softmax(lc, -1), torch.log_softmax(lu, -1)
    g = p["gamma"]
    if g == 1:
        return lpc, lc
    s = g * (lpc - lpu) + lpu
    cutoff = math.log(p["beta"]) + float(lpc.max())
    return torch.where(lpc < cutoff, torch.tensor(float("-inf")), s), lc


# --- SID ----------------------------------------------------------------------------------------
def sid_keep(n_image: int, p) -> int:
    return max(1, min(n_image, int(round(n_image * p["keep"] / p["keep_of"]))))


def sid_logits(vlm, inp, generated, p, meta=None):
    """The contrast branch: layer a-1's head-mean attention of query row max(j, P-1) over the
    image keys picks the K least-attended image keys; the others are masked for row j in layers
    a..L-1."""
    P = inp["input_ids"].shape[1]
    img = image_positions(vlm, inp)
    a = p["layer"]
    K = sid_keep(len(img), p)
    masks: dict = {}

    def fn(kind, layer, t, module, v):
        if kind == "probs" and layer == a - 1:
            for j in range(P - 1, t.shape[2]):
                att = t[0, :, j, img].float().mean(0)
                order = sorted(range(len(img)), key=lambda i: float(att[i]))
                kept = set(order[:K]) if p["select"] == "lowest" else set(order[-K:])
                masks[j] = [img[i] for i in range(len(img)) if i not in kept]
            return t
        if kind == "scores" and layer >= a:
            t = t.clone()
            for j in range(t.shape[2]):
                t[0, :, j, masks[max(j, P - 1)]] = float("-inf")
        return t

    with ref_attention(vlm, fn):
        out = forward(vlm, inp, generated).logits[0, -1].float()
    return out


def sid_scores(vlm, req, p, generated, sampling):
    inp = inputs(vlm, req.prompt, req.image, req.system)
    l0 = forward(vlm, inp, generated).logits[0, -1].float()
    ls = sid_logits(vlm, inp, generated, p)
    s = (1 + p["alpha"]) * l0 - p["alpha"] * ls
    if sampling or p["greedy_apc"]:
        s = apc_mask(s, l0, p["beta"])
    return s, l0


# --- ONLY ---------------------------------------------------------------------------------------
def only_side_logits(vlm, inp, generated, p):
    """ℓ_TE: TE-MHA of the last query row at layer ℓ̃, merged at the last layer, literally."""
    img = set(image_positions(vlm, inp))
    side = {}

    def fn(kind, layer, t, module, v):
        if kind != "probs" or layer != p["layer"]:
            return t
        a = t[0, :, -1, :].double().clone()  # [H, K] (exact: ties are not cut)
        n = a.shape[-1]
        text_cols = [c for c in range(1, n) if c not in img]  # column 0 (BOS) untouched
        img_cols = sorted(img)
        H = a.shape[0]

        def drop(cols):
            x = a[:, cols]
            thr = x.mean(-1, keepdim=True) + x.std(-1, keepdim=True)
            # how close a weight is to its cut: within float round-off the cut is not defined
            # (heads whose weights are all equal cut nothing, in any float order)
            spread = (x.max(-1).values - x.min(-1).values) > 0
            gap = (x - thr).abs()[spread]
            side["edge"] = min(
                side.get("edge", float("inf")), float(gap.min()) if gap.numel() else float("inf")
            )
            return torch.where(x > thr, torch.zeros_like(x), x)

        xt, xi = drop(text_cols), drop(img_cols)
        a[:, text_cols], a[:, img_cols] = xt, xi
        pt, pi = xt / xt.sum(-1, keepdim=True), xi / xi.sum(-1, keepdim=True)
        ht = torch.nan_to_num(-(pt * torch.log(pt + 1e-6)).sum(-1), nan=0.0)
        hi = torch.nan_to_num(-(pi * torch.log(pi + 1e-6)).sum(-1), nan=float("inf"))
        ratio = ht / hi
        for h in range(H):
            if float(ratio[h]) < float(ratio.mean()):
                a[h] = 0
        o = (a.to(v.dtype).unsqueeze(1) @ v[0]).squeeze(1)  # [H, d]
        side["o"] = module.o_proj(o.reshape(1, -1))[0]
        return t

    lm = vlm.model.language_model if vlm.family == "instructblip" else vlm.model
    orig = lm.forward

    def with_hidden(*a, **k):
        k["output_hidden_states"] = True
        return orig(*a, **k)

    lm.forward = with_hidden
    try:
        with ref_attention(vlm, fn):
            out = forward(vlm, inp, generated)
    finally:
        del lm.forward
    tm = text_model(vlm)
    last = tm.layers[-1]
    h = out.hidden_states[len(tm.layers) - 1][0, -1]  # the last layer's input
    r = p["residual_weight"] * h + last.input_layernorm(side["o"])
    h2 = r + last.mlp(last.post_attention_layernorm(r))
    head = vlm.model.language_model.lm_head if vlm.family == "instructblip" else vlm.model.lm_head
    return out.logits[0, -1].float(), head(tm.norm(h2)).float(), side["edge"]


def only_scores(vlm, req, p, generated, meta):
    inp = inputs(vlm, req.prompt, req.image, req.system)
    l0, lte, edge = only_side_logits(vlm, inp, generated, p)
    meta["only_edge"] = min(meta.get("only_edge", float("inf")), edge)
    d = float((torch.softmax(l0, -1) - torch.softmax(lte, -1)).abs().sum())
    if d < p["gamma"]:
        s = l0 + p["alpha_pos"] * lte
        meta.setdefault("only_collaborative", 0)
        meta["only_collaborative"] += 1
    else:
        s = (1 + p["alpha_neg"]) * l0 - p["alpha_neg"] * lte
    return apc_mask(s, l0, p["beta"]), l0


# --- VASparse -------------------------------------------------------------------------------------
def vasparse_logits(vlm, inp, generated, p, hist):
    """The paper variant's sparsified logits. ``hist`` (kept across the steps of one request):
    per step row j its per-layer dropped keys and sink weights, and its attention to the image
    (last layer, head mean) — what a cached decode computed when j was the newest row."""
    P = inp["input_ids"].shape[1]
    img = image_positions(vlm, inp)
    L = n_layers(vlm)
    N = P + len(generated)
    j = N - 1 if generated else None  # the newest row is a step row
    rows = hist.setdefault("rows", {})
    paid = hist.setdefault("paid", {})

    def fn(kind, layer, t, module, v):
        if kind == "probs":
            if layer == L - 1 and j is not None:
                paid[j] = float(t[0, :, j, img].float().mean(0).sum())
            return t
        if not (p["token_selection"] or p["sink_penalty"]):
            return t
        t = t.clone()
        for jj in range(P, N - 1 if j is not None else N):  # older step rows: replay
            dropped, w = rows[jj][layer]
            for h, cols in enumerate(dropped):
                t[0, h, jj, cols] = float("-inf")
            if w is not None:
                t[0, :, jj, : jj + 1] = t[0, :, jj, : jj + 1] * (1 + p["sink_beta"] * (1 - w))
        if j is None:
            return t
        H = t.shape[1]
        dropped = [[] for _ in range(H)]
        if p["token_selection"]:
            gen = list(range(P, j))
            keep = math.ceil(len(gen) * p["sparse_rate"])
            if len(gen) - keep > 0:
                pw = torch.softmax(torch.tensor([paid[i] for i in gen]), -1)
                for h in range(H):
                    delta = [float(t[0, h, j, i]) ** 2 + p["lam"] * float(pw[k]) for k, i in enumerate(gen)]
                    order = sorted(range(len(gen)), key=lambda k: delta[k])
                    dropped[h] = [gen[k] for k in order[: len(gen) - keep]]
                    t[0, h, j, dropped[h]] = float("-inf")
        w = None
        if p["sink_penalty"]:
            prev = torch.softmax(t[0, :, :j, :].float(), -1)  # rows before j, as already changed
            recv = prev.sum(1)[:, : j + 1]  # [H, j+1] attention received so far
            w = torch.softmax(recv, -1)
            t[0, :, j, : j + 1] = t[0, :, j, : j + 1] * (1 + p["sink_beta"] * (1 - w))
        rows.setdefault(j, {})[layer] = (dropped, w)
        return t

    with ref_attention(vlm, fn):
        return forward(vlm, inp, generated).logits[0, -1].float()


def vasparse_scores(vlm, req, p, generated, hist):
    inp = inputs(vlm, req.prompt, req.image, req.system)
    ids = inp["input_ids"][0].tolist() + list(generated)
    emb = text_model(vlm).embed_tokens(torch.tensor([ids[-1]]))[0]
    head = vlm.model.language_model.lm_head if vlm.family == "instructblip" else vlm.model.lm_head
    phi = head(emb).float()
    if p["variant"] == "code":
        l0 = forward(vlm, inp, generated).logits[0, -1].float()
        lp = torch.log_softmax(l0, -1)
        f = torch.where(lp < float(lp.max()) + math.log(p["relative_top"]), torch.tensor(float("-inf")), lp)
        b = torch.log_softmax(phi, -1)
        b = torch.where(f < -1e3, torch.tensor(-1e3), b)
        return f - b - p["contrastive_rate"] * phi, l0
    l0 = vasparse_logits(vlm, inp, generated, p, hist)
    if not p["svcd"]:
        return l0, l0
    s = (1 + p["alpha"]) * l0 - p["alpha"] * phi
    return apc_mask(s, l0, p["beta"]), l0


# --- the loop -------------------------------------------------------------------------------------
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
    max_new_tokens=5,
    seed=0,
    eos=(),
    index=0,
) -> Result:
    p = {**METHODS[method].defaults, **(params or {})}
    key = req.item_id or f"#{index}"
    gs = make_generator(seed, key, "sample")
    res = Result()
    hist: dict = {}
    for t in range(max_new_tokens):
        if method == "pai":
            scores, _ = pai_scores(vlm, req, p, res.tokens)
        elif method == "sid":
            scores, _ = sid_scores(vlm, req, p, res.tokens, do_sample)
        elif method == "only":
            scores, _ = only_scores(vlm, req, p, res.tokens, res.meta)
        elif method == "vasparse":
            scores, _ = vasparse_scores(vlm, req, p, res.tokens, hist)
        else:
            raise KeyError(method)
        top2 = torch.topk(scores, 2).values
        res.margins.append(float(top2[0] - top2[1]) if torch.isfinite(top2[1]) else math.inf)
        tok = ref_warp_and_pick(scores, do_sample, temperature, top_k, top_p, gs)
        if tok in eos:
            res.finish = "eos"
            break
        res.tokens.append(tok)
    return res
