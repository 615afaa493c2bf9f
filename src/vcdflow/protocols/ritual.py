"""``ritual``: RITUAL's protocol (Woo et al., arXiv 2405.17821; sangminwoo/RITUAL at 52065a6).

Families: LLaVA-1.5 (``eval_bench/pope_eval_llava.py``, ``chair_eval_llava.py``) and InstructBLIP
(``pope_eval_instructblip.py``, ``chair_eval_instructblip.py``). Not run: Qwen2.5-VL.
Benchmarks: POPE, CHAIR, MME (no AMBER: from ``unified``).

* LLaVA: its own ``Conversation`` identical to conv ``llava_v1``; POPE user turn ``"<image>\\n{q}"``
  with **no suffix** ("for opera? setting"; the VCD suffix is commented out); sampling T = 1,
  top-p = 1, ``top_k=None`` passed (no top-k), ``max_new_tokens=1024``; CHAIR: "Please describe
  this image in detail.", 64 tokens, 500 shuffled COCO val2014 images. Image through
  ``image_processor.preprocess`` (no pad).
* InstructBLIP: raw question; LAVIS ``generate`` with top-p 1 and no ``top_k`` (→ 50),
  ``max_length`` 256 for POPE and 64 for CHAIR.
* Parser: the OPERA-style ``recorder`` (parser ``"opera"``). Seed 42.
* RITUAL: α_pos = 3, β = 0.1.
"""

from __future__ import annotations

from ._shared import (
    CHAIR_PROMPT,
    IMPLICIT_TOP_K,
    INSTRUCTBLIP_RAW,
    LLAVA_V1_SYSTEM,
    NO_SYSTEM_IB,
    PROCESSOR_IB,
)
from .base import Protocol, S

R = "sangminwoo/RITUAL"
PL = f"{R} eval_bench/pope_eval_llava.py"
PI = f"{R} eval_bench/pope_eval_instructblip.py"
CL = f"{R} eval_bench/chair_eval_llava.py"
CI = f"{R} eval_bench/chair_eval_instructblip.py"
CSH = f"{R} eval_bench/scripts/chair_eval.sh"
BLIP = f"{R} experiments/lavis/models/blip2_models/blip2_vicuna_instruct.py"


def woo_protocol(name: str, title: str, params: dict, doc_extra: str = "") -> Protocol:
    """RITUAL's scripts (also M3ID's reimplementation there) with ``params`` per method."""
    return Protocol(
        name=name,
        title=title,
        families_run=("llava", "instructblip"),
        benchmarks_run=("pope", "chair", "mme"),
        common={
            "parser": S("opera", f"{PL}:117-130 (recorder: OPERA's rule)"),
            "temperature": S(1.0, f"{PL}:59"),
            "top_p": S(1.0, f"{PL}:60"),
            "top_k": S(None, f"{PL}:61,269 (top_k=None passed: no top-k warper)"),
            "max_new_tokens": S(1024, f"{PL}:82"),
            "image_preprocess": S(
                "processor", f"{R} eval_bench/pope_loader.py:44 (trans.preprocess: no pad)"
            ),
            "seeds": S((42,), f"{R} eval_bench/scripts/pope_eval.sh:3"),
            "params": params,
        },
        benchmark={
            "pope": {"prompt": S("{question}", f"{PL}:247-248 (no suffix; the VCD suffix is commented out)")},
            "chair": {
                "prompt": S(CHAIR_PROMPT, f"{CL}:177"),
                "max_new_tokens": S(64, f"{CSH}:30"),
                "seeds": S(
                    (42,), f"{CSH}:3 (500 images: {CSH}:29, shuffled: {R} eval_bench/chair_loader.py:36)"
                ),
            },
            "mme": {
                "prompt": S("{question}", f"{R} experiments/eval/mme_llava.py:70-79 (no suffix)"),
                "seeds": S((1,), f"{R} experiments/cd_scripts/mme_eval.sh:1"),
            },
        },
        family={
            "llava": {
                "system": S(LLAVA_V1_SYSTEM, f"{PL}:235-245 (its own Conversation = llava_v1)"),
                "chat_template": S("llava_v1", f"{PL}:235-251 (SeparatorStyle.TWO, '<image>\\n' + qs)"),
            },
            "instructblip": {
                "system": NO_SYSTEM_IB,
                "chat_template": INSTRUCTBLIP_RAW,
                "image_preprocess": PROCESSOR_IB,
                "top_k": S(50, f"{PI}:234-248 / {BLIP}:440-452 pass no top_k: {IMPLICIT_TOP_K}"),
                "top_p": S(1.0, f"{PI}:63,238"),
                "max_new_tokens": S(256, f"{BLIP}:246 (max_length=256)"),
            },
        },
        family_benchmark={
            ("instructblip", "pope"): {"prompt": S("{question}", f"{PI}:205,209 (prompt = qs)")},
            ("instructblip", "chair"): {
                "prompt": S(CHAIR_PROMPT, f"{CI}:181"),
                "max_new_tokens": S(64, f"{CI}:213 (max_length=args.max_new_tokens); {CSH}:30"),
            },
        },
        notes=doc_extra,
    )


PROTOCOL = woo_protocol(
    "ritual",
    "RITUAL (Woo et al., arXiv 2405.17821)",
    {"ritual": S({"alpha": 3.0, "beta": 0.1}, f"{PL}:78,80; {R} eval_bench/scripts/pope_eval.sh:23-25")},
)
