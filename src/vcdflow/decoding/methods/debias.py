"""``debias``: post-hoc debias (content-free calibration), first-step yes/no probabilities logged.

Zhang et al., "Debiasing Multimodal Large Language Models", arXiv 2403.05262;
``yfzhang114/LLaVA-Align@dfbecfa``.

Decoding: three branches — the original (image v, prompt x), **none** (the same conversation
without the image) and **unk** (the image placeholder replaced by one ``<unk>`` token)::

    contrast=True  (default; the calibration scripts' ``--use_dd --use_dd_unk``, ``vcd_utils/vcd_sample.py:147-194``):
        s = (1+α)·ℓ − α·(ℓ_unk + ℓ_none)/2;   s[ℓ < log β + max ℓ] = −inf        (= ``vdd`` "both")
    contrast=False:  s = ℓ

At the first step the method records, per branch, the official ``calibrate_label_dict``
(``experiments/utils/metrics.py:102-113``): the top-``top_k`` tokens of softmax(scores / T), each
decoded, lower-cased and stripped, keeping the first (highest) occurrence of each string,
probabilities rounded to 4 significant digits (the official runs are float16, about 3 digits; batch
float round-off then rarely shows) →
``Output.meta["debias_top"] = {"naive": {str: p}, "none": {…}, "unk": {…}}``. "naive" uses the
processed scores of the decode itself (HF ``output_scores``: contrasted, APC-masked and
temperature-scaled; ``calibrate/llava_calibrate.py:161-185``); "none"/"unk" use ℓ_none / T and
ℓ_unk / T, as the scripts' separate plain-sampling runs without dd flags
(``calibrate_label_sapce``, ``llava_calibrate.py:41-89``). T = the sampling temperature (1 in
greedy mode). The calibration itself is scorer-side: :mod:`vcdflow.metrics.calibrated`
(``pope_calibrated`` / ``mme_calibrated``, modes naive / none / unk / none_unk).

Parameters: ``alpha`` = α = 1, ``beta`` = β = 0.2, ``contrast`` = True, ``top_k`` = 10
(``experiments/scripts/pope/run_llava.sh:8-12``: ``cd_alpha 1, cd_beta 0.2, noise_step 500``
(unused without ``--use_cd``), temperature 0.2; ``metrics.py:102`` ``top_k=10``). Official mode:
**sampling at T = 0.2**, seed 55, ``max_new_tokens`` 64, prompt ``"{question} Please answer this
question with one word."`` (``llava_calibrate.py:142``). Greedy (T = 1 for the logged
distributions) is ours.

Divergences: the official none/unk distributions come from separate generate calls with their own
sampled continuations; only their first-step scores are used, which is what is logged here (no
continuation is decoded for them). The decode-time "none" branch of the contrast: officially
``--use_dd`` deletes only the image id from the prompt ids, so the text keeps the newline after it
("USER: ▁\n{q} …", ``vcd_utils/vcd_sample.py:173-176`` with ``tokenizer_image_token``'s chunks),
while the calibration "none" prompt has none (``calibrate/llava_calibrate.py:46-53``). Here one
"none" branch, without the newline, serves both: matching the contrast exactly needs a fourth
branch (one more forward per step) for a one-token seam difference that only nudges the contrast;
the logged prior, which the calibration uses, is the official one. Every family (InstructBLIP's "none" and "unk" branches are the
LLM alone on the text, as for ``vdd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..plausibility import apc
from ..types import Branch
from .base import Method

BRANCH_KEYS = ("naive", "none", "unk")


def top_token_probs(scores: torch.Tensor, tokenizer, k: int) -> dict[str, float]:
    """``calibrate_label_dict``: top-k of softmax(scores) → {decoded, lower-cased, stripped
    token: probability}, first (highest) occurrence of a string kept."""
    probs = torch.softmax(scores.float(), dim=-1).cpu()
    top_p, top_i = torch.topk(probs, k=min(int(k), probs.shape[-1]))
    out: dict[str, float] = {}
    for p, i in zip(top_p.tolist(), top_i.tolist()):
        s = tokenizer.decode([i]).lower().strip()
        if s not in out:
            out[s] = float(f"{p:.4g}")
    return out


@dataclass(frozen=True)
class Debias(Method):
    name = "debias"
    defaults = MappingProxyType({"alpha": 1.0, "beta": 0.2, "contrast": True, "top_k": 10})

    def validate(self, p):
        super().validate(p)
        if not isinstance(p["contrast"], bool):
            raise ValueError(
                f"parameter 'contrast' of method 'debias' must be true or false, got {p['contrast']!r}"
            )
        if not isinstance(p["top_k"], int) or p["top_k"] < 1:
            raise ValueError(
                f"parameter 'top_k' of method 'debias' must be a positive integer, got {p['top_k']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        return [
            self.original(request),
            Branch(prompt=request.prompt, image=None, system=request.system, name="none"),
            Branch(
                prompt=f"{ctx.adapter.unk_token}\n{request.prompt}",
                image=None,
                system=request.system,
                name="unk",
            ),
        ]

    def combine(self, logits, step, state):
        p = state.params
        ell = logits[..., 0, :]
        if p["contrast"]:
            a = float(p["alpha"])
            s = (1 + a) * ell - a * (logits[..., 2, :] + logits[..., 1, :]) / 2
            s = apc(s, ell, float(p["beta"]))
        else:
            s = ell
        if step == 0 and state.contexts:
            T = state.temperature or 1.0
            for g, ctx in enumerate(state.contexts):
                tok = ctx.adapter.tokenizer
                ctx.meta["debias_top"] = {
                    "naive": top_token_probs(s[g] / T, tok, p["top_k"]),
                    "none": top_token_probs(logits[g, 1] / T, tok, p["top_k"]),
                    "unk": top_token_probs(logits[g, 2] / T, tok, p["top_k"]),
                }
        return s

    def plausibility(self, logits, step, state):
        return None
