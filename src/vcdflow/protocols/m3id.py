"""``m3id``: M3ID's protocol (Favero et al., CVPR 2024). M3ID released no code; its numbers in the
contrastive-decoding literature come from RITUAL's reimplementation (``use_m3id`` in
``sangminwoo/RITUAL ritual_utils/ritual_sample.py:155-179``: raw logits, γ_t = exp(−0.02·t), APC
β = ``ritual_beta`` = 0.1), run through RITUAL's evaluation scripts. So this protocol is RITUAL's
(see :mod:`vcdflow.protocols.ritual`: LLaVA-1.5 and InstructBLIP; POPE with no suffix, CHAIR,
MME; OPERA-style parser; sampling T = 1, top-p = 1) with M3ID's parameters. Not run: Qwen2.5-VL.
"""

from __future__ import annotations

from .base import S
from .ritual import R, woo_protocol

PROTOCOL = woo_protocol(
    "m3id",
    "M3ID (Favero et al., CVPR 2024) as reimplemented and run by sangminwoo/RITUAL",
    {
        "m3id": S(
            {"lambda": 0.02, "beta": 0.1, "variant": "logits"},
            f"{R} ritual_utils/ritual_sample.py:177-179 (gamma_t = exp(-0.02 t), raw logits); "
            f"β = ritual_beta {R} eval_bench/pope_eval_llava.py:80",
        )
    },
)
