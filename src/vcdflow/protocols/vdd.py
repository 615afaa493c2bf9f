"""``vdd``: visual debias decoding's protocol (Zhang et al., arXiv 2403.05262; yfzhang114/LLaVA-Align
at dfbecfa).

Families: LLaVA-1.5 (``experiments/eval/calibrate/llava_calibrate.py``, the script with
``--use_dd``/``--use_dd_unk``). Not checked here: InstructBLIP (``blip_calibrate.py``) and Qwen-VL
(not Qwen2.5-VL); they fall back to ``unified``'s family settings. Benchmarks: POPE and MME.

* Conv ``llava_v1``; VCD's POPE suffix ``" Please answer this question with one word."``;
  ``image_processor.preprocess`` (no pad); ``max_new_tokens=64``; ``top_p``/``top_k`` None
  (no warpers); T = 1.0 per the paper's settings quoted in LLaVA-Align issue #9
  (``--temperature 1.0 --use_dd --use_dd_unk --cd_alpha 1.0``; the argparse default is 0.2); α = 1, β = 0.1, both debias flags; seed 42. Parser: the repo's ``eval_pope.py`` = VCD's
  substring rule.
"""

from __future__ import annotations

from ._shared import LLAVA_V1_SYSTEM
from .base import Protocol, S

R = "yfzhang114/LLaVA-Align"
CAL = f"{R} experiments/eval/calibrate/llava_calibrate.py"

PROTOCOL = Protocol(
    name="vdd",
    title="Debiasing LVLMs / VDD (Zhang et al., arXiv 2403.05262)",
    families_run=("llava",),
    benchmarks_run=("pope", "mme"),
    common={
        "parser": S("vcd", f"{R} experiments/eval/eval_pope.py:32-45 (substring yes/no, as VCD)"),
        "temperature": S(
            1.0,
            f"{R} issue #9 (the paper's settings: llava_calibrate --noise_step 999 "
            f"--temperature 1.0 --use_dd --use_dd_unk --cd_alpha 1.0; {CAL}:233 default 0.2)",
        ),
        "top_p": S(1.0, f"{CAL}:234 (top_p=None: no top-p warper)"),
        "top_k": S(None, f"{CAL}:235 (top_k=None)"),
        "max_new_tokens": S(64, f"{CAL}:173"),
        "image_preprocess": S("processor", f"{CAL}:149 (image_processor.preprocess: no pad)"),
        "seeds": S((42,), f"{CAL}:245"),
        "params": {
            "vdd": S(
                {"alpha": 1.0, "beta": 0.1, "variant": "both"},
                f"{CAL}:241-244 (use_dd, use_dd_unk, cd_alpha 1, cd_beta 0.1); issue #9 uses both flags",
            )
        },
    },
    benchmark={
        "pope": {"prompt": S("{question} Please answer this question with one word.", f"{CAL}:142")},
        "mme": {"prompt": S("{question}", f"UNVERIFIED: {R} experiments/eval/MME/run_llava.py not read")},
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{CAL}:230,141 (conv llava_v1)"),
            "chat_template": S("llava_v1", f"{CAL}:136-144"),
        },
    },
)
