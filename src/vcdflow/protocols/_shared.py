"""Values several protocols share, each with its source."""

from __future__ import annotations

from ..textproc import blip_pre_caption  # noqa: F401 - re-exported
from .base import S

#: LLaVA ``conv_llava_v1`` system text ("curious human")
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_V1_SRC = (
    "haotian-liu/LLaVA llava/conversation.py:325-335 (conv_llava_v1; get_prompt SeparatorStyle.TWO :54-63)"
)

#: ``conv_vicuna_v1`` / HALC system text ("curious user")
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

CHAIR_PROMPT = "Please describe this image in detail."

#: transformers' ``GenerationConfig`` default ``top_k = 50``: a sampling ``generate`` call that
#: passes no ``top_k`` gets a TopKLogitsWarper(50) (transformers 4.31 ``_get_logits_warper``).
IMPLICIT_TOP_K = (
    "transformers GenerationConfig default top_k=50 (the call passes no top_k, "
    "transformers 4.31 _get_logits_warper adds TopKLogitsWarper(50))"
)

#: LAVIS ``blip2_vicuna_instruct.generate`` defaults (the copy vendored by the VCD line of repos)
LAVIS_GENERATE = "DAMO-NLP-SG/VCD experiments/lavis/models/blip2_models/blip2_vicuna_instruct.py"

INSTRUCTBLIP_RAW = S(
    "instructblip_raw",
    f"{LAVIS_GENERATE}:368-376 (the LLM reads the prompt itself, "
    "after the 32 query outputs; no chat template)",
)
NO_SYSTEM_IB = S(
    None,
    "InstructBLIP has no system text (LAVIS generate uses samples['prompt'] as is, "
    f"{LAVIS_GENERATE}:259-262)",
)
PROCESSOR_IB = S(
    "processor",
    "LAVIS blip_image_eval: resize to 224×224, bicubic, no crop/pad "
    "(p1k0pan/ICD experiments/lavis/configs/models/blip2/blip2_instruct_vicuna7b.yaml:39-40)",
)

#: the MiniGPT-4-style harness of OPERA and its descendants (SID, HALC, VASparse, ConVis, PAI,
#: VISTA): ``system_message + "USER: <ImageHere> <question> ASSISTANT:"`` for LLaVA-1.5 (template
#: ``halc_llava``: the "curious user" text runs straight into ``USER:``) and
#: ``"<ImageHere><question>"`` for InstructBLIP (the 32 query outputs, then the question as is).
HALC_LLAVA_PROMPT = "USER: <ImageHere> <question> ASSISTANT:"
HALC_IB_PROMPT = "<ImageHere><question>"


def harness_llava(system_src: str, template_src: str, image_src: str) -> dict:
    """The ``llava`` family layer of a MiniGPT-4-style harness (each value with its source)."""
    return {
        "system": S(VICUNA_V1_SYSTEM, system_src),
        "chat_template": S("halc_llava", template_src),
        "image_preprocess": S("processor", image_src),
    }


def harness_instructblip(template_src: str, image_src: str) -> dict:
    """The ``instructblip`` family layer of a MiniGPT-4-style harness."""
    return {
        "system": S(None, f"no system text ({template_src})"),
        "chat_template": S("instructblip_raw", template_src),
        "image_preprocess": S("processor", image_src),
    }


def lavis_penalty(repo: str, blip2_lines: str, tu_init: str, why: str = "") -> S:
    """LAVIS's InstructBLIP ``generate`` default ``repetition_penalty=1.5`` in a MiniGPT-4-style
    harness (``repo``'s ``minigpt4/models/blip2_vicuna_instruct.py`` at ``blip2_lines``: the
    default and the LLM ``generate(inputs_embeds=…, repetition_penalty=…)`` call; no script
    overrides it), over one BOS and the generated ids (``tu_init``: where its transformers starts
    ``input_ids`` as one BOS when given ``inputs_embeds`` only)."""
    return S(
        {"repetition_penalty": 1.5, "repetition_context": "generated"},
        f"{repo} minigpt4/models/blip2_vicuna_instruct.py:{blip2_lines} (LAVIS generate: repetition_penalty=1.5 "
        f"default passed to llm_model.generate(inputs_embeds=...); no run script sets it); penalised ids = one "
        f"BOS + the generated ids: {tu_init} (input_ids start as one BOS)" + (f"; {why}" if why else ""),
    )
