"""``vti``: Visual and Textual Intervention (Liu, Ye, Zou, ICLR 2025, arXiv 2410.15778).

Official code ``shengliu66/VTI@bb5dfee``. One branch (the
original) decoded with fixed steering directions fitted offline (once per model:
:mod:`vcdflow.steering_fit`, workflow rule ``fit_vti`` in ``workflow/rules/vti.smk``), pushed into
every decoder layer's MLP output and every vision-encoder layer's MLP output, per token,
at every position (``VTILayer``, ``vti_utils/llm_layers.py:16-30``; installed on every layer by
``add_vti_layers``, ``:115-121``; ``run_mmhal_vti.py:67-78``)::

    x ← ‖x‖ · normalize(normalize(x) + 0.1 · λ · normalize(d_l))      (d_l per token in the tower)

λ = ``alpha_text`` on the language model, ``alpha_image`` on the vision tower (0: that part off);
the 0.1 is hard-coded in the official layer (``llm_layers.py:28``); no cosine gate (the gate is
commented out, ``:22``).

Parameters: ``directions`` — path of the fitted artefact (a ``torch.save`` dict ``{"text": [L, D],
"vision": [L_v, T, D] | [L_v, h, w, D] (Qwen2.5-VL) | None, "meta"}``,
:func:`vcdflow.steering_fit.save_directions`); required. ``vision_resample`` (Qwen2.5-VL only,
below) = ``"bilinear"``.
``alpha_image`` = 0.9, ``alpha_text`` = 0.9 — the README's MMHal run (the argparse defaults of
``run_mmhal_vti.py:157-158`` are 0 / 0.8: set ``alpha_image: 0, alpha_text: 0.8`` for that run).
Official decoding for MMHal: beam search, 5 beams, ``max_new_tokens`` 256, ``use_cache=False``
(``run_mmhal_vti.py:117-123``); this method decodes greedily or by sampling (``num_beams=5`` runs the
engine's beam search). CHAIR/POPE settings: "To be updated" in the README — **UNVERIFIED**.

Families: llava (and the demo model), instructblip, qwen2_5_vl — text and vision.
**Qwen2.5-VL's visual part is this project's equivalent, not the official code** (the official
repo has LLaVA, InstructBLIP and Qwen-VL — fixed-resolution towers — only): its tower packs
the 14-px patches of dynamic-resolution images into one window-permuted sequence, so the
per-token direction is fitted as a **patch grid** ``[L_v, h, w, D]`` at one fit grid
(:mod:`vcdflow.steering_fit`, fit setting ``vision_grid``) and, for each image the tower encodes,
resampled to that image's patch grid and put into the tower's packed window order
(:func:`vcdflow.decoding.steering.packed_rows`); ``vision_resample`` = ``"bilinear"`` (default),
``"nearest"``, or ``"exact"`` (an image whose grid differs from the fit grid fails the request
instead of being steered with an interpolated direction). Unused by the other families. (The
official ``get_layers`` — the longest ``ModuleList`` — would pick Qwen2.5-VL-7B's 32 vision blocks
over its 28 decoder layers for the textual part; here the decoder layers come from the adapter.)
The artefact must match the model (decoder layers and hidden size; vision layers, tokens /
patch-grid layout and hidden size), else the request fails naming the mismatch.
Shared-prefix prefill stays on: every row and image is steered the same way, so shared prefixes
are exact. No random draw (the fit has its own seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..steering import RESAMPLE_MODES, ActivationSteering, is_packed_tower, vision_layers
from .base import Method

#: the extra-input kind the workflow supplies the fitted artefact as (vcdflow.config.METHOD_INPUTS:
#: rule fit_vti's results/vti/{model}/{fit key}.pt; vcdflow.runner.INPUT_ATTACHERS sets ``directions``);
#: from the library/CLI the ``directions`` parameter names the file
VTI_INPUT = "vti_directions"


@dataclass(frozen=True)
class VTI(Method):
    name = "vti"
    defaults = MappingProxyType(
        {"directions": None, "alpha_image": 0.9, "alpha_text": 0.9, "vision_resample": "bilinear"}
    )
    nullable = frozenset({"directions"})
    param_types = MappingProxyType({"directions": (str,), "vision_resample": (str,)})
    extra_inputs = (VTI_INPUT,)

    def validate(self, p):
        super().validate(p)
        for k in ("alpha_image", "alpha_text"):
            if float(p[k]) < 0:
                raise ValueError(f"parameter {k!r} of method 'vti' must be >= 0, got {p[k]}")
        if p["vision_resample"] not in RESAMPLE_MODES:
            raise ValueError(
                f"parameter 'vision_resample' of method 'vti' must be one of "
                f"{', '.join(RESAMPLE_MODES)}, got {p['vision_resample']!r}"
            )

    def forward_hooks(self, adapter, params):
        from ...steering_fit import load_directions

        if not params.get("directions"):
            raise ValueError(
                "method 'vti' needs parameter 'directions': the path of a fitted VTI directions file "
                "(workflow rule fit_vti, or vcdflow.steering_fit.fit_vti + save_directions)"
            )
        art = load_directions(params["directions"])
        at, av = float(params["alpha_text"]), float(params["alpha_image"])
        text, vision = art.get("text"), art.get("vision")
        L, D = len(adapter.decoder_layers()), int(adapter.text_config.hidden_size)
        vectors, vvectors = {}, {}
        if at != 0:
            if text is None:
                raise ValueError(
                    f"{params['directions']}: the VTI directions have no textual part, but alpha_text={at}"
                )
            if tuple(text.shape) != (L, D):
                raise ValueError(
                    f"{params['directions']}: textual directions are {list(text.shape)}, the model has "
                    f"{L} decoder layers of size {D}"
                )
            vectors = {l: text[l] for l in range(L)}
        if av != 0:
            family = getattr(adapter, "family", None)
            if vision is None:
                raise ValueError(
                    f"{params['directions']}: the VTI directions have no visual part, but alpha_image={av}"
                )
            packed = is_packed_tower(adapter)
            if vision.dim() != (4 if packed else 3):
                raise ValueError(
                    f"{params['directions']}: visual directions are {list(vision.shape)}; the {family} family needs "
                    + (
                        "a patch grid [layers, rows, columns, hidden] (fitted on a qwen2_5_vl model)"
                        if packed
                        else "[layers, tokens, hidden] (a patch-grid direction is for qwen2_5_vl)"
                    )
                )
            n_v = len(vision_layers(adapter))
            if vision.shape[0] != n_v:
                raise ValueError(
                    f"{params['directions']}: visual directions cover {vision.shape[0]} vision layers, the "
                    f"model's tower has {n_v}"
                )
            vvectors = {l: vision[l] for l in range(n_v)}
        return ActivationSteering(
            vectors=vectors,
            lam=0.1 * at,
            vision_vectors=vvectors,
            vision_lam=0.1 * av,
            vision_resample=str(params.get("vision_resample", "bilinear")),
        )

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
