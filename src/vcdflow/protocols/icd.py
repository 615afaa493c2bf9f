"""``icd``: ICD's protocol (Wang et al., Findings ACL 2024, arXiv 2403.18715; p1k0pan/ICD at 2fa44c5).

Families: InstructBLIP (the paper's model; ``experiments/gen_scripts/icd_ib_pope.py``,
``icd_coco_chair.py``) and LLaVA-1.5 (the repo's ``icd_llava_pope.py``; the paper's tables have
MiniGPT-4 and InstructBLIP, no LLaVA). Not run: Qwen2.5-VL. Benchmarks: POPE, CHAIR, MME.

* InstructBLIP: only the **Q-Former instruction** of the contrast branch changes; the LLM text is
  the raw question in both branches. The ``normal.json`` run gives the Q-Former the disturbance
  alone, passed through LAVIS's ``blip_caption`` text processor (lower-cased, ``.`` → space), so
  the contrast Q-Former reads ``"you are a confused objects detector to provide a fuzzy overview
  or impression of the image"`` → ``params: {position: qformer, qformer_text: blip_caption}``.
  (``question.json`` — disturbance + question — is ``position: qformer_question``.) Sampling via
  LAVIS ``generate``: top-p 1, no ``top_k`` passed → transformers' top-k = 50; ``max_length=256``.
  POPE ``--format`` defaults to ``no_format`` (no suffix). CHAIR's question file asks
  ``"Please name all the objects in this image."``.
* LLaVA: conv ``llava_v1`` for the original branch; the contrast branch is conv ``llava_custom``
  with its system text *replaced* by the disturbance (``position: system``); sampling T = 1,
  top-p = 1 and no ``top_k`` (→ 50), ``max_new_tokens=1024``; image_processor.preprocess.
* Parser: the repo's ``eval_scripts/eval_pope.py`` is POPE's official rule, except that an answer
  with neither a yes nor a no word counts as -1 (never correct) where the official rule says yes.
"""

from __future__ import annotations

from ..textproc import DISTURBANCE
from ._shared import (
    IMPLICIT_TOP_K,
    INSTRUCTBLIP_RAW,
    LLAVA_V1_SYSTEM,
    NO_SYSTEM_IB,
    PROCESSOR_IB,
    blip_pre_caption,
)
from .base import Protocol, S

R = "p1k0pan/ICD"
IBP = f"{R} experiments/gen_scripts/icd_ib_pope.py"
IBC = f"{R} experiments/gen_scripts/icd_coco_chair.py"
LLP = f"{R} experiments/gen_scripts/icd_llava_pope.py"
BLIP = f"{R} experiments/lavis/models/blip2_models/blip2_vicuna_instruct.py"

#: the disturbance as the InstructBLIP Q-Former reads it (``txt_processors["eval"](preprompt)``)
QFORMER_DISTURBANCE = blip_pre_caption(DISTURBANCE)

PROTOCOL = Protocol(
    name="icd",
    title="ICD (Wang et al., Findings ACL 2024, arXiv 2403.18715)",
    families_run=("instructblip", "llava"),
    benchmarks_run=("pope", "chair", "mme"),
    not_run=(("llava", "chair"), ("llava", "mme")),  # the repo's LLaVA script is POPE only
    common={
        "parser": S(
            "official",
            f"{R} experiments/eval_scripts/eval_pope.py:16-42 (POPE's official rule; "
            "differs only for an answer with neither yes nor no words: -1 there, yes here)",
        ),
        "temperature": S(1.0, f"{LLP}:94 (temperature=1)"),
        "top_p": S(1.0, f"{LLP}:95; {IBP}:50,55 (top_p = 1)"),
        "top_k": S(50, f"{LLP}:87-98 and {BLIP}:440-468 pass no top_k: {IMPLICIT_TOP_K}"),
        "image_preprocess": S("processor", f"{LLP}:84 (image_processor.preprocess)"),
        "seeds": S((42,), f"{IBP}:24; {LLP}:29 (--seed 42)"),
        "max_new_tokens": S(1024, f"{LLP}:96"),
        "params": {
            "icd": S(
                {"alpha": 1.0, "beta": 0.1, "position": "system", "instruction": DISTURBANCE},
                f"{LLP}:27-28 (cd_alpha 1, cd_beta 0.1), :58-63 (llava_custom.system = preprompt), "
                f":121 (the disturbance)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question}", f"{LLP}:34,53 (--format no_format → no suffix); {IBP}:29,43,114-119")
        },
        "chair": {
            "prompt": S(
                "Please name all the objects in this image.",
                f"{IBC}:25,41 ({R} experiments/data/chair/chair-val.json:5 'text')",
            )
        },
        "mme": {
            "prompt": S(
                "{question}",
                f"{R} experiments/gen_scripts/icd_ib_mme.py:55-56 — NOT exact: the script "
                "keeps the MME question up to its first '?' (dropping 'Please answer yes "
                "or no.') before its --format suffix",
            )
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{LLP}:35,52-55 (conv llava_v1)"),
            "chat_template": S(
                "llava_v1",
                f"{LLP}:44-55; contrast {R} experiments/llava/conversation.py:347-357 "
                "(llava_custom: same format, system replaced)",
            ),
        },
        "instructblip": {
            "system": NO_SYSTEM_IB,
            "chat_template": INSTRUCTBLIP_RAW,
            "image_preprocess": PROCESSOR_IB,
            "max_new_tokens": S(256, f"{BLIP}:247 (max_length=256)"),
            "temperature": S(1.0, f"{BLIP}:253 (generate temperature=1; the scripts pass none)"),
            "params": {
                "icd": S(
                    {
                        "alpha": 1.0,
                        "beta": 0.1,
                        "position": "qformer",
                        "instruction": DISTURBANCE,
                        "qformer_text": "blip_caption",
                    },
                    f"{IBP}:22-23 (α 1, β 0.1), :47,53 (normal.json: preprompt_cd = "
                    f"txt_processors['eval'](preprompt)), {BLIP}:290-300,442-444 (only "
                    f"the Q-Former text differs)",
                )
            },
        },
    },
    family_benchmark={
        ("instructblip", "chair"): {"max_new_tokens": S(256, f"{IBC}:51-53 (LAVIS default max_length=256)")},
    },
)
