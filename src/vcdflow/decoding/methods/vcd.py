"""``vcd``: Visual Contrastive Decoding (Leng et al., CVPR 2024, arXiv 2311.16922;
``DAMO-NLP-SG/VCD``).

    v′ = √ᾱ_T·v + √(1−ᾱ_T)·ε     (DDPM forward noise on the CLIP-normalised pixels,
                                   betas = sigmoid(linspace(−6, 6, 1000))·(5e-3 − 1e-5) + 1e-5)
    s  = (1+α)·ℓ(y | v, x) − α·ℓ(y | v′, x)
    s[ℓ < log β + max ℓ] = −inf   (APC from the original branch), then T/top-p/top-k, pick.

Parameters: ``alpha`` = α = 1, ``beta`` = β = 0.1 (paper and ``object_hallucination_vqa_llava.py``), ``noise_step`` = 500
(code default; paper: T = 999 for POPE, 500 for MME/LLaVA-Bench; ``cd_scripts/llava1.5_pope.bash``
uses β = 0.2). Paper Eq. 1's per-step γ = 0.1 does not match the code's schedule; we implement the
code. The InstructBLIP script never passes α, so the sampler's α = 0.5 applies there.

``draw`` = ``"per_question"`` (default; the official scripts draw fresh noise for every
question: ``add_diffusion_noise`` is called inside the per-question loop,
``experiments/eval/object_hallucination_vqa_llava.py:37,58``, and draws ``torch.randn_like``,
``vcd_utils/vcd_add_noise.py:19``)
or ``"per_image"``: the noise is drawn from a stream seeded by (seed, image content), so all
questions about one image see the same noised image and its prefill is shared (see
``vcdflow.decoding.generate``'s ``share_prefix``).

This is the fixed implementation (after commit c637c85, 2024-07-16): the contrast branch keeps its
own KV cache for every token. See ``vcd_legacy`` for the earlier behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..distortions import diffusion_noise
from ..types import Branch
from .base import Method

DRAWS = ("per_question", "per_image")


def check_draw(method: str, p) -> None:
    if p.get("draw", "per_question") not in DRAWS:
        raise ValueError(
            f"parameter 'draw' of method {method!r} must be one of {', '.join(DRAWS)}, got {p['draw']!r}"
        )


def noise_fn(noise_step: int, rng):
    def fn(x, mean, std):
        return diffusion_noise(x, noise_step, rng)

    return fn


@dataclass(frozen=True)
class VCD(Method):
    name = "vcd"
    random_draw = True  # the noise (per question or per image)
    defaults = MappingProxyType({"alpha": 1.0, "beta": 0.1, "noise_step": 500, "draw": "per_question"})
    tensor_combine = True  # the base combine (1+α)·ℓ − α·ℓ′ and APC β: tensor functions of the logits

    def validate(self, p):
        super().validate(p)
        check_draw(self.name, p)

    def branches(self, request, ctx):
        self.require_image(request)
        return [
            self.original(request),
            Branch(
                prompt=request.prompt,
                image=request.image,
                system=request.system,
                pixel_fn=noise_fn(int(ctx.params["noise_step"]), ctx.rng),
                name="noised",
            ),
        ]
