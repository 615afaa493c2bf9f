"""``debias``: the post-hoc debias (calibration) protocol of "Debiasing Multimodal Large Language
Models" (Zhang et al., arXiv 2403.05262; yfzhang114/LLaVA-Align at dfbecfa) — the calibration
scripts, which differ from the VDD protocol (:mod:`vcdflow.protocols.vdd`) in temperature and β.

Families: LLaVA-1.5 (``experiments/eval/calibrate/llava_calibrate.py``, default model
``liuhaotian/llava-v1.5-7b`` in ``experiments/scripts/pope/run_llava.sh``). Benchmarks: POPE (the
MME runs go through ``eval/MME/run_llava.py`` with conv ``vicuna_v1``, not read in full: MME,
CHAIR and AMBER come from ``unified``).

* Conv ``llava_v1`` (the script's default ``--conv-mode``; ``run_llava.sh`` passes none); user
  turn ``"<image>\\n{q} Please answer this question with one word."``;
  ``image_processor.preprocess`` (no pad).
* **Sampling at T = 0.2** (``run_llava.sh`` ``temp=0.2``), ``top_p``/``top_k`` None passed
  explicitly (no warpers), ``max_new_tokens=64``, seed 55.
* ``--use_dd --use_dd_unk --cd_alpha 1 --cd_beta 0.2``: the decode itself is VDD-contrasted
  (``debias`` ``contrast=True``, α = 1, β = 0.2); the first-step top-10 of every branch is
  logged for the scorer-side calibration (``pope_calibrated``).
* Parser (the uncalibrated text): ``experiments/eval/eval_pope.py`` — VCD's substring rule.
"""

from __future__ import annotations

from ._shared import LLAVA_V1_SYSTEM
from .base import Protocol, S

R = "yfzhang114/LLaVA-Align"
CAL = f"{R} experiments/eval/calibrate/llava_calibrate.py"
SH = f"{R} experiments/scripts/pope/run_llava.sh"

PROTOCOL = Protocol(
    name="debias",
    title="Post-hoc debias / calibration (Zhang et al., arXiv 2403.05262)",
    families_run=("llava",),
    benchmarks_run=("pope",),
    common={
        "parser": S(
            "vcd",
            f"{R} experiments/eval/eval_pope.py:32-45 (substring yes/no, as VCD); the calibrated "
            f"score: {R} experiments/eval/eval_pope_calibrate.py:120-164 (scorer pope_calibrated)",
        ),
        "temperature": S(0.2, f"{SH}:12,28 (temp=0.2 → --temperature)"),
        "top_p": S(1.0, f"{CAL}:234,171 (top_p=None passed: no top-p warper)"),
        "top_k": S(None, f"{CAL}:235,172 (top_k=None passed: no top-k warper)"),
        "max_new_tokens": S(64, f"{CAL}:173"),
        "image_preprocess": S("processor", f"{CAL}:149 (image_processor.preprocess: no pad)"),
        "seeds": S((55,), f"{SH}:1,29 (seed=55)"),
        "params": {
            "debias": S(
                {"alpha": 1.0, "beta": 0.2, "contrast": True, "top_k": 10},
                f"{SH}:8-9,29 (cd_alpha 1, cd_beta 0.2, --use_dd --use_dd_unk); "
                f"{R} experiments/utils/metrics.py:102 (top_k=10)",
            )
        },
    },
    benchmark={
        "pope": {"prompt": S("{question} Please answer this question with one word.", f"{CAL}:142")},
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{CAL}:230 (--conv-mode default llava_v1; {SH}:23-29 passes none)"),
            "chat_template": S("llava_v1", f"{CAL}:136-144"),
        },
    },
    modes={"debias": S("sample", f"{CAL}:169 (do_sample=True)")},
    default_mode=S("sample", f"{CAL}:169 (do_sample=True)"),
)
