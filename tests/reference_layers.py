"""Plain references for the layer-contrast methods (dola, deco, revisit), written separately from
the engine, the hook seam and the method files.

One request at a time, one branch, no KV cache, no padding: every step recomputes prompt +
generated tokens through the Hugging Face model's own forward with ``output_hidden_states=True``
(inputs and embeddings from tests/reference_methods.py). The early exits, layer buckets, JSD,
filters and combinations are transcribed from the official code (voidism/DoLa's
``dola_greedy_decode``, HF's ``_dola_select_contrast``, zjunlp/Deco's ``deco_greedy_search``,
bscho333/ReVisiT's ``_revisit_decoding``) — batch of one, so the official batch averages are no-ops.
The repetition penalty is transformers' own ``RepetitionPenaltyLogitsProcessor`` applied to the
prompt ids + the generated ids, as the official pipelines call it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from reference_decoder import ref_warp_and_pick
from reference_methods import Result, forward, inputs
from vcdflow.decoding import METHODS
from vcdflow.decoding.sampling import make_generator

#: methods this module covers (tests/test_methods_layers.py); reference_decoder covers the first wave
COVERED = ("dola", "deco", "revisit")


def language_model(vlm):
    return vlm.model.language_model if vlm.family == "instructblip" else vlm.model


def forward_hidden(vlm, inp, generated):
    """reference_methods.forward with ``output_hidden_states=True`` → the HF output."""
    return forward(vlm, inp, generated, hidden=True)


def lm_head(vlm):
    return language_model(vlm).get_output_embeddings()


def final_norm(vlm):
    lm = language_model(vlm)
    inner = getattr(lm, "model", lm)
    inner = getattr(inner, "language_model", inner)
    return inner.norm


def num_layers(vlm) -> int:
    return vlm.model.config.get_text_config().num_hidden_layers


def hf_start_layer(vlm) -> int:
    cfg = vlm.model.config
    tied = getattr(cfg, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(cfg.get_text_config(), "tie_word_embeddings", False)
    final_layer = num_layers(vlm)
    if not tied:
        return 0
    elif final_layer > 2:
        return 2
    elif final_layer == 2:
        return 1
    return 0


def hf_dola_layers(vlm, dola_layers) -> list[int]:
    """HF ``_dola_decoding``'s candidate premature layers, transcribed."""
    final_layer = num_layers(vlm)
    start_layer = hf_start_layer(vlm)
    if isinstance(dola_layers, str) and dola_layers == "low":
        if start_layer == final_layer // 2:
            return [start_layer]
        return (
            list(range(start_layer, final_layer // 2, 2))
            if final_layer <= 40
            else list(range(start_layer, 20, 2))
        )
    if isinstance(dola_layers, str) and dola_layers == "high":
        return (
            list(range(final_layer // 2, final_layer, 2))
            if final_layer <= 40
            else list(range(final_layer - 20, final_layer, 2))
        )
    return [i for i in dola_layers if i < final_layer]


def revisit_layer_set(vlm, early_exit_layers) -> list[int]:
    """ReVisiT ``_revisit_decoding``'s layer sets, transcribed."""
    final_layer = num_layers(vlm)
    start_layer = hf_start_layer(vlm)
    if early_exit_layers == "all":
        if final_layer % 2 == 0:
            return list(range(start_layer, final_layer + 1, 2))
        return list(range(start_layer, final_layer + 1, 2)) + [final_layer]
    if early_exit_layers == "last":
        return [final_layer]
    if early_exit_layers in ("low", "high"):
        return hf_dola_layers(vlm, early_exit_layers) + [final_layer]
    return [i for i in early_exit_layers if i < final_layer]


def relative_top_filter(scores, relative_top=0.1, filter_value=-float("Inf"), min_tokens_to_keep=1):
    """voidism/DoLa ``relative_top_filter`` (utils.py L2456-2465), verbatim."""
    scores_normalized = scores.log_softmax(dim=-1)
    sorted_logits, sorted_indices = torch.sort(scores_normalized, descending=True)
    min_thresh = sorted_logits[..., min_tokens_to_keep - 1]
    probs_max = torch.max(scores_normalized, dim=-1).values
    probs_thresh = probs_max + np.log(relative_top)
    probs_thresh = torch.min(min_thresh, probs_thresh)
    probs_thresh = probs_thresh.unsqueeze(-1)
    scores_normalized[scores_normalized < probs_thresh] = filter_value
    return scores_normalized


def process(scores, prompt_ids, generated, p):
    """transformers' repetition-penalty / no-repeat-n-gram processors on prompt + generated ids."""
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    ids = torch.tensor([list(prompt_ids) + list(generated)])
    s = scores[None].clone()
    if p.get("repetition_penalty", 1.0) != 1.0:
        s = RepetitionPenaltyLogitsProcessor(p["repetition_penalty"])(ids, s)
    if p.get("no_repeat_ngram_size", 0) > 0:
        s = NoRepeatNGramLogitsProcessor(p["no_repeat_ngram_size"])(ids, s)
    return s[0]


# --- the three methods, one step each (batch of one) ---------------------------------------------
def dola_step(vlm, out, p, res):
    hs = out.hidden_states
    final_logits = out.logits[:, -1, :].float()
    if p["premature"] is not None:
        candidate_premature_layers = [p["premature"]]
    else:
        candidate_premature_layers = hf_dola_layers(vlm, p["layers"])
    dict_outputs = {i: lm_head(vlm)(hs[i][:, -1, :]).float() for i in candidate_premature_layers}
    if len(candidate_premature_layers) == 1:
        premature_layer = candidate_premature_layers[0]
    else:
        stacked = torch.stack([dict_outputs[i] for i in candidate_premature_layers], dim=0)
        softmax_mature_layer = F.softmax(final_logits, dim=-1)
        softmax_premature_layers = F.softmax(stacked, dim=-1)
        M = 0.5 * (softmax_mature_layer[None, :, :] + softmax_premature_layers)
        log_softmax_mature_layer = F.log_softmax(final_logits, dim=-1)
        log_softmax_premature_layers = F.log_softmax(stacked, dim=-1)
        kl1 = F.kl_div(log_softmax_mature_layer[None, :, :], M, reduction="none").mean(-1)
        kl2 = F.kl_div(log_softmax_premature_layers, M, reduction="none").mean(-1)
        js_divs = 0.5 * (kl1 + kl2)
        js_divs = js_divs.mean(-1)
        premature_layer = candidate_premature_layers[int(js_divs.argmax().cpu().item())]
    res.meta.setdefault("dola_premature", {})
    res.meta["dola_premature"][str(premature_layer)] = (
        res.meta["dola_premature"].get(str(premature_layer), 0) + 1
    )
    base_logits = dict_outputs[premature_layer]
    if p["relative_top"] > 0.0:
        final_logits = relative_top_filter(final_logits, p["relative_top"])
        base_logits = base_logits.log_softmax(dim=-1)
        mask = final_logits[0] < -1e3
        base_logits[0][mask] = -1e3
    logits = final_logits - base_logits
    return logits[0]


def deco_layer_range(L):
    # chair_llava.py: range(start_layer=20, end_layer=29) for 32 layers; the same fraction otherwise
    lo = math.floor(20 * L / 32)
    hi = min(math.ceil(28 * L / 32), L - 1)
    return list(range(max(0, min(lo, hi)), hi + 1))


def deco_step(vlm, out, p, res):
    hs = out.hidden_states
    early_exit_layers = p["layers"] if p["layers"] is not None else deco_layer_range(num_layers(vlm))
    early_exit_layers = [i for i in early_exit_layers if i < num_layers(vlm)]
    dict_outputs = {i: lm_head(vlm)(final_norm(vlm)(hs[i])).float() for i in early_exit_layers}
    threshold_top_k, threshold_top_p, alpha = p["threshold_top_k"], p["threshold_top_p"], p["alpha"]
    last_layer_tokens_logits = out.logits[:, -1, :].float()
    last_layer_tokens_probs = F.softmax(last_layer_tokens_logits, dim=-1).squeeze(dim=0).squeeze(dim=0)
    candidate_tokens_probs, candidate_tokens_ids = torch.topk(
        last_layer_tokens_probs, dim=-1, k=threshold_top_k
    )
    candidate_tokens_cumulative_probs = candidate_tokens_probs.cumsum(dim=-1)
    candidate_tokens_indices = torch.searchsorted(
        candidate_tokens_cumulative_probs, threshold_top_p, right=False
    )
    candidate_tokens_cutoff_idx = torch.min(candidate_tokens_indices + 1, torch.tensor(threshold_top_k))
    candidate_tokens_ids = candidate_tokens_ids[:candidate_tokens_cutoff_idx]
    stacked_early_exit_layers = torch.stack([dict_outputs[i][:, -1, :] for i in early_exit_layers], dim=0)
    softmax_early_exit_layers = F.softmax(stacked_early_exit_layers, dim=-1)
    candidate_tokens_early_exit_probs = softmax_early_exit_layers[:, :, candidate_tokens_ids].squeeze(dim=1)
    max_candidate_tokens_idx = torch.argmax(candidate_tokens_early_exit_probs)
    premature_max_probs = candidate_tokens_early_exit_probs.max().item()
    target_layers = max_candidate_tokens_idx // candidate_tokens_early_exit_probs.size(1)
    selected_premature_layer_idx = early_exit_layers[target_layers.item()]
    res.meta.setdefault("deco_layers", {})
    key = str(selected_premature_layer_idx)
    res.meta["deco_layers"][key] = res.meta["deco_layers"].get(key, 0) + 1
    selected_premature_layer_logits = dict_outputs[selected_premature_layer_idx][:, -1, :]
    indices_to_remove = torch.ones_like(selected_premature_layer_logits)
    indices_to_remove[:, candidate_tokens_ids] = 0
    indices_to_remove = indices_to_remove.bool()
    final_token_logits = (
        last_layer_tokens_logits + alpha * premature_max_probs * selected_premature_layer_logits
    )
    final_token_logits = final_token_logits.masked_fill(indices_to_remove, -float("Inf"))
    return final_token_logits[0]


def revisit_candidates(vlm, inp, p):
    """At the first step: lm_head(hidden_states[i][:, image_tokens, :]) for the layer set."""
    out = forward_hidden(vlm, inp, [])
    spec = p["layers"]
    if spec is None:
        spec = "all" if vlm.family == "qwen2_5_vl" else "last"
    early_exit_layers = revisit_layer_set(vlm, spec)
    image_tokens = torch.where(inp["input_ids"] == vlm.adapter.image_token_id)[-1]
    stacked = [lm_head(vlm)(out.hidden_states[i][:, image_tokens, :]).float() for i in early_exit_layers]
    stacked = torch.stack(stacked, dim=1)
    return stacked.view(stacked.size(0), -1, stacked.size(-1)), early_exit_layers, len(image_tokens)


def revisit_step(vlm, out, p, res, cands):
    stacked_candidate_layers, layers, n_img = cands
    final_logits = out.logits[:, -1, :].float()
    final_logits = relative_top_filter(final_logits, p["relative_top"])
    masked = final_logits[0] > -1e3
    stacked_premature_layers = stacked_candidate_layers[:, :, masked]
    softmax_premature_layers = F.softmax(stacked_premature_layers, dim=-1)
    log_softmax_premature_layers = F.log_softmax(stacked_premature_layers, dim=-1)
    softmax_mature_layer = F.softmax(final_logits[:, masked], dim=-1)
    log_softmax_mature_layer = F.log_softmax(final_logits[:, masked], dim=-1)
    avg_dist = 0.5 * (softmax_mature_layer[:, None, :] + softmax_premature_layers)
    kl1 = F.kl_div(log_softmax_mature_layer[:, None, :], avg_dist, reduction="none").mean(-1)
    kl2 = F.kl_div(log_softmax_premature_layers, avg_dist, reduction="none").mean(-1)
    js_divs = 0.5 * (kl1 + kl2)
    js_divs = js_divs.mean(0)
    idx = int(js_divs.argmin().cpu().item())
    res.meta.setdefault("revisit_layers", {})
    key = str(layers[idx // n_img])
    res.meta["revisit_layers"][key] = res.meta["revisit_layers"].get(key, 0) + 1
    next_token_logits = final_logits
    base_candidate_logits = log_softmax_premature_layers[0][idx]
    final_candidate_logits = log_softmax_mature_layer[0]
    next_token_logits[0][masked] = final_candidate_logits + base_candidate_logits
    return next_token_logits[0]


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
    inp = inputs(vlm, req.prompt, req.image, req.system)
    prompt_ids = inp["input_ids"][0].tolist()
    cands = revisit_candidates(vlm, inp, p) if method == "revisit" else None
    for t in range(max_new_tokens):
        out = forward_hidden(vlm, inp, res.tokens)
        if method == "dola":
            scores = dola_step(vlm, out, p, res)
        elif method == "deco":
            scores = deco_step(vlm, out, p, res)
        elif method == "revisit":
            scores = revisit_step(vlm, out, p, res, cands)
        else:
            raise KeyError(method)
        scores = process(scores, prompt_ids, res.tokens, p)
        top2 = torch.topk(scores, 2).values
        res.margins.append(float(top2[0] - top2[1]) if torch.isfinite(top2[1]) else math.inf)
        tok = ref_warp_and_pick(scores, do_sample, temperature, top_k, top_p, gs)
        if tok in eos:
            res.finish = "eos"
            break
        res.tokens.append(tok)
    return res
