"""Plausibility constraints: which tokens may be chosen at all.

**APC** (adaptive plausibility constraint, VCD ``vcd_utils/vcd_sample.py`` "version 2", copied by
ICD, RITUAL, AvisC, Self-Aug; origin: text CD, Li et al. 2022, arXiv 2210.15097)::

    cutoff = log(β) + max ℓ          # ℓ: logits of the ORIGINAL branch
    s[ℓ < cutoff] = −inf             # ⇔ keep y with p(y) ≥ β · max p

**SAT** (Self-Aug's sparsity-adaptive truncation, ``eunwooim/selfaug:src/utils/utils.py``)::

    τ > 0:  β_t = sigmoid(τ · Σ p log₂ p) = σ(−τ · H₂(p_t))        (β_t ≤ 0.5)
    τ < 0:  β_t = (H₂(p_t) / log₂ |V|) ^ (1/|τ|)

with p = softmax(ℓ) of the original branch; then the APC cutoff with β_t.

**CODE**'s V_head uses β_t = d_t (see :mod:`vcdflow.decoding.methods.code`).
"""

from __future__ import annotations

import math

import torch


def apc(scores: torch.Tensor, logits: torch.Tensor, beta) -> torch.Tensor:
    """Mask ``scores`` [..., V] to −inf where ``logits`` (original branch) < log β + max logits.

    ``beta``: float, or a tensor broadcastable to ``logits[..., :1]`` (per-row β). β ≤ 0 keeps
    everything (log 0 = −inf)."""
    if isinstance(beta, torch.Tensor):
        b = beta.to(logits.device, torch.float32)
        if b.ndim == logits.ndim - 1:
            b = b.unsqueeze(-1)
        log_b = torch.log(b)
    else:
        log_b = math.log(beta) if beta > 0 else -math.inf
    cutoff = log_b + logits.max(dim=-1, keepdim=True).values
    return scores.masked_fill(logits < cutoff, -float("inf"))


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of softmax(logits) over the last dim (0·log 0 = 0)."""
    p = torch.softmax(logits.float(), dim=-1)
    logp = torch.where(p > 0, torch.log2(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p))
    return -(p * logp).sum(-1)


def sat_beta(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Self-Aug SAT threshold β_t per row of ``logits`` [..., V] → [...]."""
    h = entropy_bits(logits)
    if tau > 0:
        return torch.sigmoid(-tau * h)
    if tau < 0:
        return (h / math.log2(logits.shape[-1])) ** (1.0 / abs(tau))
    raise ValueError("tau must be non-zero")
