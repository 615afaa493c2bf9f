"""``vcd``: VCD's protocol (Leng et al., CVPR 2024; DAMO-NLP-SG/VCD at d6568ff).

Families: LLaVA-1.5 (``experiments/eval/object_hallucination_vqa_llava.py``) and InstructBLIP
(``object_hallucination_vqa_instructblip.py``). Not run: Qwen2.5-VL (VCD ran Qwen-VL, another
model). Benchmarks: POPE and MME (no CHAIR, no AMBER: their prompts come from ``unified``).

* LLaVA: conv ``llava_v1`` (script default ``--conv-mode llava_v1``), user turn
  ``"<image>\\n{q} Please answer this question with one word."``; the image goes through
  ``image_processor.preprocess`` directly (resize + centre crop, **no** pad-to-square); sampling
  with T = 1, top-p = 1, ``top_k=None`` passed explicitly (so no top-k), ``max_new_tokens=1024``.
  POPE runs ``cd_scripts/llava1.5_pope.bash``: seed 55, **β = 0.2**, noise 500, α = 1 (the paper
  text says β = 0.1 and T = 999 for POPE; the released script is what we reproduce).
* InstructBLIP: raw prompt ``"{q} Please answer this question with one word."`` (it also feeds
  the Q-Former); the script never passes ``cd_alpha``, so the sampler's **α = 0.5** applies, and
  LAVIS's ``generate`` passes no ``top_k``, so transformers' **top-k = 50** applies; LAVIS
  ``max_length=256`` (new tokens: the LLM is called with ``inputs_embeds`` only).
* Parser: VCD's own ``eval_pope.py`` (substring ``yes``/``no``; parser ``"vcd"``).
* Greedy: the sampler patches only ``sample``; with ``mode: greedy`` the official script has no
  contrast at all — here greedy means argmax of the contrasted scores (VCD's appendix greedy).
"""

from __future__ import annotations

from ._shared import (
    IMPLICIT_TOP_K,
    INSTRUCTBLIP_RAW,
    LAVIS_GENERATE,
    LLAVA_V1_SYSTEM,
    NO_SYSTEM_IB,
    PROCESSOR_IB,
)
from .base import Protocol, S

R = "DAMO-NLP-SG/VCD"
LL = f"{R} experiments/eval/object_hallucination_vqa_llava.py"
IB = f"{R} experiments/eval/object_hallucination_vqa_instructblip.py"
BASH = f"{R} experiments/cd_scripts/llava1.5_pope.bash"
SUFFIX = " Please answer this question with one word."

PROTOCOL = Protocol(
    name="vcd",
    title="VCD (Leng et al., CVPR 2024, arXiv 2311.16922)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "mme"),
    common={
        "parser": S("vcd", f"{R} experiments/eval/eval_pope.py:32-45 (lower-case, substring yes/no)"),
        "temperature": S(1.0, f"{LL}:111 (--temperature 1.0)"),
        "top_p": S(1.0, f"{LL}:112 (--top_p 1)"),
        "top_k": S(None, f"{LL}:113,78 (top_k=None passed explicitly: no top-k warper)"),
        "max_new_tokens": S(1024, f"{LL}:79"),
        "image_preprocess": S(
            "processor", f"{LL}:57 (image_processor.preprocess: resize + centre crop, no pad)"
        ),
        "seeds": S((42,), f"{LL}:119 (--seed 42)"),
        "params": {
            "vcd": S({"alpha": 1.0, "beta": 0.1, "noise_step": 500}, f"{LL}:115-118"),
            "vcd_legacy": S({"alpha": 1.0, "beta": 0.1, "noise_step": 500}, f"{LL}:115-118"),
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question}" + SUFFIX, f"{LL}:50"),
            "seeds": S((55,), f"{BASH}:1 (seed 55)"),
            "params": {
                "vcd": S({"alpha": 1.0, "beta": 0.2, "noise_step": 500}, f"{BASH}:5-7"),
                "vcd_legacy": S({"alpha": 1.0, "beta": 0.2, "noise_step": 500}, f"{BASH}:5-7"),
            },
        },
        "mme": {
            "prompt": S(
                "{question}",
                "UNVERIFIED: VCD releases no MME script; MME questions end in 'Please answer yes or no.'",
            )
        },
    },
    family={
        "llava": {
            "system": S(
                LLAVA_V1_SYSTEM, f"{LL}:108,49 (conv llava_v1; {R} experiments/llava/conversation.py:335-345)"
            ),
            "chat_template": S(
                "llava_v1", f"{LL}:47-52 (DEFAULT_IMAGE_TOKEN + '\\n' + qs, conv.get_prompt())"
            ),
        },
        "instructblip": {
            "system": NO_SYSTEM_IB,
            "chat_template": INSTRUCTBLIP_RAW,
            "image_preprocess": PROCESSOR_IB,
            "top_k": S(50, f"{LAVIS_GENERATE}:385-401: {IMPLICIT_TOP_K}"),
            "max_new_tokens": S(256, f"{LAVIS_GENERATE}:246 (max_length=256; inputs_embeds only)"),
            "top_p": S(1.0, f"{IB}:63,89"),
            "temperature": S(1.0, f"{LAVIS_GENERATE}:252 (temperature=1)"),
            "params": {
                "vcd": S(
                    {"alpha": 0.5, "beta": 0.1, "noise_step": 500},
                    f"{IB}:61-64 pass no cd_alpha → {R} vcd_utils/vcd_sample.py:142 "
                    f"default 0.5; cd_beta {IB}:95; noise {IB}:92",
                ),
                "vcd_legacy": S(
                    {"alpha": 0.5, "beta": 0.1, "noise_step": 500},
                    f"{R} vcd_utils/vcd_sample.py:142; {IB}:92,95",
                ),
            },
        },
    },
    family_benchmark={
        ("instructblip", "pope"): {
            "prompt": S("{question}" + SUFFIX, f"{IB}:49"),
            "seeds": S((42,), f"{IB}:96 (no InstructBLIP bash script; --seed 42)"),
            "params": {
                "vcd": S(
                    {"alpha": 0.5, "beta": 0.1, "noise_step": 500},
                    f"{R} vcd_utils/vcd_sample.py:142; {IB}:92,95",
                )
            },
        },
    },
)
