"""``convis``: ConVis's protocol (Park et al., AAAI 2025, arXiv 2408.13906; yejipark-m/ConVis at 9d0923f,
built on HALC).

Families: LLaVA-1.5 (``minigpt4/models/llava.py`` with ``eval_configs/llava-1.5_eval.yaml``). Not
run: InstructBLIP, Qwen2.5-VL (the others are MiniGPT-4, mPLUG-Owl2). Benchmarks: POPE, CHAIR, MME.

* HALC's LLaVA prompt: the **"curious user"** system text runs straight into ``USER:`` (no
  separator), then ``"USER: <ImageHere> {q} ASSISTANT:"`` (template ``halc_llava``). POPE appends
  ``" Please answer yes or no."``, 16 new tokens, α = 0.1; CHAIR (``caption_generation.py``):
  "Please describe this image in detail.", 64 tokens, 500 images, α = 1; MME 128 tokens, α = 0.1.
* Greedy (one beam); APC only with ``--cutoff_lambda``, default None → no plausibility cutoff.
  Seeds 42 (image and model). Parser: the OPERA-style ``recorder``.
* Image: the CLIP processor (resize + centre crop), ``clip_image_eval``.
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, VICUNA_V1_SYSTEM
from .base import Protocol, S

R = "yejipark-m/ConVis"
PE = f"{R} run_scripts/pope_eval.py"
CG = f"{R} run_scripts/caption_generation.py"
ME = f"{R} run_scripts/mme_eval.py"
YAML = f"{R} eval_configs/llava-1.5_eval.yaml"

PROTOCOL = Protocol(
    name="convis",
    title="ConVis (Park et al., AAAI 2025, arXiv 2408.13906)",
    families_run=("llava",),
    benchmarks_run=("pope", "chair", "mme"),
    common={
        "parser": S("opera", f"{PE}:181-194 (recorder: OPERA's rule)"),
        "temperature": S(1.0, f"{CG}:98 (unused: greedy)"),
        "top_p": S(1.0, f"{PE}:83"),
        "top_k": S(None, "greedy: no warpers"),
        "image_preprocess": S(
            "processor",
            f"{YAML}:19-22 + {R} minigpt4/processors/clip_processors.py:43-52 "
            "(CLIPImageProcessor.preprocess)",
        ),
        "seeds": S((42,), f"{PE}:53-54 (image_seed, model_seed 42)"),
        "params": {
            "convis": S(
                {"alpha": 0.1, "beta": None}, f"{PE}:99 (convis_alpha 0.1), :103 (cutoff_lambda None)"
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question} Please answer yes or no.", f"{PE}:312"),
            "max_new_tokens": S(16, f"{PE}:85"),
        },
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{CG}:352,359"),
            "max_new_tokens": S(64, f"{CG}:101"),
            "params": {"convis": S({"alpha": 1.0, "beta": None}, f"{CG}:119 (convis_alpha 1.0), :123")},
        },
        "mme": {
            "prompt": S("{question}", f"{ME}:305-306"),
            "max_new_tokens": S(128, f"{ME}:95"),
            "params": {"convis": S({"alpha": 0.1, "beta": None}, f"{ME}:134")},
        },
    },
    family={
        "llava": {
            "system": S(VICUNA_V1_SYSTEM, f"{YAML}:13 (system_message, 'curious user')"),
            "chat_template": S(
                "halc_llava",
                f"{R} minigpt4/models/llava.py:192-198 (system_message + p, "
                f"split at <ImageHere>); {PE}:37 ('USER: <ImageHere> <question> "
                "ASSISTANT:')",
            ),
        },
    },
    modes={"convis": S("greedy", f"{PE}:81 (beam 1), :258-264 (greedy unless beam/sampling asked)")},
    default_mode=S("greedy", f"{PE}:258-264 (HALC's greedy decoder)"),
)
