"""``vcd_legacy``: VCD as the official code behaved before commit c637c85 (2024-07-16).

``model_kwargs_cd = model_kwargs.copy()`` ran inside the token loop, so from the second token on
the contrast forward reused the *clean-image* KV cache: ℓ′ = ℓ and (1+α)ℓ − αℓ′ = ℓ. In effect VCD
contrasted only the **first token**, while APC still truncated at every step:

    t = 0:  s = (1+α)·ℓ(y | v, x) − α·ℓ(y | v′, x)
    t ≥ 1:  s = ℓ(y | v, x)
    every t: s[ℓ < log β + max ℓ] = −inf

Harmless for one-word POPE answers, not for CHAIR captions. The engine drops the contrast rows
after the first token (``contrast_steps = 1``), so this costs one extra prefill only.
Parameters as ``vcd``: ``alpha`` = 1, ``beta`` = 0.1, ``noise_step`` = 500, ``draw`` = "per_question"
(``per_image``: one noise draw per picture, see ``vcd``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .vcd import VCD


@dataclass(frozen=True)
class VCDLegacy(VCD):
    name = "vcd_legacy"
    contrast_steps = 1
