"""``vti``: Visual and Textual Intervention (Liu, Ye, Zou, ICLR 2025, arXiv 2410.15778).

Official code ``shengliu66/VTI@bb5dfee`` (``shared/spec/methods-3.md`` §1.4). One branch (the
original) decoded with fixed steering directions fitted offline (engine capability E15:
:mod:`vcdflow.steering_fit`, workflow rule ``fit_vti`` in ``workflow/rules/vti.smk``), pushed into
every decoder layer's MLP output (E14) and every vision-encoder layer's MLP output, per token (E14v),
at every position (``VTILayer``, ``vti_utils/llm_layers.py:16-30``; installed on every layer by
``add_vti_layers``, ``:115-121``; ``run_mmhal_vti.py:67-78``)::

    x ← ‖x‖ · normalize(normalize(x) + 0.1 · λ · normalize(d_l))      (d_l per token in the tower)

λ = ``alpha_text`` on the language model, ``alpha_image`` on the vision tower (0: that part off);
the 0.1 is hard-coded in the official layer (``llm_layers.py:28``); no cosine gate (the gate is
commented out, ``:22``).

Parameters: ``directions`` — path of the fitted artefact (a ``torch.save`` dict ``{"text": [L, D],
"vision": [L_v, T, D] | None, "meta"}``, :func:`vcdflow.steering_fit.save_directions`); required.
``alpha_image`` = 0.9, ``alpha_text`` = 0.9 — the README's MMHal run (the argparse defaults of
``run_mmhal_vti.py:157-158`` are 0 / 0.8: set ``alpha_image: 0, alpha_text: 0.8`` for that run).
Official decoding for MMHal: beam search, 5 beams, ``max_new_tokens`` 256, ``use_cache=False``
(``run_mmhal_vti.py:117-123``); this method decodes greedily or by sampling (beam 5 needs the
beam engine, E11). CHAIR/POPE settings: "To be updated" in the README — **UNVERIFIED**.

Families: llava (and the demo model), instructblip — text and vision; **qwen2_5_vl text only**
(``alpha_image`` must be 0 or the artefact must have no vision part: its tower packs
dynamic-resolution patches, so a per-token direction has no fixed token; a run asking for it
fails naming the family). The artefact must match the model (decoder layers and hidden size;
vision layers, tokens and hidden size), else the request fails naming the mismatch.
Shared-prefix prefill stays on: every row and image is steered the same way, so shared prefixes
are exact. No random draw (the fit has its own seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..steering import ActivationSteering, vision_layers
from .base import Method

#: the extra-input kind the workflow supplies the fitted artefact as (vcdflow.config.METHOD_INPUTS:
#: rule fit_vti's results/vti/{model}/{fit key}.pt; vcdflow.runner.INPUT_ATTACHERS sets ``directions``);
#: from the library/CLI the ``directions`` parameter names the file
VTI_INPUT = "vti_directions"


@dataclass(frozen=True)
class VTI(Method):
    name = "vti"
    defaults = MappingProxyType({"directions": None, "alpha_image": 0.9, "alpha_text": 0.9})
    nullable = frozenset({"directions"})
    param_types = MappingProxyType({"directions": (str,)})
    extra_inputs = (VTI_INPUT,)

    def validate(self, p):
        super().validate(p)
        for k in ("alpha_image", "alpha_text"):
            if float(p[k]) < 0:
                raise ValueError(f"parameter {k!r} of method 'vti' must be >= 0, got {p[k]}")

    def forward_hooks(self, adapter, params):
        from ...steering_fit import load_directions

        if not params.get("directions"):
            raise ValueError("method 'vti' needs parameter 'directions': the path of a fitted VTI directions file "
                             "(workflow rule fit_vti, or vcdflow.steering_fit.fit_vti + save_directions)")
        art = load_directions(params["directions"])
        at, av = float(params["alpha_text"]), float(params["alpha_image"])
        text, vision = art.get("text"), art.get("vision")
        L, D = len(adapter.decoder_layers()), int(adapter.text_config.hidden_size)
        vectors, vvectors = {}, {}
        if at != 0:
            if text is None:
                raise ValueError(f"{params['directions']}: the VTI directions have no textual part, but alpha_text={at}")
            if tuple(text.shape) != (L, D):
                raise ValueError(f"{params['directions']}: textual directions are {list(text.shape)}, the model has "
                                 f"{L} decoder layers of size {D}")
            vectors = {l: text[l] for l in range(L)}
        if av != 0:
            family = getattr(adapter, "family", None)
            if family == "qwen2_5_vl":
                raise ValueError("method 'vti' with alpha_image != 0 does not apply to the qwen2_5_vl family (no fixed "
                                 "vision token count); run it text-only (alpha_image: 0)")
            if vision is None:
                raise ValueError(f"{params['directions']}: the VTI directions have no visual part, but alpha_image={av}")
            n_v = len(vision_layers(adapter))
            if vision.shape[0] != n_v:
                raise ValueError(f"{params['directions']}: visual directions cover {vision.shape[0]} vision layers, the "
                                 f"model's tower has {n_v}")
            vvectors = {l: vision[l] for l in range(n_v)}
        return ActivationSteering(vectors=vectors, lam=0.1 * at, vision_vectors=vvectors, vision_lam=0.1 * av)

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
