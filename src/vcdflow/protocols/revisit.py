"""``revisit``: ReVisiT's protocol (Cho & Kim, arXiv 2506.09522; bscho333/ReVisiT at b382967).

Families: LLaVA-1.5 (``LLaVA1.5/eval/chair_eval_llava.py``) and Qwen2.5-VL-7B
(``Qwen2.5-VL/eval/chair_eval_qwenvl.py``). Not run: InstructBLIP. Benchmarks: **CHAIR only** (the
released scripts; the paper's POPE setting is UNVERIFIED): POPE, MME and AMBER come from
``unified``.

* LLaVA: its own ``Conversation`` = conv ``llava_v1`` ("curious human"), ``"<image>\\n" + q``;
  ``image_processor.preprocess``. Qwen2.5-VL: the processor's chat template (image, then text).
* CHAIR: "Please describe this image in detail.", ``max_new_tokens=512`` (the shell scripts; the
  argparse default is 64), 500 images (argparse; the scripts' ``num_eval_samples=10`` is a debug
  value), shuffled; seed 42.
* Greedy (``do_sample=False``), T = 1, top-p 1, ``top_k`` None, repetition penalty 1.
* ReVisiT: LLaVA ``early_exit_layers="last"``, Qwen ``"all"``; relative top α = 1e-5.
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, LLAVA_V1_SYSTEM
from .base import Protocol, S

R = "bscho333/ReVisiT"
LL = f"{R} LLaVA1.5/eval/chair_eval_llava.py"
QW = f"{R} Qwen2.5-VL/eval/chair_eval_qwenvl.py"
SHL = f"{R} LLaVA1.5/eval_chair_llava.sh"
SHQ = f"{R} Qwen2.5-VL/eval_chair_qwenvl.sh"

PROTOCOL = Protocol(
    name="revisit",
    title="ReVisiT (Cho & Kim, arXiv 2506.09522)",
    families_run=("llava", "qwen2_5_vl"),
    benchmarks_run=("chair",),
    common={
        "parser": S("official", "ReVisiT ships CHAIR only: POPE's official rule (unified's)"),
        "temperature": S(1.0, f"{LL}:58; {QW}:54"),
        "top_p": S(1.0, f"{LL}:59; {QW}:55"),
        "top_k": S(None, f"{LL}:60; {QW}:56 (top_k None)"),
        "image_preprocess": S(
            "processor", f"{R} LLaVA1.5/eval/chair_loader.py:50 (trans.preprocess: no pad)"
        ),
        "seeds": S((42,), f"{SHL}:3; {SHQ}:3 (seed=42)"),
        "params": {},
    },
    benchmark={
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{LL}:114; {QW}:113"),
            "max_new_tokens": S(
                512,
                f"{SHL}:19; {SHQ}:19 (argparse default 64: {LL}:71); "
                f"500 images: {LL}:70 (the scripts' 10 at {SHL}:20 is a debug value)",
            ),
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{LL}:131-141 (its own Conversation = llava_v1)"),
            "chat_template": S("llava_v1", f"{LL}:142-145 (DEFAULT_IMAGE_TOKEN + '\\n' + qs)"),
            "params": {
                "revisit": S(
                    {"layers": "last", "relative_top": 1e-5},
                    f"{LL}:76-77 (--early_exit_layers last, --relative_top 1e-5)",
                )
            },
        },
        "qwen2_5_vl": {
            "system": S(None, f"{QW}:115-125 (user turn only: the template's default system turn)"),
            "chat_template": S("model", f"{QW}:124-125 (processor.apply_chat_template)"),
            "params": {
                "revisit": S(
                    {"layers": "all", "relative_top": 1e-5},
                    f"{QW}:73-74 (--early_exit_layers all, --relative_top 1e-5)",
                )
            },
        },
    },
    modes={"revisit": S("greedy", f"{SHL}:16; {SHQ}:16 (do_sample=False)")},
    default_mode=S("greedy", f"{SHL}:16 (do_sample=False)"),
)
